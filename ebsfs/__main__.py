"""``python -m ebsfs``: the same as the ``ebsfs`` console script."""

import sys

from ebsfs.cli import main

sys.exit(main())
