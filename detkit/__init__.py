"""detkit: a small, fast object-detection toolkit (YOLO/SSD family) in PyTorch.

The public API is imported lazily, so ``import detkit.boxes`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Detector": "detkit.inference.predict",
    "Detections": "detkit.inference.detections",
    "load_config": "detkit.config",
    "Config": "detkit.config",
    "train": "detkit.api",
    "resume": "detkit.api",
    "evaluate": "detkit.api",
    "check_data": "detkit.api",
    "convert": "detkit.api",
    "anchors": "detkit.api",
    "model_summary": "detkit.api",
    "infer": "detkit.inference.run",
    "export": "detkit.inference.export",
    "export_onnx": "detkit.inference.export",
    "boxes": "detkit.boxes",
    "summary": "detkit.models.summary",
}
_RENAMED = {"export": "export_checkpoint"}  # the verb's name -> the function behind it

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'detkit' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    return module if name == "boxes" else getattr(module, _RENAMED.get(name, name))
