"""Exported models behind the interface ``detect`` expects: ``model(images [B, 3, S, S] float RGB
in [0, 1])`` -> ``(boxes [B, N, 4] xyxy input px, objectness [B, N], class_probs [B, N, C])``, and a
``decode`` that passes that through. ``openvino`` is imported only when used."""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detkit.core.versions import require

META_FILE = "detkit.json"
"""The export's JSON record: a TorchScript archive's extra file, a file in an OpenVINO folder."""


class ExportedModel:
    """What every exported model shares: its detkit record ``meta`` (``img_size``,
    ``class_names``, ``cat_ids``, ``format``, ``batch``), the input size check, a pass-through
    decode and no priors outside the graph."""

    nms_in_graph = False

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path, self.meta = Path(path), meta
        self.img_size: int = meta["img_size"]
        self.class_names: list[str] = meta["class_names"]
        self.nms_in_graph = meta.get("format") == "nms"
        self.device = torch.device("cpu")  # outputs come back on the host
        self.static_batch: int | None = meta.get("batch")

    def eval(self) -> ExportedModel:
        return self

    def check_input(self, images: torch.Tensor) -> None:
        """Refuse inputs of another size than the export's (its priors are baked in)."""
        if tuple(images.shape[2:]) != (self.img_size, self.img_size):
            raise ValueError(
                f"{self.path} takes {self.img_size}x{self.img_size} inputs, got "
                f"{images.shape[2]}x{images.shape[3]}; export again with --img-size"
            )

    def run_batch(
        self, array: np.ndarray, run: Callable[[np.ndarray], list[np.ndarray]]
    ) -> list[np.ndarray]:
        """``run(array)``, or image by image for an export fixed at batch 1 (another fixed batch
        and another number of images: ``ValueError``)."""
        if self.static_batch is None or self.static_batch == len(array):
            return run(array)
        if self.static_batch != 1:
            raise ValueError(
                f"{self.path} has a fixed batch of {self.static_batch}; got {len(array)} images"
            )
        parts = [run(a[None]) for a in array]
        if self.nms_in_graph:  # each run's image index 0 -> its place in the batch
            for index, part in enumerate(parts):
                part[0] = part[0] + index
        return [np.concatenate(p) for p in zip(*parts, strict=True)]

    def decode(
        self, raw: tuple[torch.Tensor, ...], priors: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """The graph decoded already: ``raw`` is ``(boxes, objectness, class_probs)``."""
        return raw

    def priors(self, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
        """Empty (the graph holds them); checks the input size."""
        if (height, width) != (self.img_size, self.img_size):
            raise ValueError(f"{self.path} was exported for {self.img_size} px inputs")
        return torch.empty(0)


class TorchScriptModel(ExportedModel):
    """A ``.torchscript`` archive on ``device`` (``"cpu"`` or ``"cuda[:N]"``), any batch size."""

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"TorchScript model not found: {path}")
        files = {META_FILE: ""}
        with quiet_jit():
            self.module = torch.jit.load(
                str(path), map_location=device or "cpu", _extra_files=files
            )
        if not files[META_FILE]:
            raise ValueError(f"{path} was not exported by detkit (no {META_FILE} inside)")
        super().__init__(path, json.loads(files[META_FILE]))
        self.device = torch.device(device or "cpu")
        self.static_batch = None  # a traced graph takes any batch

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``[B, 3, S, S]`` float -> ``(boxes [B, N, 4] input px, objectness, class_probs)``."""
        self.check_input(images)
        return tuple(self.module(images.to(self.device).float()))


class OpenVinoModel(ExportedModel):
    """An OpenVINO folder (:func:`detkit.inference.export.export_openvino`), or its ``.xml``,
    compiled for the CPU at ``precision`` (``INFERENCE_PRECISION_HINT``): ``"f32"`` (PyTorch's
    numbers) or ``"bf16"`` (faster where the CPU has bfloat16 units, less exact)."""

    def __init__(self, path: str | Path, device: str = "cpu", precision: str = "f32") -> None:
        ov = require("openvino", "OpenVINO models", "pip install 'detkit[openvino]'")
        if device and not device.startswith("cpu"):
            raise ValueError(f"OpenVINO models run on the CPU here; got device={device!r}")
        folder, xml = openvino_files(Path(path))
        meta_file = folder / META_FILE
        if not meta_file.is_file():
            raise ValueError(f"{folder} was not exported by detkit (no {META_FILE})")
        super().__init__(folder, json.loads(meta_file.read_text(encoding="utf-8")))
        # float32 by default: OpenVINO's bfloat16 default on CPUs with bf16 units moves boxes
        self.compiled = ov.Core().compile_model(
            str(xml), "CPU", {"INFERENCE_PRECISION_HINT": precision}
        )

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``[B, 3, S, S]`` float -> ``(boxes [B, N, 4] input px, objectness, class_probs)``."""
        self.check_input(images)
        array = np.ascontiguousarray(images.detach().cpu().float().numpy())
        outputs = self.run_batch(array, lambda a: list(self.compiled(a).to_tuple()))
        return tuple(torch.from_numpy(np.asarray(o)) for o in outputs)


def openvino_files(path: Path) -> tuple[Path, Path]:
    """``(folder, the .xml in it)`` of an OpenVINO export given as its folder or its ``.xml``;
    ``FileNotFoundError``: no such folder, or no single ``.xml`` in it."""
    if path.suffix.lower() == ".xml":
        if not path.is_file():
            raise FileNotFoundError(f"OpenVINO model not found: {path}")
        return path.parent, path
    xmls = sorted(path.glob("*.xml")) if path.is_dir() else []
    if len(xmls) != 1:
        raise FileNotFoundError(
            f"OpenVINO model folder not found or ambiguous: {path} (expected one .xml in it)"
        )
    return path, xmls[0]


@contextlib.contextmanager
def quiet_jit() -> Iterator[None]:
    """Silence ``torch.jit``'s deprecation warning (TorchScript is asked for by name)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*is deprecated. Please switch to", FutureWarning)
        yield
