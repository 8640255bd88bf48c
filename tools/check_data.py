#!/usr/bin/env python
"""`detkit check-data` as a script: `python tools/check_data.py --help`. No logic lives here."""

import sys

from detkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["check-data", *sys.argv[1:]]))
