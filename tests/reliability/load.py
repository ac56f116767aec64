"""Client load and readiness probes running on threads while a test breaks things."""

from __future__ import annotations

import dataclasses
import http.client
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from tests.reliability.harness import Response, get_status, request


@dataclasses.dataclass(frozen=True)
class Outcome:
    sent: float  # monotonic
    seconds: float
    status: int | None  # None: no HTTP response at all
    json_error: bool
    retry_after: str | None
    task_id: str | None
    error: str | None  # the exception when there was no response


class Load:
    """`clients` threads POSTing tasks until stopped; every outcome is kept."""

    def __init__(
        self,
        port: int,
        *,
        clients: int = 8,
        pace: float = 0.01,
        body: Callable[[int, int], dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.port = port
        self.clients = clients
        self.pace = pace
        self.body = body or (
            lambda client, seq: {"kind": "echo", "payload": {"c": client, "n": seq}}
        )
        self.headers = headers or {}
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        assert not any(t.is_alive() for t in self._threads), "a client thread hung"

    def _run(self, client: int) -> None:
        seq = 0
        while not self._stop.is_set():
            seq += 1
            sent = time.monotonic()
            try:
                resp = request(
                    self.port,
                    "POST",
                    "/tasks",
                    self.body(client, seq),
                    headers=self.headers,
                    timeout=20,
                )
                outcome = _outcome(sent, resp)
            except (OSError, http.client.HTTPException) as exc:
                outcome = Outcome(
                    sent, time.monotonic() - sent, None, False, None, None, type(exc).__name__
                )
            with self._lock:
                self.outcomes.append(outcome)
            self._stop.wait(self.pace)

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def count(self, status: int | None, *, since: float = 0.0) -> int:
        return sum(1 for o in self.snapshot() if o.status == status and o.sent >= since)


def _outcome(sent: float, resp: Response) -> Outcome:
    task_id = None
    if resp.status in (200, 201):
        task_id = resp.json()["id"]
    return Outcome(
        sent,
        time.monotonic() - sent,
        resp.status,
        resp.is_json_error,
        resp.headers.get("retry-after"),
        task_id,
        None,
    )


class ReadyProbe:
    """Polls GET /ready of several processes every `interval` seconds, keeping a timeline."""

    def __init__(self, targets: Iterable[tuple[str, int]], interval: float = 0.1) -> None:
        self.targets = list(targets)
        self.interval = interval
        self.timeline: list[tuple[float, str, int | None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ReadyProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, port in self.targets:
                status = get_status(port, "/ready", timeout=5)
                with self._lock:
                    self.timeline.append((time.monotonic(), name, status))
            self._stop.wait(self.interval)

    def seen(self, name: str, status: int | None, *, since: float = 0.0) -> float | None:
        """The first time at or after `since` that `name` answered `status`."""
        with self._lock:
            for at, who, got in self.timeline:
                if who == name and got == status and at >= since:
                    return at
        return None

    def all_seen(self, status: int | None, *, since: float = 0.0) -> bool:
        return all(self.seen(name, status, since=since) for name, _ in self.targets)
