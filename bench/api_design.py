"""taskq's API on one of the server designs app/taskq/server.py knows, for comparison in
the same run: "sync" (the WSGI app on sync workers, one request per process at a time),
"gthread" (the WSGI app with group commit on threaded workers), "asgi" (what `taskq api`
runs: falcon.asgi on uvicorn workers with group commit).

    python -m bench.api_design --design gthread --bind 127.0.0.1:8091
"""

from __future__ import annotations

import argparse

from taskq.server import WORKER_CLASSES, serve
from taskq.settings import load_settings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", required=True)
    parser.add_argument("--design", choices=sorted(WORKER_CLASSES), required=True)
    args = parser.parse_args()
    serve(load_settings(), bind=args.bind, design=args.design)


if __name__ == "__main__":
    main()
