"""The `taskq` command line.

    app/cli/parser.py    arguments (argparse) and their checks
    app/cli/services.py  api, worker, migrate, dev: the long-running processes
    app/cli/tasks.py     submit, status, prune, stats: working with tasks
    app/cli/output.py    tables, progress bars, durations (stderr for people, stdout for data)
    app/cli/main.py      dispatch, exit codes, errors that name the setting to fix

`taskq` (the console script `app.cli:main`) and `python -m app.cli` both run `main`.
"""

from app.cli.main import main

__all__ = ["main"]
