"""A small HTTP server in a background thread for the worker's probes (and metrics).

The worker has no web framework server of its own; wsgiref is enough for a kubelet that
asks every few seconds, and threading keeps a slow probe from blocking another.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
from collections.abc import Callable, Sequence
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import falcon

log = logging.getLogger(__name__)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would drown the log; stay silent."""


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class LiveResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "live"}


class ReadyResource:
    def __init__(self, check: Callable[[], dict[str, bool]]) -> None:
        self._check = check

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        checks = self._check()
        ready = all(checks.values())
        resp.status = falcon.HTTP_200 if ready else falcon.HTTP_503
        resp.media = {"status": "ready" if ready else "not ready", "checks": checks}


class MetricsResource:
    """/metrics in the Prometheus text format (app/taskq/metrics.py), plus `collectors`."""

    def __init__(self, collectors: Sequence[Any] = ()) -> None:
        self._collectors = list(collectors)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        from taskq import metrics

        resp.data, resp.content_type = metrics.exposition(self._collectors)


def health_app(
    ready_check: Callable[[], dict[str, bool]],
) -> falcon.App[falcon.Request, falcon.Response]:
    app = falcon.App()
    app.add_route("/live", LiveResource())
    app.add_route("/ready", ReadyResource(ready_check))
    app.add_route("/metrics", MetricsResource())
    return app


class HealthServer:
    """Serve a WSGI app on host:port from a daemon thread; port 0 picks a free port."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        self._server = make_server(
            host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        log.info("health server listening on port %d", self.port)

    def stop(self) -> None:
        # serve_forever notices a shutdown only between polls (every 0.5 s): shutting the
        # listening socket down wakes its select() now, so a stopping worker (burst mode,
        # SIGTERM) exits at once instead of up to half a second later.
        with contextlib.suppress(OSError):
            self._server.socket.shutdown(socket.SHUT_RDWR)
        self._server.shutdown()
        self._server.server_close()
