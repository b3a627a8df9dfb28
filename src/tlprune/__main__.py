"""`python -m tlprune` runs the console script."""

import sys

from tlprune.cli import main

sys.exit(main())
