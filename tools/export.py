#!/usr/bin/env python
"""`detkit export` as a script: `python tools/export.py --help`. No logic lives here."""

import sys

from detkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
