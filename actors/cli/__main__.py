"""`python -m shoal.actors.cli`: the `shoal` command without the console script."""

import sys

from .main import main

sys.exit(main())
