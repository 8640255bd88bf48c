"""detkit: a small, fast object-detection toolkit (YOLO/SSD family) in PyTorch."""

from __future__ import annotations

__version__ = "0.1.0"
