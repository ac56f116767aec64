"""`python -m taskq` runs the taskq CLI."""

import sys

from taskq.cli import main

sys.exit(main())
