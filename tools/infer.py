#!/usr/bin/env python
"""`detkit infer` as a script: `python tools/infer.py --help`. No logic lives here."""

import sys

from detkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
