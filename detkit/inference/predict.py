"""``Detector``: a checkpoint or an export in, :class:`Detections` in original px out, through
:func:`detkit.inference.postprocess.detect` (the path evaluation measures)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import torch

from detkit.core.deploy import INFER
from detkit.data import LetterboxInfo, images_to_float, letterbox_info
from detkit.data.transforms import PAD_VALUE, letterbox_resize
from detkit.inference.detections import Detections
from detkit.inference.inputs import Item, failure, read_source, to_rgb
from detkit.inference.postprocess import detect
from detkit.models.checkpoint import best_conf
from detkit.models.fuse import fuse_conv_bn

if TYPE_CHECKING:
    from detkit.core.protocols import DetectionModel
    from detkit.data.types import ImageLike
    from detkit.inference.runtimes import ExportedModel

# a ``from_checkpoint`` / ``from_export`` override: ``conf`` (or ``"best"``), ``iou``, ``max_det``,
# ``img_size``, ``cat_ids``, ``agnostic``; None keeps the default
Setting: TypeAlias = "float | str | list[int] | None"


class Detector:
    """A trained detector behind one call: ``Detector.from_checkpoint(path).predict(image)``.

    ``model``: a :class:`detkit.core.protocols.DetectionModel` or an exported model
    (:func:`open_export`); ``img_size``: the square letterboxed input; ``conf``, ``iou``,
    ``max_det``: :func:`detkit.inference.postprocess.postprocess`'s defaults; ``cat_ids``: label
    -> dataset category id; ``agnostic``: class-agnostic NMS; ``amp``: autocast dtype of the
    forward (None: float32; decode and NMS stay float32).
    """

    def __init__(
        self,
        model: DetectionModel | ExportedModel,
        class_names: list[str],
        img_size: int,
        conf: float = INFER.conf,
        iou: float = INFER.iou,
        max_det: int = INFER.max_det,
        cat_ids: list[int] | None = None,
        agnostic: bool = False,
        amp: torch.dtype | None = None,
    ) -> None:
        # a copy with batch norm folded into the convs, in channels-last (faster on the CPU)
        if isinstance(model, torch.nn.Module):
            model = fuse_conv_bn(model).to(memory_format=torch.channels_last)
            self.device = next(model.parameters()).device
        else:
            self.device = model.device
        self.model = model
        self.class_names = list(class_names)
        self.img_size = img_size
        self.conf, self.iou, self.max_det = conf, iou, max_det
        self.cat_ids = cat_ids
        self.agnostic = agnostic
        self.amp = amp
        self._priors: dict[tuple[int, int], torch.Tensor] = {}

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str = "", threads: int = 0, **overrides: Setting
    ) -> Detector:
        """Load a checkpoint (EMA weights when present) or an export (``.onnx``,
        ``.torchscript``, ``*_openvino_model``: :meth:`from_export`) on ``device`` (``""``: CUDA
        when present, see :func:`export_device`). ``threads``: an ``.onnx``'s intra-op threads
        (0: onnxruntime's default). ``overrides`` (:data:`Setting`; None keeps the deploy
        record); ``conf="best"``: the F1-optimal threshold recorded in ``best.thresholds.json``
        (``ValueError`` when absent)."""
        if (fmt := export_format(path)) is not None:
            device = device or export_device(fmt)
            return cls.from_export(path, device=device, threads=threads, **overrides)
        _check_threads(threads, path)
        from detkit.config.build import load_model

        model, ckpt, deploy = load_model(path, device)
        if overrides.get("conf") == "best":
            overrides = {**overrides, "conf": best_conf(ckpt, path)}
        keys = ("img_size", "conf", "iou", "max_det", "cat_ids")
        kwargs: dict[str, Any] = {k: getattr(deploy, k) for k in keys}
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return cls(model, deploy.class_names, **kwargs)

    @classmethod
    def from_export(
        cls, path: str | Path, device: str = "cpu", threads: int = 0, **overrides: Setting
    ) -> Detector:
        """Run an export (:func:`open_export`) at its own input size; ``ValueError``:
        ``conf="best"``, another ``img_size``, or settings an NMS graph cannot honour."""
        if overrides.get("conf") == "best":
            raise ValueError(
                f"conf=best reads a .pt checkpoint's evaluation; {path} is an export: give a number"
            )
        model = open_export(path, device=device, threads=threads)
        meta = model.meta
        limits = meta if model.nms_in_graph else vars(INFER)  # an NMS graph's own thresholds
        kwargs: dict[str, Any] = {k: limits[k] for k in ("conf", "iou", "max_det")}
        kwargs |= {"img_size": model.img_size, "cat_ids": meta.get("cat_ids")}
        kwargs["agnostic"] = bool(meta.get("agnostic", False))
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        if kwargs["img_size"] != model.img_size:
            raise ValueError(f"{path} was exported for img_size {model.img_size}")
        det = cls(model, model.class_names, **kwargs)
        if model.nms_in_graph:
            det._check_graph_limits(det.conf)
        return det

    from_onnx = from_export

    def _check_graph_limits(self, conf: float) -> None:
        """Refuse settings an NMS graph cannot honour (it has already applied its own)."""
        meta = self.model.meta
        agnostic = bool(meta.get("agnostic", False))
        if (
            conf < meta["conf"]
            or self.iou != meta["iou"]
            or self.max_det > meta["max_det"]
            or self.agnostic != agnostic
        ):
            raise ValueError(
                f"{self.model.path} has NMS in the graph with conf {meta['conf']}, iou "
                f"{meta['iou']}, max_det {meta['max_det']}, agnostic {agnostic}; got conf {conf}, "
                f"iou {self.iou}, max_det {self.max_det}, agnostic {self.agnostic}. Export again "
                "with other values, or without --nms"
            )

    def priors(self, height: int, width: int) -> torch.Tensor:
        """Model priors for an input size, cached per size."""
        if (height, width) not in self._priors:
            self._priors[height, width] = self.model.priors(height, width, device=self.device)
        return self._priors[height, width]

    @torch.inference_mode()
    def detect_batch(
        self,
        images: torch.Tensor,
        infos: Sequence[LetterboxInfo],
        conf: float | None = None,
        classes: Sequence[int | str] | None = None,
        times: dict[str, float] | None = None,
    ) -> list[Detections]:
        """Detect on a preprocessed batch: ``images [B, 3, S, S]`` uint8 (or float in [0, 1])
        letterboxed, ``infos`` each image's letterbox; one :class:`Detections` per image, boxes
        xyxy orig px. ``classes``: keep only these, by label or name (before NMS and
        ``max_det``); ``times`` receives the seconds of ``preprocess``, ``inference``,
        ``postprocess``."""
        start = time.perf_counter()
        images = images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:
            images = images_to_float(images)
        threshold = self.conf if conf is None else conf
        if getattr(self.model, "nms_in_graph", False):
            self._check_graph_limits(threshold)
        size = (images.shape[2], images.shape[3])
        priors = self._priors[size] if size in self._priors else self.priors(*size)
        labels = None if classes is None else resolve_classes(classes, self.class_names)
        steps: dict[str, float] = {}  # the forward's and the rest's seconds, when timing
        results = detect(
            self.model, images, priors, threshold, self.iou, self.max_det, labels, self.agnostic,
            infos, None if times is None else steps, self.amp,
        )  # fmt: skip
        if times is not None:  # detect synced the device at its end
            times |= {"preprocess": time.perf_counter() - start - sum(steps.values()), **steps}
        return [
            Detections(r.boxes, r.scores, r.labels, self.class_names, (info.orig_h, info.orig_w),
                       self.cat_ids)
            for r, info in zip(results, infos, strict=True)
        ]  # fmt: skip

    def predict(
        self,
        images: ImageLike | Sequence[ImageLike],
        rgb: bool = False,
        conf: float | None = None,
        classes: Sequence[int | str] | None = None,
    ) -> Detections | list[Detections]:
        """Detect objects in a path, a numpy array (BGR as OpenCV reads it, or RGB with
        ``rgb=True``), a PIL image, or a list of these (one batch; sizes may differ).
        ``classes``: keep only these, by label (``0``) or name (``"circle"``).

        Returns:
            :class:`Detections` in original-image px, holding the RGB image; a list for a list.
        """
        start = time.perf_counter()
        single = not isinstance(images, list | tuple)
        items = [images] if single else list(images)
        if not items:
            return []
        originals = [to_rgb(im, rgb) for im in items]
        s = self.img_size
        batch = np.full((len(items), s, s, 3), PAD_VALUE, np.uint8)  # grey pad bottom/right
        infos = []
        for image, padded in zip(originals, batch, strict=True):
            resized = letterbox_resize(image, s)
            padded[: resized.shape[0], : resized.shape[1]] = resized
            infos.append(letterbox_info(image.shape[0], image.shape[1], s))
        host = time.perf_counter() - start  # decode and letterbox, on the host
        times: dict[str, float] = {}
        dets = self.detect_batch(
            torch.from_numpy(batch).permute(0, 3, 1, 2), infos, conf, classes, times
        )
        times["preprocess"] += host
        speed = {k: 1000 * v / len(items) for k, v in times.items()}
        for d, image in zip(dets, originals, strict=True):
            d.image, d.speed = image, dict(speed)
        return dets[0] if single else dets

    __call__ = predict  # ``detector(images, ...)``, as Ultralytics' ``model(source)``

    def predict_source(
        self,
        source: str | Path | list,
        conf: float | None = None,
        classes: Sequence[int | str] | None = None,
        max_pixels: int | None = None,
        batch: int = 1,
    ) -> Iterator[Item]:
        """Detect on every image and video frame of a source (a file, a folder, a glob, a ``.txt``
        list or a list of paths: :func:`detkit.inference.inputs.list_sources`), ``batch`` per
        forward (a failing batch is rerun item by item, so one bad input fails alone).

        Yields:
            One :class:`detkit.inference.inputs.Item` per image or frame, in order, with
            ``detections`` (:class:`Detections`, original px) or ``error`` set.

        Raises:
            FileNotFoundError: the source names nothing at all. ValueError: ``batch < 1`` or an
            unknown class.
        """
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        limit = {} if max_pixels is None else {"max_pixels": max_pixels}
        labels = resolve_classes(classes, self.class_names)  # fails here, not later
        return self._predict_items(read_source(source, **limit), conf, labels, batch)

    def _predict_items(
        self, items: Iterator[Item], conf: float | None, classes: list[int] | None, batch: int
    ) -> Iterator[Item]:
        """The items in order, readable ones detected in groups of ``batch``."""
        group: list[Item] = []
        for item in items:
            if item.image is not None:
                group.append(item)
                if len(group) < batch:
                    continue
            yield from self._predict_group(group, conf, classes)
            group = []
            if item.image is None:
                yield item
        yield from self._predict_group(group, conf, classes)

    def _predict_group(
        self, group: list[Item], conf: float | None, classes: list[int] | None
    ) -> Iterator[Item]:
        try:
            dets = (
                self.predict([item.image for item in group], True, conf, classes) if group else []
            )
        except Exception as e:  # e.g. MemoryError on one huge frame: the stream goes on
            if len(group) > 1:  # run them one at a time: only the bad one fails
                for item in group:
                    yield from self._predict_group([item], conf, classes)
                return
            group[0].error, dets = failure(e, group[0].path), []
        for item, det in zip(group, dets, strict=False):
            item.detections = det
        yield from group

    def explain(self, image: ImageLike, rgb: bool = False, conf: float | None = None) -> Any:
        """:func:`detkit.inference.explain.explain`: each detection's cell / prior and NMS trace."""
        from detkit.inference.explain import explain

        return explain(self, image, rgb=rgb, conf=conf)

    def __repr__(self) -> str:
        kind = type(self.model).__name__
        return (
            f"Detector({kind}, {len(self.class_names)} classes, img_size={self.img_size}, "
            f"conf={self.conf}, iou={self.iou}, max_det={self.max_det}, device={self.device})"
        )


EXPORT_SUFFIXES = {".onnx": "onnx", ".torchscript": "torchscript", ".xml": "openvino"}


def export_format(path: str | Path) -> str | None:
    """The export format a path names, or None for a checkpoint.

    Example:
        >>> export_format("best.onnx"), export_format("best_openvino_model"), export_format("best.pt")
        ('onnx', 'openvino', None)
    """
    path = Path(path)
    if path.name.endswith("_openvino_model"):
        return "openvino"
    return EXPORT_SUFFIXES.get(path.suffix.lower())


def export_device(fmt: str) -> str:
    """Default device of an export: CUDA when present (and onnxruntime's provider), OpenVINO CPU."""
    if fmt == "onnx":
        from detkit.inference.onnx_runtime import require

        cuda = "CUDAExecutionProvider" in require("onnxruntime").get_available_providers()
        return "cuda" if cuda and torch.cuda.is_available() else "cpu"
    return "cuda" if fmt == "torchscript" and torch.cuda.is_available() else "cpu"


def open_export(path: str | Path, device: str = "cpu", threads: int = 0) -> Any:
    """The runtime of an export: ``model(images)`` -> ``(boxes xyxy input px, objectness,
    class_probs)``; an ONNX graph with NMS answers ``model.detections(images)``. ``threads``: an
    ``.onnx``'s intra-op threads (0: onnxruntime's default).

    Raises:
        ValueError: ``path`` names no export format, or ``threads`` for another format.
        MissingPackage: its runtime is missing.
    """
    from detkit.inference.onnx_runtime import OnnxModel
    from detkit.inference.runtimes import OpenVinoModel, TorchScriptModel

    runtimes = {"onnx": OnnxModel, "torchscript": TorchScriptModel, "openvino": OpenVinoModel}
    fmt = export_format(path)
    if fmt is None:
        raise ValueError(f"{path} is not an export (.onnx, .torchscript, *_openvino_model)")
    if fmt == "onnx":
        return OnnxModel(path, device=device, threads=threads)
    _check_threads(threads, path)
    return runtimes[fmt](path, device=device)


def _check_threads(threads: int, path: str | Path) -> None:
    """``threads`` is ONNX Runtime's, per session; PyTorch's (and so TorchScript's) are the
    process's, which a model must not change behind its caller's back."""
    if threads:
        raise ValueError(
            f"threads={threads} sets an .onnx export's ONNX Runtime threads; {Path(path).name} is "
            "not one (PyTorch and TorchScript use torch.set_num_threads, for the whole process)"
        )


def resolve_classes(classes: Sequence[int | str] | None, names: list[str]) -> list[int] | None:
    """Class names or labels (ints or digit strings) -> labels; a name wins over a digit string.

    Raises:
        ValueError: an unknown name or a label out of range, listing the classes.

    Example:
        >>> resolve_classes(["circle", 0, "2"], ["square", "circle", "triangle"])
        [1, 0, 2]
    """
    if classes is None:
        return None
    out = []
    for c in classes:
        if isinstance(c, str) and c in names:
            out.append(names.index(c))
        elif isinstance(c, int | np.integer) or (isinstance(c, str) and c.isdigit()):
            if not 0 <= int(c) < len(names):
                raise ValueError(
                    f"class index {int(c)} out of range 0..{len(names) - 1}; classes: {names}"
                )
            out.append(int(c))
        else:
            raise ValueError(f"class {c!r} is neither a class name nor an index; classes: {names}")
    return out
