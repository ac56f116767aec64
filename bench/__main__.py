"""`python -m bench`: see bench/run.py and `python -m bench --help`."""

import sys

from bench.run import main

sys.exit(main())
