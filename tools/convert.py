#!/usr/bin/env python
"""`detkit convert` as a script: `python tools/convert.py --help`. No logic lives here."""

import sys

from detkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
