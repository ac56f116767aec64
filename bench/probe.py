"""Handler-start timestamps, sent from inside a worker process to the benchmark process.

Every system's no-op handler calls `Probe.started` first thing, so all three pay the same
(tiny) cost. Messages travel over a UNIX datagram socket: no network, no database writes
that would add load to the system under test, and a blocking send never drops a message.
Times are CLOCK_MONOTONIC nanoseconds, which Linux keeps system-wide, so a stamp taken in
the worker compares directly with one taken in the benchmark process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

ENV_SOCKET = "BENCH_PROBE_SOCKET"
# The handler reports the start of task number 1 and of task number TOTAL (drain runs).
ENV_TOTAL = "BENCH_PROBE_TOTAL"


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class Probe:
    """The worker side: one instance per worker process, shared by its threads/tasks."""

    def __init__(self, path: str, total: int) -> None:
        self._path = path
        self._total = total
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # itertools.count's __next__ is atomic under the GIL: safe from runner threads.
        self._count = itertools.count(1)

    @classmethod
    def from_env(cls) -> Probe | None:
        path = os.environ.get(ENV_SOCKET)
        if not path:
            return None
        return cls(path, int(os.environ.get(ENV_TOTAL, "0")))

    def started(self, payload: Mapping[str, Any] | None) -> None:
        stamp = now_ns()
        seq = payload.get("seq") if payload else None
        if seq is not None:
            self._send(f"seq {seq} {stamp}")
        n = next(self._count)
        if n == 1 or n == self._total:
            self._send(f"count {n} {stamp}")

    def _send(self, text: str) -> None:
        self._sock.sendto(text.encode(), self._path)


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    kind: str  # "seq" (pickup latency) or "count" (drain progress)
    n: int
    stamp_ns: int


class Collector:
    """The benchmark side: receives the probe's messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))

    def env(self, total: int = 0) -> dict[str, str]:
        """Environment variables that point a worker's probe at this collector."""
        return {ENV_SOCKET: str(self.path), ENV_TOTAL: str(total)}

    def recv(self, timeout: float) -> Message:
        """The next message; raises TimeoutError when none arrives in time."""
        self._sock.settimeout(timeout)
        data = self._sock.recv(256)
        kind, n, stamp = data.decode().split()
        return Message(kind, int(n), int(stamp))

    def wait_for(self, kind: str, n: int, timeout: float) -> Message:
        """Skip messages until the one (kind, n) arrives."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.001, deadline - time.monotonic()))
            if msg.kind == kind and msg.n == n:
                return msg

    def drain_pending(self) -> None:
        """Throw away anything left over from a previous run."""
        self._sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                self._sock.recv(256)

    def close(self) -> None:
        self._sock.close()


@contextlib.contextmanager
def collector() -> Iterator[Collector]:
    with tempfile.TemporaryDirectory(prefix="taskq-bench-") as tmp:
        col = Collector(Path(tmp) / "probe.sock")
        try:
            yield col
        finally:
            col.close()
