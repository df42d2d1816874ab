"""`python -m health_orsc`: the `orsc` command."""

import sys

from health_orsc.cli import main

sys.exit(main())
