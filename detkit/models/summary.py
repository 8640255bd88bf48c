"""Layer-by-layer summary of a model from one hooked forward pass of a ``[1, 3, H, W]`` input:
output shape, parameters and FLOPs (``2 x`` the multiply-accumulates of convs and linear layers,
the papers' "GFLOPs"; memory-bound layers count 0) of every layer."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class LayerRow:
    """One row: dotted ``name``, class name ``kind``, ``output`` shape without batch (None for a
    list/tuple output or a module that never ran), ``params`` (sub-layers included when rows are
    grouped), ``flops`` per image over every call."""

    name: str
    kind: str
    output: tuple[int, ...] | None
    params: int
    flops: int


@dataclass
class ModelSummary:
    """The rows (first-run order), input ``(H, W)``, totals; ``str()`` renders the table."""

    rows: list[LayerRow]
    input_size: tuple[int, int]
    total_params: int
    trainable_params: int
    flops: int
    title: str = field(default="")

    def table(self) -> str:
        """The summary as a fixed-width text table."""
        name_w = max([len("layer"), *(len(r.name) for r in self.rows)]) + 2
        kind_w = max([len("type"), *(len(r.kind) for r in self.rows)]) + 2
        head = f"{'layer':<{name_w}}{'type':<{kind_w}}{'output (C x H x W)':>20}"
        head += f"{'params':>12}{'MFLOPs':>11}"
        lines = [self.title] if self.title else []
        lines += [head, "-" * len(head)]
        for r in self.rows:
            out = " x ".join(str(d) for d in r.output) if r.output else "-"
            lines.append(
                f"{r.name:<{name_w}}{r.kind:<{kind_w}}{out:>20}{r.params:>12,}"
                f"{r.flops / 1e6:>11.2f}"
            )
        lines.append("-" * len(head))
        h, w = self.input_size
        lines.append(
            f"total: {self.total_params:,} params ({self.trainable_params:,} trainable), "
            f"{self.flops / 1e9:.3f} GFLOPs for one 3 x {h} x {w} image"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def layer_flops(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    """FLOPs (2 x MACs) per image of one call of a conv (``C_out * H * W * C_in / groups * kh *
    kw`` MACs) or linear layer; 0 for other layers."""
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        per_output = module.in_channels // module.groups
        for k in module.kernel_size:
            per_output *= k
        return 2 * (output.numel() // output.shape[0]) * per_output
    if isinstance(module, nn.Linear):
        return 2 * (output.numel() // output.shape[0]) * module.in_features
    return 0


@dataclass
class _Record:
    order: int
    output: tuple[int, ...] | None = None
    flops: int = 0


def _trace(model: nn.Module, images: torch.Tensor) -> dict[str, _Record]:
    """Run ``model(images)`` once with hooks; one record per module that ran."""
    names = {m: n for n, m in model.named_modules()}
    records: dict[str, _Record] = {}

    def pre_hook(module: nn.Module, _inputs: tuple) -> None:
        records.setdefault(names[module], _Record(order=len(records)))

    def post_hook(module: nn.Module, inputs: tuple, output: object) -> None:
        rec = records[names[module]]
        if isinstance(output, torch.Tensor):
            if rec.output is None:
                rec.output = tuple(output.shape[1:])
            rec.flops += layer_flops(module, inputs, output)

    handles = []
    for m in model.modules():
        handles += [m.register_forward_pre_hook(pre_hook), m.register_forward_hook(post_hook)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return records


def summary(
    model: nn.Module,
    input_size: int | tuple[int, int],
    depth: int | None = None,
    device: torch.device | str | None = None,
) -> ModelSummary:
    """Output shape, parameters and FLOPs of every layer of ``model`` (run once on ``[1, 3, H,
    W]``, ``input_size`` ``S`` or ``(H, W)``, in eval mode under ``no_grad``, mode restored) for
    one image. ``depth``: None for one row per leaf layer; ``d`` merges everything below ``d``
    name levels into one row (``depth=1``: backbone, neck, heads).

    Example:
        >>> conv = nn.Sequential(nn.Conv2d(3, 10, kernel_size=5, padding=2))
        >>> s = summary(conv, 32)
        >>> s.rows[0].output, s.rows[0].params, s.total_params
        ((10, 32, 32), 760, 760)
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    params = list(model.parameters())
    if device is None:
        device = params[0].device if params else torch.device("cpu")
    records = _trace(model, torch.zeros(1, 3, h, w, device=device))
    modules = dict(model.named_modules())

    grouped: dict[str, LayerRow] = {}
    first_run: dict[str, int] = {}  # row -> execution order of its earliest module
    seen: set[int] = set()
    for name, module in modules.items():
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        is_leaf = next(module.children(), None) is None
        if not name or not (is_leaf or own):
            continue
        key = ".".join(name.split(".")[:depth]) if depth else name
        row = grouped.get(key)
        if row is None:
            # A container that is never called itself (a ModuleList) has no single output.
            rec = records.get(key)
            out = rec.output if rec is not None else None
            row = grouped[key] = LayerRow(key, type(modules[key]).__name__, out, 0, 0)
        row.params += sum(p.numel() for p in own)
        if name in records:
            row.flops += records[name].flops
            first_run[key] = min(first_run.get(key, len(records)), records[name].order)
    root_own = [p for p in model.parameters(recurse=False)]
    if root_own:
        grouped["(model)"] = LayerRow("(model)", type(model).__name__, None, 0, 0)
        grouped["(model)"].params = sum(p.numel() for p in root_own)
    rows = sorted(grouped.values(), key=lambda row: first_run.get(row.name, len(records)))
    return ModelSummary(
        rows=rows,
        input_size=(h, w),
        total_params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        flops=sum(r.flops for r in rows),
    )
