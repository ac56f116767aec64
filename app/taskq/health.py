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


class _SharedPortWSGIServer(_ThreadingWSGIServer):
    """Binds with SO_REUSEPORT: every API worker process of one gunicorn serves the same
    health port, and the kernel spreads the probes over them."""

    allow_reuse_port = True


class LiveResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "live"}

    # Probes and uptime checkers often ask with HEAD: the same answer, without the body.
    on_head = on_get


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


class BindError(OSError):
    """The health server's address is taken or not ours to bind."""


def check_bind(host: str, port: int) -> None:
    """Raise BindError now if host:port cannot be bound (taken, or not an address of this
    host), so a server is not started only to fail, retrying, after it was announced."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(exc.errno, exc.strerror) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # As gunicorn and the health server bind: a port in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise BindError(exc.errno, exc.strerror) from None


class HealthServer:
    """Serve a WSGI app on host:port from a daemon thread; port 0 picks a free port.

    The port is bound by `start()`, not on construction: building a worker (tests, the
    CLI checking its settings) takes no port."""

    def __init__(self, app: Any, host: str, port: int, *, shared: bool = False) -> None:
        self._app = app
        self._address = (host, port)
        self._server_class = _SharedPortWSGIServer if shared else _ThreadingWSGIServer
        self._server: _ThreadingWSGIServer | None = None
        self._bound = threading.Event()

    @property
    def port(self) -> int:
        """The bound port (waits briefly for `start()` when another thread calls it)."""
        if not self._bound.wait(10.0) or self._server is None:
            raise RuntimeError("the health server is not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind (OSError when the port is taken) and serve from a daemon thread."""
        host, port = self._address
        try:
            server = make_server(
                host,
                port,
                self._app,
                server_class=self._server_class,
                handler_class=_QuietHandler,
            )
        except OSError as exc:
            raise BindError(exc.errno, exc.strerror) from None
        self._server = server
        self._bound.set()
        threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
        log.info("health server listening on port %d", self.port)

    def stop(self) -> None:
        server = self._server
        if server is None:
            return
        # serve_forever notices a shutdown only between polls (every 0.5 s): shutting the
        # listening socket down wakes its select() now, so a stopping worker (burst mode,
        # SIGTERM) exits at once instead of up to half a second later.
        with contextlib.suppress(OSError):
            server.socket.shutdown(socket.SHUT_RDWR)
        server.shutdown()
        server.server_close()
