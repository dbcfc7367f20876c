"""``python -m sim run SIM.yaml [--ports-file PATH]``."""

import sys

from sim.cli import main

sys.exit(main())
