"""``python -m mbdefense.cli``."""

import sys

from mbdefense.cli import main

sys.exit(main())
