"""TorchScript and OpenVINO exports of :class:`DecodedModel` (as ONNX's decoded graph), each with
its detkit record ``detkit.json`` (the archive's extra file, or a file in the OpenVINO folder)."""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detkit.core.io import atomic_path, write_json
from detkit.core.versions import require
from detkit.inference.runtimes import META_FILE, quiet_jit
from detkit.models.fuse import fuse_conv_bn


class DecodedModel(nn.Module):
    """A detkit model, its decode and its priors for ``S = img_size``: ``images [B, 3, S, S]``
    float RGB in [0, 1], letterboxed -> ``boxes [B, N, 4]`` xyxy input px, ``objectness [B, N]``,
    ``class_probs [B, N, C]``."""

    def __init__(self, model: nn.Module, img_size: int) -> None:
        super().__init__()
        self.model = model
        device = next(model.parameters()).device
        self.register_buffer("priors", model.priors(img_size, img_size, device=device))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.decode(self.model(images), self.priors)


EXPORT_FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript", "openvino": "_openvino_model"}
"""``detkit export --format`` -> the suffix of what it writes beside the weights."""


def decoded_record(
    fmt: str, img_size: int, class_names: list[str], cat_ids: list[int] | None,
    batch: int | None,
) -> dict[str, Any]:  # fmt: skip
    """The detkit record of a decoded-graph export (``batch`` None: any batch)."""
    return {
        "format": "decoded",
        "exported_as": fmt,
        "img_size": int(img_size),
        "class_names": list(class_names),
        "cat_ids": [int(c) for c in cat_ids] if cat_ids is not None else None,
        "batch": batch,
        "input": "images float32 [B,3,S,S] RGB in [0,1], letterboxed top-left, pad 114",
        "boxes": "xyxy, input px",
    }


def decoded_copy(model: nn.Module, img_size: int, batch: int) -> tuple[nn.Module, torch.Tensor]:
    """A float32 CPU copy with BN folded, wrapped with its decode, and a seeded example batch."""
    wrapper = DecodedModel(fuse_conv_bn(copy.deepcopy(model).cpu().float()), img_size).eval()
    example = torch.rand(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    return wrapper, example


def export_torchscript(
    model: nn.Module, path: str | Path, img_size: int, class_names: list[str], *,
    cat_ids: list[int] | None = None, batch: int = 1,
) -> Path:  # fmt: skip
    """Trace a detkit model and its decode into a ``.torchscript`` archive at ``path``
    (atomically; any batch size); returns ``path``."""
    wrapper, example = decoded_copy(model, img_size, batch)
    with quiet_jit(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks in decode
        traced = torch.jit.trace(wrapper, example, check_trace=False)
    record = decoded_record("torchscript", img_size, class_names, cat_ids, None)
    path = Path(path)
    with atomic_path(path) as tmp, quiet_jit():
        torch.jit.save(traced, str(tmp), _extra_files={META_FILE: json.dumps(record)})
    return path


def export_openvino(
    model: nn.Module, folder: str | Path, img_size: int, class_names: list[str], *,
    cat_ids: list[int] | None = None, dynamic: bool = True, batch: int = 1,
) -> Path:  # fmt: skip
    """Convert a detkit model and its decode to an OpenVINO model ``folder`` (returned):
    ``<name>_openvino_model`` gets ``<name>.xml``, ``<name>.bin``, ``detkit.json``, written beside
    and renamed into place, so a failed export leaves the old one. ``dynamic``: any batch size,
    else fixed at ``batch``. ``MissingPackage`` without openvino."""
    ov = require("openvino", "OpenVINO export", "pip install 'detkit[openvino]'")
    wrapper, example = decoded_copy(model, img_size, batch)
    shape = [-1 if dynamic else batch, 3, img_size, img_size]
    with quiet_jit(), torch.no_grad():  # the converter traces the module
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        converted = ov.convert_model(wrapper, example_input=example, input=[shape])
    folder = Path(folder)
    name = folder.name.removesuffix("_openvino_model") or "model"
    record = decoded_record("openvino", img_size, class_names, cat_ids, None if dynamic else batch)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        ov.save_model(converted, str(tmp / f"{name}.xml"), compress_to_fp16=False)
        write_json(tmp / META_FILE, record, indent=1)
        old = folder.with_name(f".{folder.name}.old")  # the old export goes only afterwards
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
