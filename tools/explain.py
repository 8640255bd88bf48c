#!/usr/bin/env python
"""`detkit explain` as a script: `python tools/explain.py image.jpg`. No logic lives here."""

import sys

from detkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["explain", *sys.argv[1:]]))
