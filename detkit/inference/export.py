"""Exports of a model and its decode, priors baked in for one input size (:class:`DecodedModel`):
ONNX (``detkit.export``; the detkit record is JSON in its metadata under ``"detkit"``, NMS in the
graph optional: :class:`NMSModel`), TorchScript and OpenVINO (record ``detkit.json``: the
archive's extra file, or a file in the folder). ``onnx``, ``openvino`` are imported when used."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detkit.boxes import batched_nms, class_scores
from detkit.core.deploy import INFER
from detkit.core.io import atomic_path, write_json
from detkit.core.versions import require as require_package
from detkit.inference.onnx_runtime import META_KEY, require
from detkit.inference.postprocess import PRE_NMS_TOPK
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
    """Trace a model and its decode into a ``.torchscript`` archive at ``path`` (atomically)."""
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
    ov = require_package("openvino", "OpenVINO export", "pip install 'detkit[openvino]'")
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


DECODED_OUTPUTS = ("boxes", "objectness", "class_probs")
NMS_OUTPUTS = ("batch_index", "boxes", "scores", "labels")


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` (opset 10+): exported as the op, run eagerly with detkit NMS.

    ``boxes [B, N, 4]`` xyxy, ``scores [B, C, N]`` -> ``selected [K, 3]`` int64 ``(image,
    class, box)``: per image and class, boxes with score ``> score_threshold``, greedy NMS
    (IoU ``> iou_threshold`` suppresses), at most ``max_per_class`` by decreasing score.
    """

    @staticmethod
    def forward(ctx, boxes, scores, max_per_class, iou_threshold, score_threshold):
        num_classes = scores.shape[1]
        b, c, i = torch.nonzero(scores > score_threshold, as_tuple=True)
        groups = b * num_classes + c
        keep = batched_nms(boxes[b, i], scores[b, c, i], groups, float(iou_threshold))
        order = torch.argsort(groups[keep], stable=True)  # ONNX order: image, class, score
        keep, g = keep[order], groups[keep][order]
        counts = torch.bincount(g, minlength=int(groups.max()) + 1 if g.numel() else 0)
        rank = torch.arange(g.numel()) - (torch.cumsum(counts, 0) - counts)[g]
        keep = keep[rank < int(max_per_class)]
        return torch.stack([b[keep], c[keep], i[keep]], dim=1)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou_threshold, score_threshold):
        return g.op(
            "NonMaxSuppression", boxes, scores, max_per_class, iou_threshold, score_threshold
        )


class NMSModel(nn.Module):
    """:class:`DecodedModel` followed by c·p, threshold, ``PRE_NMS_TOPK``, per-class NMS and top
    ``max_det``: :func:`detkit.inference.postprocess.postprocess` in the graph (but IoU in float32).

    Outputs ``batch_index [K]`` int64, ``boxes [K, 4]`` xyxy input px, ``scores [K]`` c·p,
    ``labels [K]`` int64, sorted by image then decreasing score, at most ``max_det`` per image.
    """

    def __init__(
        self, decoded: DecodedModel, conf: float, iou: float, max_det: int, agnostic: bool = False
    ) -> None:
        super().__init__()
        self.decoded = decoded
        self.conf, self.iou, self.max_det = float(conf), float(iou), int(max_det)
        self.agnostic = bool(agnostic)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        boxes, objectness, class_probs = self.decoded(images)
        scores = class_scores(objectness, class_probs)  # [B, N, C]
        flat = scores.flatten(1)  # box-major, then class: detkit's candidate order
        top = torch.topk(flat, min(PRE_NMS_TOPK, flat.shape[1]), dim=1).indices
        flat = torch.zeros_like(flat).scatter(1, top, flat.gather(1, top))
        scores = flat.view_as(scores).transpose(1, 2).contiguous()  # [B, C, N]
        if self.agnostic:
            # One class of NMS over each box's best score equals class-agnostic NMS over every
            # (box, class) pair: a box's other classes score lower and overlap it fully.
            scores, best = scores.max(dim=1, keepdim=True)
        selected = _NonMaxSuppression.apply(
            boxes,
            scores,
            torch.tensor([self.max_det], dtype=torch.int64),  # at most max_det per class
            torch.tensor([self.iou], dtype=torch.float32),
            torch.tensor([self.conf], dtype=torch.float32),
        )
        b, c, i = selected[:, 0], selected[:, 1], selected[:, 2]
        det_scores = scores[b, c, i]
        # image ascending, then score descending: scores are in [0, 1] and images 2 apart.
        order = torch.argsort(b.double() * 2.0 - det_scores.double())
        b, c, i, det_scores = b[order], c[order], i[order], det_scores[order]
        image_ids = torch.arange(boxes.shape[0], device=b.device)
        counts = (b[:, None] == image_ids[None, :]).sum(0)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(b.shape[0], device=b.device) - starts[b]
        keep = rank < self.max_det
        b, c, i, det_scores = b[keep], c[keep], i[keep], det_scores[keep]
        if self.agnostic:
            c = best[b, 0, i]
        return b, boxes[b, i], det_scores, c


def export_onnx(
    model: nn.Module,
    path: str | Path,
    img_size: int,
    class_names: list[str],
    *,
    dynamic: bool = True,
    nms: bool = False,
    conf: float = INFER.conf,
    iou: float = INFER.iou,
    max_det: int = INFER.max_det,
    batch: int = 1,
    opset: int = 17,
    cat_ids: list[int] | None = None,
    agnostic: bool = False,
) -> Path:
    """Export a float32 CPU copy of a detkit model with its decode to ONNX at ``path`` (returned),
    written atomically and checked with ``onnx.checker``; input side ``img_size`` (a multiple of
    the largest stride), a dynamic batch axis or one fixed at ``batch``. ``nms``: c·p, the
    threshold, NMS and top-``max_det`` in the graph, with ``conf``, ``iou``, ``max_det``,
    ``agnostic`` baked in (``agnostic`` without ``nms``: ``ValueError``); ``opset`` 10 or later.
    """
    onnx = require("onnx")
    if agnostic and not nms:
        raise ValueError("agnostic NMS is part of an NMS graph: export with nms=True (--nms)")
    wrapper, example = decoded_copy(model, img_size, batch)  # eval mode, BN folded
    if nms:
        wrapper = NMSModel(wrapper, conf, iou, max_det, agnostic)
    outputs = NMS_OUTPUTS if nms else DECODED_OUTPUTS
    axes = {n: {0: "detections" if nms else "batch"} for n in outputs}
    if dynamic:
        axes = {"images": {0: "batch"}} | axes
    elif not nms:
        axes = {}
    path = Path(path)
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks in decode
            # indices into the NMS selection are never negative, which is all it warns about
            warnings.filterwarnings("ignore", "Exporting aten::index operator", UserWarning)
            torch.onnx.export(
                wrapper,
                (example,),
                tmp,
                input_names=["images"],
                output_names=list(outputs),
                dynamic_axes=axes or None,
                opset_version=opset,
                dynamo=False,
                autograd_inlining=False,  # keep _NonMaxSuppression as its ONNX op
            )
        proto = onnx.load(tmp)
        meta = {
            "format": "nms" if nms else "decoded",
            "img_size": int(img_size),
            "class_names": list(class_names),
            "cat_ids": [int(c) for c in cat_ids] if cat_ids is not None else None,
            "dynamic": bool(dynamic),
            "batch": None if dynamic else int(batch),
            "conf": float(conf) if nms else None,
            "iou": float(iou) if nms else None,
            "max_det": int(max_det) if nms else None,
            "agnostic": bool(agnostic),
            "input": "images float32 [B,3,S,S] RGB in [0,1], letterboxed top-left, pad 114",
            "boxes": "xyxy, input px",
        }
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_KEY, json.dumps(meta)
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
    return path


def export_checkpoint(
    weights: str | Path,
    path: str | Path | None = None,
    img_size: int | None = None,
    format: str = "onnx",
    **options: bool | float,
) -> Path:
    """Export a checkpoint (EMA weights when present) to ``format`` ``onnx``, ``torchscript`` or
    ``openvino`` at :func:`export_path`, ``img_size`` default the training size. ``options``:
    :func:`export_onnx`'s keywords (``iou``, ``max_det`` default to the deploy record);
    TorchScript and OpenVINO take only ``dynamic`` and ``batch``. ``ValueError``: an unknown
    format, or an option the format does not have."""
    from detkit.config.build import load_model

    if format not in EXPORT_FORMATS:
        raise ValueError(
            f"export format {format!r} unknown; choose one of {', '.join(EXPORT_FORMATS)}"
        )
    if format != "onnx" and (extra := sorted(set(options) - {"dynamic", "batch"})):
        raise ValueError(
            f"--format {format} has no {', '.join(extra)}: NMS in the graph and opset are ONNX's"
        )
    model, _, deploy = load_model(weights, device="cpu")
    path = export_path(weights, path, bool(options.get("nms")), format)
    size, common = img_size or deploy.img_size, {"cat_ids": deploy.cat_ids}
    if format == "torchscript":
        return export_torchscript(model, path, size, deploy.class_names, **common,
                                  batch=options.get("batch", 1))  # fmt: skip
    if format == "openvino":
        return export_openvino(model, path, size, deploy.class_names, **common, **options)
    options.setdefault("iou", deploy.iou)
    options.setdefault("max_det", deploy.max_det)
    return export_onnx(model, path, size, deploy.class_names, **common, **options)


RUNTIMES = {"onnx": "onnxruntime", "torchscript": "TorchScript", "openvino": "OpenVINO"}


def export_path(
    weights: str | Path, path: str | Path | None, nms: bool, format: str = "onnx"
) -> Path:
    """Where :func:`export_checkpoint` writes: ``path``; inside ``path`` when it is an existing
    folder (not an OpenVINO model folder); else beside ``weights``: ``best.onnx``
    (``best-nms.onnx`` with an NMS graph), ``best.torchscript``, ``best_openvino_model/``."""
    weights = Path(weights)
    name = weights.stem + ("-nms" if nms else "") + EXPORT_FORMATS[format]
    if path is None:
        return weights.with_name(name)
    if Path(path).is_dir() and not Path(path).name.endswith("_openvino_model"):
        return Path(path) / name  # --output an existing folder: the export goes inside it
    return Path(path)


def export_checked(
    weights: str | Path,
    path: str | Path | None = None,
    img_size: int | None = None,
    format: str = "onnx",
    check: bool = True,
    **options: bool | float,
) -> tuple[Path, str]:
    """:func:`export_checkpoint`, then :func:`compare_with_torch`: a file export takes its place
    only once the check passed (an OpenVINO folder is checked in place, removed when refused;
    ``ValueError`` says so). Returns ``(path, the check's one-line summary)`` (empty when not
    ``check``)."""
    if not check:
        return export_checkpoint(weights, path, img_size, format, **options), ""
    final = export_path(weights, path, bool(options.get("nms")), format)
    folder = format == "openvino"
    trial = final if folder else final.with_name(f".check_{final.name}")
    trial = export_checkpoint(weights, trial, img_size, format, **options)
    try:
        report = compare_with_torch(trial, weights)
    except BaseException as e:
        shutil.rmtree(trial, ignore_errors=True) if folder else trial.unlink(missing_ok=True)
        if isinstance(e, ValueError):
            raise ValueError(f"{e}; the export was removed ({final} not written)") from None
        raise
    if not folder:
        os.replace(trial, final)
    return final, report


def compare_with_torch(
    path: str | Path, weights: str | Path, atol: float = 1e-4, seed: int = 0
) -> str:
    """Run an export and its checkpoint on a grey image and random ones: a decoded graph must
    match within ``atol``, an NMS graph give PyTorch's labels and boxes within ``1e-3`` px
    (``ValueError`` otherwise). Returns a one-line summary."""
    from detkit.config.build import load_model
    from detkit.inference.postprocess import postprocess
    from detkit.inference.predict import export_format, open_export

    onnx_model = open_export(path)  # or a TorchScript / OpenVINO model: the same interface
    runtime = RUNTIMES[export_format(path) or "onnx"]
    model, _, _ = load_model(weights, device="cpu")
    s, meta = onnx_model.img_size, onnx_model.meta
    n = onnx_model.static_batch or 3
    images = torch.rand(n, 3, s, s, generator=torch.Generator().manual_seed(seed))
    images[0] = 114 / 255
    with torch.inference_mode():
        decoded = model.decode(model(images), model.priors(s, s, device=images.device))
    if not onnx_model.nms_in_graph:
        diffs = [
            float((a - b).abs().max()) for a, b in zip(decoded, onnx_model(images), strict=True)
        ]
        if not all(math.isfinite(d) for d in diffs):
            raise ValueError(f"non-finite outputs (max |diff| {diffs}): refusing the export check")
        if max(diffs) > atol:
            raise ValueError(f"{runtime} differs from PyTorch by {max(diffs):.2e} > {atol:g}")
        return f"{runtime} == PyTorch on {n} images: max |diff| {max(diffs):.1e} (boxes, c, p)"
    expected = postprocess(*decoded, conf=meta["conf"], iou=meta["iou"], max_det=meta["max_det"])
    got = onnx_model.detections(images)
    counts = [len(e[1]) for e in expected]
    for (eb, _, el), (gb, _, gl) in zip(expected, got, strict=True):
        same = len(el) == len(gl) and torch.equal(el, gl)
        if not same or (len(eb) and float((eb - gb).abs().max()) > 1e-3):
            raise ValueError(f"NMS graph detections differ from PyTorch's (counts {counts})")
    return f"onnxruntime NMS graph == PyTorch post-processing on {n} images (detections {counts})"
