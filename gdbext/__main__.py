"""``python -m gdbext``: the kheap command line (the same as the ``kheap`` console script)."""

import sys

from gdbext.frontends.cli import main

sys.exit(main())
