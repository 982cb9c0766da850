"""``python -m jntk_dist.cli`` = ``jntk``."""

import sys

from . import main

sys.exit(main())
