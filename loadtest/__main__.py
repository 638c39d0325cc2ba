"""`python -m loadtest`: the headless runner (see loadtest/run.py)."""

from __future__ import annotations

import sys

from loadtest.run import main

if __name__ == "__main__":
    sys.exit(main())
