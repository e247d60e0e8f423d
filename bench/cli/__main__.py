"""`python -m bench.cli ...`: the lora-bench command from a checkout that is not installed."""

import sys

from bench.cli.main import main

sys.exit(main())
