"""``python -m sslports``: the command line of :mod:`sslports.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
