#!/usr/bin/env python
"""`detkit summary` as a script: `python tools/summary.py --help`. No logic lives here."""

import sys

from detkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["summary", *sys.argv[1:]]))
