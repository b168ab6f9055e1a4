"""`python -m zfsrepl` runs the command line."""

import sys

from zfsrepl.cli import main

sys.exit(main())
