"""``python -m explorer``: the command-line interface (see :mod:`explorer.cli`)."""
import sys

from explorer.cli import main

sys.exit(main())
