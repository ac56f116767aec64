"""Optional bearer-token authentication for the API (Falcon middleware).

Off unless tokens are configured: TASKQ_API_TOKENS (comma-separated) and/or
TASKQ_API_TOKENS_FILE (one token per line, e.g. a mounted Kubernetes Secret; re-read when
the file changes, so a rotated Secret takes effect without a restart). The probes (/live,
/ready) stay open so the kubelet needs no credentials, and so do the documents without
data (/openapi.json, the /dashboard page).

A presented token is compared with every configured token, always all of them, through
`hmac.compare_digest` over SHA-256 digests: the time taken says nothing about how much of
a token matched, nor which token, nor a token's length. Tokens never appear in logs or
error messages.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import falcon

from taskq.api.errors import ApiError
from taskq.settings import Settings, read_tokens_file

log = logging.getLogger(__name__)

# Open without a token: the probes (the kubelet has no credentials), and two documents
# that hold no data: the OpenAPI description and the dashboard page (a browser cannot add
# an Authorization header to a page load; the page asks for a token and sends it with
# each of its own requests, which are checked like any other).
OPEN_PATHS = frozenset({"/live", "/ready", "/openapi.json", "/dashboard"})
CHALLENGE = 'Bearer realm="taskq"'
# How often, at most, the tokens file is checked for changes (one stat() call).
RELOAD_CHECK_SECONDS = 1.0


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class TokenSet:
    """The accepted tokens, kept only as SHA-256 digests."""

    def __init__(self, tokens: Iterable[str] = (), *, digests: Iterable[bytes] = ()) -> None:
        self._digests = [*digests, *(_digest(t) for t in tokens)]

    def __len__(self) -> int:
        return len(self._digests)

    def accepts(self, presented: str) -> bool:
        candidate = _digest(presented)
        matched = False
        for digest in self._digests:  # no early exit: every token is compared every time
            matched |= hmac.compare_digest(candidate, digest)
        return matched


class BearerAuth:
    """Falcon middleware: requests other than the probes need `Authorization: Bearer <token>`."""

    def __init__(self, tokens: Iterable[str], tokens_file: Path | None = None) -> None:
        # Digests only, also of the tokens from the settings (merged with the file's on
        # every reload): no token is kept in plaintext after start-up.
        self._static_digests = [_digest(t) for t in tokens if t]
        self._file = tokens_file
        self._file_stamp: tuple[float, int] | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()
        self._tokens = TokenSet(digests=self._static_digests)
        if tokens_file is not None:
            self._reload(force=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> BearerAuth | None:
        """The middleware when any token is configured, else None (authentication off)."""
        tokens = [secret.get_secret_value() for secret in settings.api_tokens]
        if not tokens and settings.api_tokens_file is None:
            return None
        return cls(tokens, settings.api_tokens_file)

    def _reload(self, *, force: bool = False) -> None:
        assert self._file is not None
        try:
            stat = os.stat(self._file)
            stamp = (stat.st_mtime, stat.st_size)
            if not force and stamp == self._file_stamp:
                return
            from_file = read_tokens_file(self._file)
        except (OSError, UnicodeDecodeError) as exc:
            if force:
                raise
            # Keep the tokens we have: a Secret being swapped must not open the API.
            log.warning(
                "cannot re-read TASKQ_API_TOKENS_FILE (%s); keeping the previous tokens",
                type(exc).__name__,
            )
            return
        if not from_file and not self._static_digests:
            log.warning("TASKQ_API_TOKENS_FILE holds no token; keeping the previous tokens")
            return
        self._tokens = TokenSet(from_file, digests=self._static_digests)
        if self._file_stamp is not None:
            log.info("API tokens reloaded: %d token(s)", len(self._tokens))
        self._file_stamp = stamp

    def _current(self) -> TokenSet:
        if self._file is not None:
            now = time.monotonic()
            if now - self._checked_at >= RELOAD_CHECK_SECONDS:
                with self._lock:
                    if now - self._checked_at >= RELOAD_CHECK_SECONDS:
                        self._checked_at = now
                        self._reload()
        return self._tokens

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.path in OPEN_PATHS:
            return
        header = req.get_header("Authorization") or ""
        scheme, _, presented = header.partition(" ")
        presented = presented.strip()
        if scheme.lower() == "bearer" and presented and self._current().accepts(presented):
            return
        message = (
            "this API needs a bearer token: send Authorization: Bearer <token>"
            if not header
            else "the bearer token is missing, malformed or not accepted"
        )
        raise ApiError(
            falcon.HTTP_401,
            message,
            code="unauthorized",
            headers={"WWW-Authenticate": CHALLENGE},
        )

    async def process_request_async(self, req: falcon.Request, resp: falcon.Response) -> None:
        """falcon.asgi's hook: the same check (a stat() of the tokens file at most once a
        second is all it may wait on)."""
        self.process_request(req, resp)
