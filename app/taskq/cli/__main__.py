"""`python -m taskq.cli` runs the taskq CLI."""

import sys

from taskq.cli.main import main

sys.exit(main())
