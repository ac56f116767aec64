"""`python -m app.cli` runs the taskq CLI."""

import sys

from app.cli.main import main

sys.exit(main())
