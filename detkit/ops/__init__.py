"""Box operations: formats, IoU family, scoring and NMS.

The public entry point is :mod:`detkit.boxes`, which re-exports everything here; the split into
``convert``, ``iou``, ``nms`` and ``postprocess`` only keeps each file short.
"""

from __future__ import annotations
