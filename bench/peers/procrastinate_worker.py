"""A procrastinate worker process with one no-op async task, `bench`.

drain: `wait=False` (exits once it has caught up); serve: runs until SIGTERM/SIGINT.
Concurrency 10 (procrastinate's default is 1, which no one runs a no-op benchmark with;
10 is the setting the figures in the design notes were measured at).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import procrastinate

from bench.probe import Probe

TASK = "bench"


def make_app(dsn: str) -> procrastinate.App:
    return procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))


async def run(dsn: str, mode: str, concurrency: int) -> None:
    app = make_app(dsn)
    probe = Probe.from_env()

    @app.task(name=TASK, queue="default")
    async def bench(**kwargs: Any) -> None:
        if probe is not None:
            probe.started(kwargs)

    async with app.open_async():
        await app.run_worker_async(
            queues=["default"],
            wait=mode == "serve",
            concurrency=concurrency,
            install_signal_handlers=True,
            listen_notify=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--mode", choices=["drain", "serve"], required=True)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(run(args.dsn, args.mode, args.concurrency))


if __name__ == "__main__":
    main()
