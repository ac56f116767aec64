"""Serve the Falcon app with gunicorn, configured from our settings.

The API is an ASGI app (falcon.asgi) on gunicorn's uvicorn workers ("asgi", what
`taskq api` runs): each process holds many requests in flight, and concurrent
submissions share one commit (app/taskq/api/ingest.py). Two other designs stay
available for comparison (bench/): "sync", one request per process at a time (the WSGI
app on sync workers), and "gthread", the WSGI app with group commit on threaded workers.

The app (and its connection pool) is built in each gunicorn worker after the fork:
database connections must never be shared across processes.

Metrics: before forking, the server gets its own prometheus-client multiprocess
directory (app/taskq/metrics.py), so /metrics answered by any worker process reports the sum
over all of them; `child_exit` drops the live gauges of a worker that exited, `on_exit`
removes the directory. Logs: gunicorn's own messages go through the root handler that
app/taskq/logs.py configures (text or JSON) instead of gunicorn's format.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
from http import HTTPStatus
from typing import Any, cast

from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from taskq import db, metrics
from taskq.connections import ConnectionTable
from taskq.health import HealthServer, health_app
from taskq.settings import Settings, parse_bind

log = logging.getLogger(__name__)

_GUNICORN_ERROR_CODES = {
    400: "bad_request",
    403: "forbidden",
    413: "payload_too_large",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
}


def _json_error_response(status_int: int, reason: str) -> bytes:
    body = json.dumps(
        {
            "error": {
                "status": status_int,
                "code": _GUNICORN_ERROR_CODES.get(status_int, "error"),
                "message": reason,
            }
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's answer to a request it cannot parse (a bad request line, oversized or
    malformed headers, bad chunking) in the API's one JSON error shape instead of an HTML
    page. The detail is left out: it may quote the offending header, a token included."""
    gunicorn_util.write_nonblock(sock, _json_error_response(status_int, reason))


# gunicorn writes its own error responses through this one function.
gunicorn_util.write_error = _write_json_error


class _WithholdRequestDetails(logging.Filter):
    """gunicorn logs a rejected request with the offending line, which may be a header
    carrying a token ("Invalid request from ip=...: Invalid HTTP Header: '...'"). Keep the
    kind of error, drop the quoted text."""

    PREFIX = "Invalid request from ip="

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(self.PREFIX):
            where, _, error = message.partition(": ")
            kind = error.split(":", 1)[0].split("'", 1)[0].split('"', 1)[0].strip()
            record.msg = f"{where}: {kind or 'malformed request'} (details withheld)"
            record.args = ()
        return True


class GunicornLogger(Logger):  # type: ignore[misc]
    """gunicorn's logs, handed to the root logger (app/taskq/logs.py formats them)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in list(log.handlers):
                log.removeHandler(handler)
            log.propagate = True


# Request limits, as gunicorn's sync workers enforce them (limit_request_* below).
LIMIT_REQUEST_LINE = 8190
LIMIT_REQUEST_FIELDS = 100
LIMIT_REQUEST_FIELD_SIZE = 8190


class _Refused(Exception):
    pass


# A connection answered before its request body arrived (413) lingers this long, or
# until this much more of the body has been discarded, before it is closed for good.
LINGER_SECONDS = 2.0
LINGER_BYTES = 16 * 1024 * 1024


class _Transport:
    """The transport as uvicorn's request cycles see it.

    - close() is the protocol's to decide (ApiHttpProtocol.close_connection).
    - A response's head is held back and sent with the body's first write, in one send:
      uvicorn writes the status line and headers, then the body, as two writes, which
      costs a second system call and a second TCP segment per response. A head whose
      body does not follow in the same turn of the loop is sent on its own at the next."""

    def __init__(self, transport: asyncio.Transport, protocol: ApiHttpProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._head: bytes | None = None
        self.is_closing = transport.is_closing
        self.get_extra_info = transport.get_extra_info
        self.pause_reading = transport.pause_reading
        self.resume_reading = transport.resume_reading

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head + data)
        elif data[:9] == b"HTTP/1.1 ":
            self._head = bytes(data)
            asyncio.get_running_loop().call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._protocol.close_connection()


class ApiHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with gunicorn's request limits (a URL over 8190
    bytes: 414; more than 100 header fields, or one over 8190 bytes: 431) and, for every
    request it cannot parse, the API's JSON error shape instead of uvicorn's plain text.
    Like gunicorn's, the answer never quotes the offending bytes.

    A connection closed while its client is still sending a request body (a 413 answers
    without reading it) closes lingering, as web servers do: the answer goes out with the
    end of the stream (FIN), and what the client still sends is read and discarded until
    it closes, for at most LINGER_SECONDS or LINGER_BYTES. Closing at once would make the
    kernel answer those bytes with a reset, which can destroy the answer in flight: the
    client would see "connection reset" instead of its 413."""

    _lingering = False
    _handed_over = False  # closes after this response for a sibling to take (counted out)
    _discarded = 0
    _linger_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _connections.opened()
        metrics.api_connections(_connections.open)
        self._socket = transport
        self.transport = cast(asyncio.Transport, _Transport(transport, self))

    def close_connection(self) -> None:
        transport = self._socket
        if self._lingering:
            return
        cycle = self.cycle
        unread = cycle is not None and cycle.more_body and not cycle.disconnected
        if unread and not transport.is_closing() and transport.can_write_eof():
            self._lingering = True
            transport.write_eof()  # after what is buffered: the answer, then FIN
            self.flow.resume_reading()
            loop = asyncio.get_running_loop()
            self._linger_timer = loop.call_later(LINGER_SECONDS, transport.close)
            return
        transport.close()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._discarded += len(data)
            if self._discarded > LINGER_BYTES:
                self._socket.close()
            return
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._handed_over:
            _connections.closed()
            metrics.api_connections(_connections.open)
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if not self._handed_over and self.cycle is not None and _connections.hand_over():
            # More connections here than at a sibling process: this one closes after its
            # response (Connection: close) and its client reconnects (taskq/connections.py).
            # It is counted out already (connection_lost must not count it again).
            self.cycle.keep_alive = False
            self._handed_over = True
            metrics.api_connections(_connections.open)
            metrics.connection_handed_over()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._refusal = 400
        self._fields = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > LIMIT_REQUEST_LINE:
            self._refusal = 414
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > LIMIT_REQUEST_FIELDS or len(name) + len(value) > LIMIT_REQUEST_FIELD_SIZE:
            self._refusal = 431
            raise _Refused
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        status = getattr(self, "_refusal", 400)
        self.transport.write(_json_error_response(status, HTTPStatus(status).phrase))
        self.transport.close()


def _drop_color_message(record: logging.LogRecord) -> bool:
    """uvicorn attaches a terminal-coloured copy of some messages as an extra field, which
    taskq's formatters would print as one more key."""
    record.__dict__.pop("color_message", None)
    return True


class ApiWorker(UvicornWorker):  # type: ignore[misc]
    """uvicorn in a gunicorn worker process, its error log handed to the root logger like
    gunicorn's own (uvicorn's worker would give it gunicorn's handlers, which
    GunicornLogger empties, and stop its propagation: it would vanish). Access lines
    come from the API's own observer (app/taskq/api/observability.py), not uvicorn."""

    CONFIG_KWARGS: dict[str, Any] = {
        "loop": "auto",  # uvloop when installed
        "http": ApiHttpProtocol,
        "access_log": False,
        "lifespan": "off",
        "server_header": False,
        # Forwarded headers are not read (as under the sync workers, the app uses none of
        # what they would rewrite); skipping uvicorn's middleware saves its work per request.
        "proxy_headers": False,
    }

    connection_slot = -1  # in the connection table, given out by the master (pre_fork)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        errors = logging.getLogger("uvicorn.error")
        errors.handlers = []
        errors.propagate = True
        errors.addFilter(_drop_color_message)
        # No handler and no propagation: uvicorn then skips its access line altogether.
        access = logging.getLogger("uvicorn.access")
        access.handlers = []
        access.propagate = False

    def init_process(self) -> None:
        if self.connection_slot >= 0:
            _connections.take(self.connection_slot, os.getpid())
        super().init_process()


# gunicorn worker class and WSGI/ASGI app options per server design.
WORKER_CLASSES = {
    "asgi": "taskq.server.ApiWorker",
    "gthread": "gthread",
    "sync": "sync",
}
# Threads per process for "gthread": requests a process holds in flight.
GTHREAD_THREADS = 16


# Each API process's open connections, shared by all of them (taskq/connections.py). The
# master replaces it with one sized for its workers before any is forked.
_connections = ConnectionTable(0)


def _pre_fork(server: Any, worker: Any) -> None:
    if isinstance(worker, ApiWorker):
        taken = (getattr(w, "connection_slot", -1) for w in server.WORKERS.values())
        worker.connection_slot = _connections.free_slot(taken)


def _child_exit(server: Any, worker: Any) -> None:
    _connections.release(getattr(worker, "connection_slot", -1))
    metrics.process_exited(worker.pid)


class GunicornServer(BaseApplication):  # type: ignore[misc]
    def __init__(
        self, settings: Settings, *, bind: str, workers: int, design: str = "asgi"
    ) -> None:
        self._settings = settings
        self._design = design
        # The master's pid, taken before the fork: a worker whose master died while it
        # was still loading would otherwise watch its new parent (init) for ever.
        self._master = os.getpid()
        metrics_dir = metrics.prepare_multiprocess_dir()  # before any worker is forked
        global _connections
        _connections = ConnectionTable(2 * workers)  # room for a reload's new workers
        self._options: dict[str, Any] = {
            "bind": bind,
            "workers": workers,
            "worker_class": WORKER_CLASSES[design],
            "threads": GTHREAD_THREADS if design == "gthread" else 1,
            # Keep-alive lets load balancers and load tests reuse connections.
            "keepalive": 5,
            "timeout": 30,
            "graceful_timeout": 20,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": settings.log_level.lower(),
            "proc_name": "taskq-api",
            # Headers above these limits get a 400 from gunicorn before our code runs.
            "limit_request_line": LIMIT_REQUEST_LINE,
            "limit_request_fields": LIMIT_REQUEST_FIELDS,
            "limit_request_field_size": LIMIT_REQUEST_FIELD_SIZE,
            "logger_class": "taskq.server.GunicornLogger",
            "pre_fork": _pre_fork,
            "child_exit": _child_exit,
            "on_exit": lambda server: metrics.remove_multiprocess_dir(metrics_dir),
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)
        # gunicorn >= 25.1 opens a control socket at one per-user path ($HOME/.gunicorn or
        # $XDG_RUNTIME_DIR): every instance on a host would share it (and the last to stop
        # deletes it), and it writes into $HOME. taskq does not use gunicornc; keep it off.
        if "control_socket_disable" in self.cfg.settings:
            self.cfg.set("control_socket_disable", True)

    def load(self) -> Any:
        """Build the app in a freshly forked worker process, with its probe thread and its
        watch on the master."""
        from taskq import logs
        from taskq.api import create_app
        from taskq.api.deps import Deps

        logs.configure(self._settings)
        logging.getLogger("gunicorn.error").addFilter(_WithholdRequestDetails())
        deps = Deps.from_settings(self._settings)
        app = create_app(
            self._settings, deps, asgi=self._design == "asgi", group_commit=self._design != "sync"
        )
        start_worker_health(self._settings, deps.pool)
        watch_master(self._master)
        return app


def start_worker_health(settings: Settings, pool: Any) -> HealthServer | None:
    """/live and /ready on TASKQ_API_HEALTH_BIND from a thread of this worker process.

    Requests waiting on a hung database hold a sync worker, and the threads an ASGI
    worker runs its queries on; were the probes to share the API's port they would queue
    behind them, and a liveness probe would restart a healthy API. The probe thread
    answers apart from them; `/ready` asks the process's own pool, bounded by the
    watchdog (taskq/db.py).
    """
    host, port = parse_bind(settings.api_health_bind)
    if port == 0:
        return None
    server = HealthServer(health_app(lambda: {"database": db.ping(pool)}), host, port, shared=True)
    try:
        server.start()
    except OSError as exc:
        log.error("API health port %s unavailable (%s); probes need the API port", port, exc)
        return None
    return server


def watch_master(master: int, interval: float = 0.2) -> threading.Thread:
    """Exit when the gunicorn master is gone (killed with SIGKILL, say).

    gunicorn's own check runs between requests, after up to half its timeout; meanwhile
    orphaned workers keep serving and hold the port, so a restarted API cannot bind it.
    """

    def run() -> None:
        while os.getppid() == master:
            time.sleep(interval)
        log.warning("the gunicorn master is gone; this worker exits")
        os.kill(os.getpid(), signal.SIGTERM)  # finish the request in hand, if quick
        time.sleep(0.5)
        os._exit(0)

    thread = threading.Thread(target=run, name="master-watch", daemon=True)
    thread.start()
    return thread


def serve(
    settings: Settings,
    *,
    bind: str | None = None,
    workers: int | None = None,
    design: str = "asgi",
) -> None:
    GunicornServer(
        settings,
        bind=settings.api_bind if bind is None else bind,
        workers=settings.api_workers if workers is None else workers,
        design=design,
    ).run()
