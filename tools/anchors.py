#!/usr/bin/env python
"""`detkit anchors` as a script: `python tools/anchors.py --help`. No logic lives here."""

import sys

from detkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["anchors", *sys.argv[1:]]))
