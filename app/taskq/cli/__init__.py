"""The `taskq` command line.

    app/taskq/cli/parser.py    arguments (argparse) and their checks
    app/taskq/cli/services.py  api, worker, migrate, dev: the long-running processes
    app/taskq/cli/tasks.py     submit, status, prune, stats: working with tasks
    app/taskq/cli/output.py    tables, progress bars, durations (stderr for people, stdout for data)
    app/taskq/cli/main.py      dispatch, exit codes, errors that name the setting to fix

`taskq` (the console script `taskq.cli:main`) and `python -m taskq.cli` both run `main`.
"""

from taskq.cli.main import main

__all__ = ["main"]
