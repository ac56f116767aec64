"""GET /dashboard: one HTML page (inline CSS and vanilla JavaScript, no build step).

The page holds no data: it reads /stats and /tasks with fetch() and refreshes itself.
When the API has bearer tokens on, the page asks for one, keeps it in sessionStorage
(this tab only) and sends it as an Authorization header; the page itself is served
without a token because a browser cannot add that header to a navigation.

A Content-Security-Policy allows exactly the page's own inline style and script (by
hash) and requests to this origin: no other script can run, nothing is loaded from
elsewhere, and the page renders API data only as text.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

import falcon

_PAGE = "dashboard.html"


def _hashes(html: str, tag: str) -> list[str]:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'"
        for b in blocks
    ]


def load_page() -> tuple[bytes, str]:
    """The page and its Content-Security-Policy."""
    html = resources.files("taskq.api").joinpath("static", _PAGE).read_text(encoding="utf-8")
    policy = "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join(_hashes(html, "script")),
            "style-src " + " ".join(_hashes(html, "style")),
            "connect-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return html.encode("utf-8"), policy


class DashboardResource:
    def __init__(self) -> None:
        self._page, self._policy = load_page()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = self._page
        resp.content_type = falcon.MEDIA_HTML
        resp.set_header("Content-Security-Policy", self._policy)
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.set_header("Referrer-Policy", "no-referrer")
        resp.cache_control = ["no-cache"]

    # Uptime checkers ask with HEAD: the same headers, no body.
    on_head = on_get
