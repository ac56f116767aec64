"""The three queues under test, behind one interface.

Each system lives in its own database on the same server and is driven through its own
public entry points: taskq through `taskq submit`, `taskq worker` and `taskq.queue.enqueue`;
pgqueuer through `Queries.enqueue` and `QueueManager.run`; procrastinate through
`batch_defer_async`/`defer_async` and `run_worker_async`. Fixture rows for the scale
workload (a million queued or finished tasks) are written with plain SQL, because no
entry point produces a million finished rows in reasonable time.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from bench import pg
from bench.probe import now_ns

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
Mode = Literal["drain", "serve"]
# Enqueue one task carrying `seq`; returns the CLOCK_MONOTONIC stamp taken right after the
# enqueue committed.
EnqueueOne = Callable[[int], int]


class System(abc.ABC):
    name: str
    # The table the claim reads, for VACUUM/ANALYZE between rounds.
    tables: tuple[str, ...]

    def __init__(self, server: pg.Server, db_prefix: str = "bench_") -> None:
        self.server = server
        self.dbname = f"{db_prefix}{self.name}"
        self.url = server.url(self.dbname)

    # -- lifecycle
    def setup(self) -> None:
        self.server.create(self.dbname)
        self.install()

    def teardown(self) -> None:
        self.server.drop(self.dbname)

    @abc.abstractmethod
    def install(self) -> None: ...

    @abc.abstractmethod
    def reset(self) -> None:
        """Empty the queue tables (between rounds)."""

    def analyze(self, vacuum: bool = False) -> None:
        # Every system gets the same treatment: fresh statistics before it is measured,
        # so no round depends on when autovacuum happened to wake up.
        # A checkpoint afterwards means no round inherits the previous one's dirty pages.
        verb = "VACUUM ANALYZE" if vacuum else "ANALYZE"
        for table in self.tables:
            pg.execute(self.url, f"{verb} {table}")
        pg.execute(self.url, "CHECKPOINT")

    # -- workloads
    @abc.abstractmethod
    def bulk_enqueue(self, n: int) -> float:
        """Insert n no-op tasks in bulk; returns tasks per second."""

    @abc.abstractmethod
    def worker_cmd(self, mode: Mode) -> list[str]: ...

    def worker_env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(REPO)}

    @abc.abstractmethod
    def done_count(self) -> int: ...

    @abc.abstractmethod
    def latency_client(self) -> contextlib.AbstractContextManager[EnqueueOne]: ...

    @abc.abstractmethod
    def fill(self, queued: int, finished: int) -> None:
        """Fixture rows: `queued` runnable no-op tasks and `finished` succeeded ones."""


class Taskq(System):
    name = "taskq"
    tables = ("taskq_tasks",)

    def _env(self) -> dict[str, str]:
        return {
            "DATABASE_URL": self.url,
            "TASKQ_HANDLER_MODULES": "bench.taskq_handlers",
            "PYTHONPATH": str(REPO),
        }

    def install(self) -> None:
        subprocess.run(
            [str(BIN / "taskq"), "migrate"],
            env={**os.environ, **self._env()},
            check=True,
            capture_output=True,
        )

    def reset(self) -> None:
        pg.execute(self.url, "TRUNCATE taskq_tasks")

    def bulk_enqueue(self, n: int) -> float:
        # `taskq submit --count` times its own enqueue_many call (one transaction).
        out = subprocess.run(
            [str(BIN / "taskq"), "submit", "bench", "--payload", "{}", "--count", str(n)],
            env={**os.environ, **self._env()},
            check=True,
            capture_output=True,
            text=True,
        )
        report = json.loads(out.stdout.strip().splitlines()[-1])
        return float(report["submitted"]) / float(report["seconds"])

    def worker_cmd(self, mode: Mode) -> list[str]:
        cmd = [str(BIN / "taskq"), "worker", "--health-port", "0"]
        return [*cmd, "--burst"] if mode == "drain" else cmd

    def worker_env(self) -> dict[str, str]:
        return self._env()

    def done_count(self) -> int:
        rows = pg.execute(self.url, "SELECT count(*) FROM taskq_tasks WHERE status = 'succeeded'")
        return int(rows[0][0])

    @contextlib.contextmanager
    def latency_client(self) -> Iterator[EnqueueOne]:
        from taskq import db
        from taskq import queue as q
        from taskq.settings import load_settings

        settings = load_settings(database_url=self.url)
        with db.connect(settings, name="bench") as conn:

            def enqueue(seq: int) -> int:
                q.enqueue(conn, "bench", {"seq": seq})  # autocommit: returns after COMMIT
                return now_ns()

            yield enqueue

    def fill(self, queued: int, finished: int) -> None:
        if finished:
            pg.execute(
                self.url,
                """
                INSERT INTO taskq_tasks (queue, kind, payload, status, attempts, result,
                                         started_at, finished_at, created_at, updated_at)
                SELECT 'default', 'bench', '{}', 'succeeded', 1, 'null',
                       now() - interval '1 hour', now() - interval '1 hour',
                       now() - interval '1 hour', now() - interval '1 hour'
                  FROM generate_series(1, %s)
                """,
                (finished,),
            )
        if queued:
            pg.execute(
                self.url,
                "INSERT INTO taskq_tasks (queue, kind, payload) "
                "SELECT 'default', 'bench', '{}' FROM generate_series(1, %s)",
                (queued,),
            )


class _AsyncSystem(System):
    """A peer whose client library is async: one event loop per call site."""

    @staticmethod
    def _run(coro: Any) -> Any:
        return asyncio.run(coro)


class Pgqueuer(_AsyncSystem):
    name = "pgqueuer"
    tables = ("pgqueuer", "pgqueuer_log")

    async def _queries(self) -> Any:
        import asyncpg  # type: ignore[import-untyped]
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        conn = await asyncpg.connect(self.url)
        return conn, Queries(AsyncpgDriver(conn))

    def install(self) -> None:
        async def go() -> None:
            conn, queries = await self._queries()
            await queries.install()
            await conn.close()

        self._run(go())

    def reset(self) -> None:
        pg.execute(self.url, "TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics")

    def bulk_enqueue(self, n: int) -> float:
        async def go() -> float:
            conn, queries = await self._queries()
            started = now_ns()
            # Lists = one multi-row insert (pgqueuer's bulk path).
            await queries.enqueue(["bench"] * n, [None] * n, [0] * n)
            elapsed = (now_ns() - started) / 1e9
            await conn.close()
            return n / elapsed

        return float(self._run(go()))

    def worker_cmd(self, mode: Mode) -> list[str]:
        return [
            sys.executable,
            "-m",
            "bench.peers.pgqueuer_worker",
            "--dsn",
            self.url,
            "--mode",
            mode,
        ]

    def done_count(self) -> int:
        rows = pg.execute(self.url, "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'")
        return int(rows[0][0])

    @contextlib.contextmanager
    def latency_client(self) -> Iterator[EnqueueOne]:
        with asyncio.Runner() as runner:
            conn, queries = runner.run(self._queries())

            async def one(seq: int) -> int:
                await queries.enqueue("bench", json.dumps({"seq": seq}).encode())
                return now_ns()

            try:
                yield lambda seq: int(runner.run(one(seq)))
            finally:
                runner.run(conn.close())

    def fill(self, queued: int, finished: int) -> None:
        # Finished pgqueuer jobs leave the queue table; what is retained is the log.
        if finished:
            pg.execute(
                self.url,
                "INSERT INTO pgqueuer_log (job_id, status, priority, entrypoint, aggregated, "
                "created) SELECT g, 'successful', 0, 'bench', true, now() - interval '1 hour' "
                "FROM generate_series(1, %s) g",
                (finished,),
            )
        if queued:
            pg.execute(
                self.url,
                "INSERT INTO pgqueuer (priority, status, entrypoint) "
                "SELECT 0, 'queued', 'bench' FROM generate_series(1, %s)",
                (queued,),
            )


class Procrastinate(_AsyncSystem):
    name = "procrastinate"
    tables = ("procrastinate_jobs",)

    def _app(self) -> Any:
        from bench.peers.procrastinate_worker import make_app

        return make_app(self.url)

    def install(self) -> None:
        async def go() -> None:
            app = self._app()
            async with app.open_async():
                await app.schema_manager.apply_schema_async()

        self._run(go())

    def reset(self) -> None:
        pg.execute(
            self.url,
            "TRUNCATE procrastinate_jobs, procrastinate_events, procrastinate_workers CASCADE",
        )

    def bulk_enqueue(self, n: int) -> float:
        async def go() -> float:
            app = self._app()
            async with app.open_async():
                task = app.configure_task(name="bench", queue="default")
                started = now_ns()
                await task.batch_defer_async(*({} for _ in range(n)))
                return n / ((now_ns() - started) / 1e9)

        return float(self._run(go()))

    def worker_cmd(self, mode: Mode) -> list[str]:
        return [
            sys.executable,
            "-m",
            "bench.peers.procrastinate_worker",
            "--dsn",
            self.url,
            "--mode",
            mode,
        ]

    def done_count(self) -> int:
        rows = pg.execute(
            self.url, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
        )
        return int(rows[0][0])

    @contextlib.contextmanager
    def latency_client(self) -> Iterator[EnqueueOne]:
        with asyncio.Runner() as runner:
            app = self._app()
            runner.run(app.open_async().__aenter__())
            task = app.configure_task(name="bench", queue="default")

            async def one(seq: int) -> int:
                await task.defer_async(seq=seq)
                return now_ns()

            try:
                yield lambda seq: int(runner.run(one(seq)))
            finally:
                runner.run(app.close_async())

    def fill(self, queued: int, finished: int) -> None:
        if finished:
            pg.execute(
                self.url,
                "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status, attempts) "
                "SELECT 'default', 'bench', '{}', 'succeeded', 1 FROM generate_series(1, %s)",
                (finished,),
            )
        if queued:
            pg.execute(
                self.url,
                "INSERT INTO procrastinate_jobs (queue_name, task_name, args) "
                "SELECT 'default', 'bench', '{}' FROM generate_series(1, %s)",
                (queued,),
            )


ALL: tuple[type[System], ...] = (Taskq, Pgqueuer, Procrastinate)
