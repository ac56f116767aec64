"""`python -m app` runs the taskq CLI."""

import sys

from app.cli import main

sys.exit(main())
