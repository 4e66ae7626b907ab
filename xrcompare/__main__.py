"""``python -m xrcompare``: see :mod:`xrcompare.cli`."""

import sys

from xrcompare.cli import main

if __name__ == "__main__":
    sys.exit(main())
