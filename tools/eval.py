#!/usr/bin/env python
"""`detkit eval` as a script: `python tools/eval.py --help`. No logic lives here."""

import sys

from detkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
