"""Serve the Falcon app with gunicorn, configured from our settings.

The app (and its connection pool) is built in each gunicorn worker after the fork:
database connections must never be shared across processes.
"""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from app.settings import Settings


class GunicornServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, *, bind: str, workers: int) -> None:
        self._settings = settings
        self._options: dict[str, Any] = {
            "bind": bind,
            "workers": workers,
            "worker_class": "sync",
            # Keep-alive lets load balancers and load tests reuse connections.
            "keepalive": 5,
            "timeout": 30,
            "graceful_timeout": 20,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": settings.log_level.lower(),
            "proc_name": "taskq-api",
            # Headers above these limits get a 400 from gunicorn before our code runs.
            "limit_request_line": 8190,
            "limit_request_fields": 100,
            "limit_request_field_size": 8190,
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
        from app import logs
        from app.api import create_app

        logs.configure(self._settings)
        return create_app(self._settings)


def serve(settings: Settings, *, bind: str | None = None, workers: int | None = None) -> None:
    GunicornServer(
        settings,
        bind=settings.api_bind if bind is None else bind,
        workers=settings.api_workers if workers is None else workers,
    ).run()
