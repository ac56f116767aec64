"""Child processes of the benchmark: started in their own session, always cleaned up.

Every server and worker runs in a new session (its own process group), so stopping it
reaches its children too (gunicorn's workers). `wait_exit` blocks in wait4(2), which returns
the exact exit moment and the child's CPU time. Peak memory comes from /proc (see PeakRss).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from bench.probe import now_ns


@dataclasses.dataclass(frozen=True, slots=True)
class Exit:
    returncode: int
    stamp_ns: int  # CLOCK_MONOTONIC when wait4 returned
    cpu_s: float  # user + system CPU of the child (counted from its fork; exec resets nothing)


def start(
    cmd: Sequence[str], *, env: Mapping[str, str], log: Path, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            list(cmd),
            env={**os.environ, **env},
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> Exit:
    """Block until the child exits (killing its group after `timeout`), and reap it."""
    timer = threading.Timer(timeout, _signal_group, (proc, signal.SIGKILL))
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    stamp = now_ns()
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped here; keep Popen from waiting on a stale pid
    _signal_group(proc, signal.SIGKILL)  # leftovers of the group, if any
    return Exit(code, stamp, usage.ru_utime + usage.ru_stime)


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> Exit | None:
    """SIGTERM the whole group, wait, then SIGKILL. None if it had already been reaped."""
    if proc.returncode is not None:
        return None
    _signal_group(proc, signal.SIGTERM)
    return wait_exit(proc, timeout)


@contextlib.contextmanager
def running(
    cmd: Sequence[str], *, env: Mapping[str, str], log: Path, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A child that is stopped (group and all) however the block ends."""
    proc = start(cmd, env=env, log=log, cwd=cwd)
    try:
        yield proc
    finally:
        stop(proc)


class PeakRss:
    """Follow a child's VmHWM from a thread until it exits.

    wait4's ru_maxrss cannot be used for this: exec keeps the high-water mark of the
    address space it replaces, which for a child forked from the (much larger) benchmark
    process is the benchmark's own size. VmHWM belongs to the new image only, and never
    decreases, so the last reading before exit is the peak (to within one interval).
    """

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.kb = 0
        self._pid = pid
        self._interval = interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._done.wait(self._interval):
            self.kb = max(self.kb, peak_rss_kb(self._pid))

    def stop(self) -> float:
        """Stop following; the peak in MiB."""
        self._done.set()
        self._thread.join()
        return self.kb / 1024


def peak_rss_kb(pid: int) -> int:
    """VmHWM (peak resident set) of a live process, in KiB; 0 if it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU a live process has used so far; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Direct children of a process (gunicorn's workers under its master)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def wait_until(check: object, timeout: float, what: str) -> None:
    """Poll `check()` every 50 ms until it is true; raise TimeoutError naming `what`."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    """A loopback port free right now (the server binds it a moment later)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_ok(url: str) -> bool:
    """True when GET `url` (always on 127.0.0.1) answers 200."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:  # noqa: S310  (loopback URL)
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False
