"""``python -m bmiss ...``: the ``bmiss`` command."""
import sys

from bmiss.cli import main

if __name__ == "__main__":
    sys.exit(main())
