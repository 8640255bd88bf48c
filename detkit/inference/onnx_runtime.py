"""The onnxruntime model an exported ``.onnx`` runs with; ``onnxruntime`` is imported when used."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detkit.core.versions import require as require_package
from detkit.inference.runtimes import ExportedModel

log = logging.getLogger(__name__)

META_KEY = "detkit"
"""The ONNX metadata key holding the export's JSON record (see :mod:`detkit.inference.export`)."""


def require(module: str) -> Any:
    """Import ``onnx`` or ``onnxruntime``, or raise ``MissingPackage`` saying how to install it."""
    return require_package(module, "ONNX export and inference", "pip install 'detkit[export]'")


class OnnxModel(ExportedModel):
    """A detkit ``.onnx`` run with onnxruntime (an :class:`ExportedModel`; an NMS graph answers
    :meth:`detections` instead).

    Args:
        device: ``"cpu"``, or ``"cuda"`` when onnxruntime has the CUDA provider.
        threads: intra-op threads (0: onnxruntime's default).
    """

    def __init__(self, path: str | Path, device: str = "cpu", threads: int = 0) -> None:
        ort = require("onnxruntime")
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ValueError("onnxruntime has no CUDA provider here; use device=cpu")
            providers.insert(0, "CUDAExecutionProvider")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime's default (physical cores)
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        if providers[0] not in self.session.get_providers():  # onnxruntime fell back by itself
            log.warning("onnxruntime could not start its %s (its own log says why): %s runs on "
                        "the CPU", providers[0], self.path.name)  # fmt: skip
        raw_meta = self.session.get_modelmeta().custom_metadata_map.get(META_KEY)
        if raw_meta is None:
            raise ValueError(f"{self.path} was not exported by detkit (no '{META_KEY}' metadata)")
        super().__init__(self.path, json.loads(raw_meta))
        batch = self.session.get_inputs()[0].shape[0]
        self.static_batch = batch if isinstance(batch, int) else None

    def _run(self, images: torch.Tensor) -> list[np.ndarray]:
        self.check_input(images)
        array = np.ascontiguousarray(images.detach().cpu().float().numpy())
        return self.run_batch(array, lambda a: self.session.run(None, {"images": a}))

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``[B, 3, S, S]`` float -> ``(boxes [B, N, 4] input px, objectness, class_probs)``."""
        if self.nms_in_graph:
            raise RuntimeError("this graph ends in NMS; call detections()")
        return tuple(torch.from_numpy(o) for o in self._run(images))

    def detections(self, images: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Run an NMS graph: one ``(boxes [K, 4] input px, scores [K], labels [K])`` per image."""
        index, boxes, scores, labels = (torch.from_numpy(o) for o in self._run(images))
        out = []
        for b in range(images.shape[0]):
            sel = index == b
            out.append((boxes[sel], scores[sel], labels[sel].long()))
        return out
