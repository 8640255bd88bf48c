"""The checkpoint's ``deploy`` record and the defaults several layers share (plain data)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Thresholds:
    """Post-processing settings: ``conf`` on c·p, the NMS ``iou``, ``max_det`` per image."""

    conf: float
    iou: float
    max_det: int


INFER = Thresholds(conf=0.25, iou=0.6, max_det=300)
"""What ``Detector``, ``detkit infer``, ``explain`` and an NMS export use unless told otherwise."""

EVAL = Thresholds(conf=0.001, iou=0.6, max_det=300)
"""What COCO mAP is measured at (``eval.conf``): every detection that could count."""

CM_CONF, CM_IOU = 0.25, 0.45
"""The confusion matrix's score threshold and matching IoU (``eval.cm_conf/cm_iou``)."""

MAX_PIXELS = 89_478_485
"""Images larger (width x height) are refused before decoding: Pillow's decompression-bomb limit."""

LETTERBOX = "top-left, pad 114"
""":func:`detkit.data.letterbox_image`: scale to fit, image top-left, grey 114 right and bottom."""


@dataclass(frozen=True)
class Deploy:
    """The checkpoint's ``deploy`` record: ``model`` (``ModelConfig`` as a dict,
    ``backbone_weights`` cleared), the square ``img_size`` trained at, ``cat_ids`` (label -> the
    dataset's category id; None: ``label + 1``) and the post-processing defaults."""

    model: dict[str, Any]
    class_names: list[str]
    img_size: int
    cat_ids: list[int] | None = None
    conf: float = INFER.conf
    iou: float = INFER.iou
    max_det: int = INFER.max_det
    letterbox: str = LETTERBOX

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the checkpoint (``torch.load(weights_only=True)`` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Deploy:
        """The record a checkpoint stored (keys a newer detkit added are ignored).

        Example:
            >>> Deploy.from_dict({"model": {}, "class_names": ["a"], "img_size": 64}).iou
            0.6
        """
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def thresholds(self) -> Thresholds:
        return Thresholds(self.conf, self.iou, self.max_det)
