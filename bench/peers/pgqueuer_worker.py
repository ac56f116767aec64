"""A pgqueuer worker process with one no-op entrypoint, `bench`.

Set up the way pgqueuer's own drain benchmark (tools/benchmark.py) runs it: one process on
uvloop holding several QueueManagers (five by default), each on its own asyncpg
connection, dequeuing in batches of 10. drain: QueueExecutionMode.drain (each manager
exits once nothing is queued and nothing runs); serve: continuous until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

import asyncpg  # type: ignore[import-untyped]
import uvloop
from pgqueuer import QueueManager
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries
from pgqueuer.types import QueueExecutionMode

from bench.probe import Probe

ENTRYPOINT = "bench"


async def run(dsn: str, mode: str, managers: int, batch_size: int) -> None:
    probe = Probe.from_env()

    async def bench(job: Job) -> None:
        if probe is not None:
            # Only latency tasks carry a payload; drain tasks skip the JSON parse.
            probe.started(json.loads(job.payload) if job.payload else None)

    connections = [await asyncpg.connect(dsn) for _ in range(managers)]
    qms = [QueueManager(Queries(AsyncpgDriver(conn))) for conn in connections]
    for qm in qms:
        qm.entrypoint(ENTRYPOINT)(bench)

    def shutdown() -> None:
        for qm in qms:
            qm.shutdown.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown)
    execution = QueueExecutionMode.drain if mode == "drain" else QueueExecutionMode.continuous
    await asyncio.gather(*(qm.run(batch_size=batch_size, mode=execution) for qm in qms))
    for conn in connections:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--mode", choices=["drain", "serve"], required=True)
    parser.add_argument("--managers", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=10)
    args = parser.parse_args()
    uvloop.run(run(args.dsn, args.mode, args.managers, args.batch_size))


if __name__ == "__main__":
    main()
