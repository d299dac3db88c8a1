"""``python -m mbdefense`` (also ``accelerate launch -m mbdefense``)."""

import sys

from mbdefense.cli import main

sys.exit(main())
