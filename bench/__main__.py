"""`python -m bench ARGS`: what `setpay bench ARGS` runs (bench/cli.py Rule 1)."""

import sys

from bench.cli import main

sys.exit(main())
