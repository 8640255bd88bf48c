#!/usr/bin/env python
"""`detkit train` as a script: `python tools/train.py --help`. No logic lives here."""

import sys

from detkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
