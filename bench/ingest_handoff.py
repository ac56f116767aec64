"""Group commit on an event loop: the ingest thread (app/taskq/api/ingest.py, sync pool)
against a writer coroutine on psycopg's AsyncConnection, same statement, same loop.

N coroutines submit one task at a time for a few seconds; each design writes whatever
queued meanwhile as one INSERT_TASKS statement. Prints submissions/s, mean group size
and the process's CPU per submission (both designs run in this one process, so their
CPU is comparable; PostgreSQL's is not counted).

    python -m bench.ingest_handoff --clients 16 --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import psycopg
import uvloop
from psycopg.rows import dict_row
from taskq import db, queue, sql
from taskq.api.ingest import Ingest
from taskq.models import TaskSpec
from taskq.settings import load_settings

SPEC = TaskSpec.model_validate({"kind": "echo", "payload": {"input": "hello"}})


def _params(specs: list[TaskSpec]) -> dict[str, Any]:
    """INSERT_TASKS's parameters, as queue.enqueue_many builds them."""
    return queue.insert_params(specs, 5)[2]


class AsyncWriter:
    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn
        self._pending: list[tuple[TaskSpec, asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self.groups = 0

    def submit(self, spec: TaskSpec) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((spec, future))
        self._wake.set()
        return future

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            group, self._pending = self._pending, []
            if not group:
                continue
            async with self._conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(sql.INSERT_TASKS, _params([s for s, _ in group]))
                rows = await cur.fetchall()
            self.groups += 1
            for (_, future), row in zip(group, rows, strict=True):
                future.set_result(row)


async def _drive(submit: Any, clients: int, seconds: float) -> int:
    done = 0
    stop = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done
        while time.monotonic() < stop:
            await submit(SPEC)
            done += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return done


async def _thread_design(clients: int, seconds: float) -> tuple[int, int]:
    settings = load_settings()
    pool = db.create_pool(settings, name="bench", notify_on_insert=False)
    ingest = Ingest(pool, default_max_attempts=5, announce=lambda conn, tasks: None)
    try:
        done = await _drive(ingest.submit_async, clients, seconds)
    finally:
        pool.close()
    return done, ingest.groups


async def _async_design(clients: int, seconds: float) -> tuple[int, int]:
    settings = load_settings()
    conn = await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True)
    await conn.execute("SELECT set_config('taskq.notify', 'off', false)")
    writer = AsyncWriter(conn)
    task = asyncio.create_task(writer.run())
    try:
        done = await _drive(writer.submit, clients, seconds)
    finally:
        task.cancel()
        await conn.close()
    return done, writer.groups


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    designs = {"thread + sync pool": _thread_design, "AsyncConnection": _async_design}
    for _ in range(args.rounds):
        for name, design in designs.items():
            cpu = time.process_time()
            done, groups = uvloop.run(design(args.clients, args.seconds))
            cpu = time.process_time() - cpu
            print(
                f"{name}: {done / args.seconds:,.0f}/s, groups of {done / max(1, groups):.1f}, "
                f"{cpu / max(1, done) * 1e6:.0f} us CPU per submission"
            )


if __name__ == "__main__":
    main()
