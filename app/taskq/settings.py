"""Settings: DATABASE_URL plus TASKQ_-prefixed environment variables.

Every knob lives here, validated at start-up so a typo fails fast with the variable's name
instead of surfacing as odd behaviour at 3 a.m.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATABASE_URL = "postgresql://127.0.0.1:5432/taskq"


def _split_csv(value: object) -> object:
    """Accept `a,b` as well as a list for list-valued settings."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _default_worker_id() -> str:
    # Unique per process: fencing relies on a worker id never being reused by another
    # process, so a restarted pod on the same host gets a fresh suffix.
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TASKQ_", extra="ignore", frozen=True, populate_by_name=True
    )

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        validation_alias=AliasChoices("DATABASE_URL", "TASKQ_DATABASE_URL"),
        description="libpq URL; the password may come from PGPASSWORD instead.",
    )

    # Connection pool (one per process).
    db_pool_min: int = Field(1, ge=0, le=100)
    db_pool_max: int = Field(4, ge=1, le=200)
    db_pool_timeout: float = Field(2.0, gt=0, le=60, description="wait for a connection, s")
    db_connect_timeout: int = Field(3, ge=1, le=60, description="libpq connect_timeout, s")
    db_statement_timeout_ms: int = Field(10_000, ge=0, description="0 disables")
    # Client-side bounds on every wait, for a server that stops answering without closing
    # its sockets (a frozen host, a hung storage): the server's statement_timeout cannot
    # fire then. Keepalives and tcp_user_timeout drop a connection whose peer is gone; the
    # watchdog (taskq/db.py) abandons one whose server is alive but silent.
    db_keepalives_idle: int = Field(10, ge=0, le=3600, description="s; 0 turns keepalives off")
    db_tcp_user_timeout_ms: int = Field(10_000, ge=0, le=3_600_000, description="0 disables")
    db_client_timeout: float = Field(
        0, ge=0, le=3600, description="s; 0: the statement timeout + 5 s (30 s without one)"
    )
    # A connection pooler in front of PostgreSQL. `transaction` (PgBouncer's
    # pool_mode=transaction): no session state (settings are set per transaction), no
    # prepared statements unless TASKQ_DB_PREPARE_THRESHOLD says otherwise, and LISTEN
    # only on TASKQ_LISTEN_DATABASE_URL. `session` and `none` change nothing.
    db_pooler: Literal["none", "session", "transaction"] = "none"
    # psycopg prepares a statement after this many executions on a connection; unset: 5,
    # or never with TASKQ_DB_POOLER=transaction (set it for PgBouncer >= 1.21 with
    # max_prepared_statements).
    db_prepare_threshold: int | None = Field(None, ge=0, le=1000)
    # A direct connection (not through a transaction pooler) for the worker's LISTEN and
    # its liveness lock; unset: DATABASE_URL.
    listen_database_url: str | None = None

    # API.
    api_bind: str = "127.0.0.1:8080"
    # /live and /ready of the API on a port of their own, answered by a thread in every
    # gunicorn worker process (SO_REUSEPORT), so that probes are answered even while every
    # request worker waits on the database. Port 0 turns it off (probes then use the API
    # port, where they queue behind requests).
    api_health_bind: str = "127.0.0.1:8082"
    # API processes. Each holds many requests on its event loop and writes their tasks in
    # shared commits, so one per core is enough (more processes mean smaller groups).
    api_workers: int = Field(2, ge=1, le=64)
    api_max_body_bytes: int = Field(1024 * 1024, ge=1024)
    api_batch_max: int = Field(1000, ge=1, le=10_000)
    api_page_max: int = Field(500, ge=1, le=10_000)
    # Each API process wakes the workers at most this often (app/taskq/notifier.py); the first
    # task after a quiet spell is announced at once.
    api_notify_interval: float = Field(0.005, ge=0, le=1, description="s")
    # Bearer tokens (authentication is off when neither is set). SecretStr keeps them out
    # of reprs, tracebacks and validation messages.
    api_tokens: Annotated[list[SecretStr], NoDecode] = []
    api_tokens_file: Path | None = None

    # Worker.
    worker_queues: Annotated[list[str], NoDecode] = ["default"]
    # Handler threads. They hold no database connection (a worker keeps four to six of its
    # own however many threads it runs), so the default suits I/O-bound handlers; for
    # CPU-bound Python handlers, threads beyond the core count only queue for the GIL. It
    # is also the most tasks one claim takes, and larger claims cost less per task:
    # 64 drains about 1.5x faster than 32, and 2.2x faster than 16 (docs/benchmarks.md).
    worker_concurrency: int = Field(64, ge=1, le=1024)
    # How handlers run: `thread` (cooperative stop via ctx.cancelled) or `process` (a pool
    # of long-lived child processes, stopped with SIGTERM then SIGKILL). README: Pools.
    worker_pool: Literal["thread", "process"] = "thread"
    # Children of the process pool (its slots); 0: one per CPU. The thread pool ignores it.
    worker_processes: int = Field(0, ge=0, le=256)
    # Process pool: tasks claimed beyond its children, waiting for a free one. Larger
    # claims cost less per task; a waiting task's timeout starts when a child takes it.
    worker_prefetch: int = Field(0, ge=0, le=1024)
    # Seconds between SIGTERM and SIGKILL for a stopped child; in the thread pool, how long
    # a handler may ignore its stop before it is reported.
    worker_kill_grace: float = Field(5.0, gt=0, le=3600)
    worker_health_bind: str = "127.0.0.1:8081"
    worker_id: str = Field(default_factory=_default_worker_id)
    # Claims, heartbeats and outcomes commit without waiting for the WAL flush. Enqueues
    # always wait. A database crash can then undo a worker's last transitions, and leases
    # re-run those tasks: the at-least-once contract of a worker crash, at a fraction of
    # the commit latency. Set true to make every recorded outcome durable before it shows.
    worker_synchronous_commit: bool = False
    poll_interval: float = Field(1.0, gt=0, le=60, description="fallback poll, s")
    lease_seconds: float = Field(30.0, ge=1, le=86_400)
    recover_interval: float = Field(2.0, gt=0, le=600, description="expired-lease sweep, s")
    # How often each worker looks for tasks of workers whose session is gone (killed,
    # host lost), which it recovers without waiting for their leases to expire.
    liveness_interval: float = Field(0.5, gt=0, le=600, description="dead-worker sweep, s")
    shutdown_timeout: float = Field(25.0, ge=0, le=3600)
    handler_modules: Annotated[list[str], NoDecode] = []
    # The settings file (YAML): schedules and queue settings, applied by workers at start
    # (app/taskq/settings_file.py).
    config_file: Path | None = None

    # Retries.
    default_max_attempts: int = Field(5, ge=1, le=1000)
    retry_backoff_base: float = Field(1.0, ge=0, le=3600, description="first retry delay, s")
    retry_backoff_max: float = Field(600.0, ge=0, le=86_400 * 7)
    retry_jitter: float = Field(0.25, ge=0, le=1, description="fraction of the delay")

    # Housekeeping and logs.
    retention_days: float = Field(7.0, gt=0, le=3650)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    # One access line per API request at INFO; false moves them to DEBUG (high request
    # rates, or a proxy that logs requests already).
    log_requests: bool = True

    @field_validator("worker_queues", "handler_modules", "api_tokens", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("api_tokens")
    @classmethod
    def _tokens(cls, value: list[SecretStr]) -> list[SecretStr]:
        for token in value:
            _check_token(token.get_secret_value())
        return value

    @field_validator("api_tokens_file")
    @classmethod
    def _tokens_file(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        try:
            tokens = read_tokens_file(value)
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read {value}: {type(exc).__name__}") from None
        if not tokens:
            raise ValueError(f"{value} holds no token")
        for token in tokens:
            _check_token(token)
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("worker_queues")
    @classmethod
    def _queues(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one queue is required")
        from taskq.models import check_queue_name

        return [check_queue_name(q) for q in value]

    @field_validator("api_bind", "api_health_bind", "worker_health_bind")
    @classmethod
    def _bind(cls, value: str) -> str:
        parse_bind(value)
        return value

    @field_validator("database_url", "listen_database_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from psycopg import ProgrammingError
        from psycopg.conninfo import conninfo_to_dict

        if "://" in value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL or a libpq key=value string")
        try:
            params = conninfo_to_dict(value)
        except ProgrammingError as exc:
            # libpq's message may quote the string; never echo a password back.
            raise ValueError("is not a valid libpq connection string") from exc
        ports = str(params.get("port") or "5432").split(",")
        if not all(port.isdigit() for port in ports):
            raise ValueError("has a port that is not a number")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.db_pool_min > self.db_pool_max:
            raise ValueError("TASKQ_DB_POOL_MIN must not exceed TASKQ_DB_POOL_MAX")
        if self.retry_backoff_base > self.retry_backoff_max:
            raise ValueError("TASKQ_RETRY_BACKOFF_BASE must not exceed TASKQ_RETRY_BACKOFF_MAX")
        return self

    @property
    def client_timeout(self) -> float:
        """Seconds a database round trip may take before the client abandons it."""
        if self.db_client_timeout:
            return self.db_client_timeout
        if self.db_statement_timeout_ms:
            return self.db_statement_timeout_ms / 1000 + 5.0
        return 30.0

    @property
    def prepare_threshold(self) -> int | None:
        """psycopg's prepare_threshold: None never prepares (what a transaction pooler needs)."""
        if self.db_prepare_threshold is not None:
            return self.db_prepare_threshold
        return None if self.db_pooler == "transaction" else 5

    @property
    def heartbeat_interval(self) -> float:
        """Renew leases three times per lease period so one missed beat is harmless."""
        return max(0.2, self.lease_seconds / 3)


def parse_bind(value: str) -> tuple[str, int]:
    """Split HOST:PORT (IPv6 as [::1]:PORT); raise ValueError with a readable message."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


MIN_TOKEN_LENGTH = 16


def read_tokens_file(path: Path) -> list[str]:
    """API tokens from a file (a mounted Secret): one per line, commas also separate;
    blank lines and # comments are ignored."""
    tokens = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        tokens += [part.strip() for part in line.split(",") if part.strip()]
    return tokens


def _check_token(token: str) -> None:
    """Refuse guessable or unusable tokens; never echo the token back."""
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"tokens must be at least {MIN_TOKEN_LENGTH} characters")
    if not token.isascii() or not token.isprintable() or " " in token:
        raise ValueError("tokens must be printable ASCII without spaces")


class SettingsError(Exception):
    """Settings failed validation; the message names each offending variable."""


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, turning validation errors into one message."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            name = (
                "DATABASE_URL"
                if loc[:1] and loc[0].lower() in ("database_url", "taskq_database_url")
                else ("TASKQ_" + "_".join(loc).upper() if loc else "settings")
            )
            lines.append(f"{name}: {err['msg']}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
