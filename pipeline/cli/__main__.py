"""`python -m pipeline.cli` is the `drivecast` command."""

import sys

from pipeline.cli import main

sys.exit(main())
