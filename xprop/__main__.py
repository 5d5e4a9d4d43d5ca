"""``python -m xprop``: the same command line as the ``xprop`` script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
