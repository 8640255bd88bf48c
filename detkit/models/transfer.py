"""Starting from trained weights: load what fits, carry class rows by class name, freeze."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

# model-section fields that fix the weights' shapes: a checkpoint must agree on all of them
ARCH_KEYS = (
    "arch", "backbone", "widths", "depths", "width_mult", "depth_mult", "neck_width",
    "head_width", "strides", "lite", "extras", "aspect_ratios",
)  # fmt: skip


@dataclass(frozen=True)
class ClassRows:
    """A layer whose output channels (dim 0 of weight and bias) are ``groups`` blocks of ``size``
    rows (one per prior), class rows at ``first .. first + C - 1``, other outputs around them."""

    groups: int
    size: int
    first: int

    def pairs(
        self, num_classes: int, src_classes: int, carry: list[tuple[int, int]]
    ) -> tuple[list[int], list[int]]:
        """Row indices ``(into this layer, from the checkpoint's)``: non-class rows by position,
        class ``d`` from checkpoint class ``s`` for each ``(s, d)`` in ``carry``.

        Example:
            >>> ClassRows(groups=1, size=5 + 2, first=5).pairs(2, 3, [(2, 0)])
            ([0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 7])
        """
        size_src = self.size - num_classes + src_classes
        pairs: list[tuple[int, int]] = []
        for g in range(self.groups):
            a, b = g * self.size, g * size_src
            for j in range(self.size):
                if j < self.first:
                    pairs.append((a + j, b + j))
                elif j >= self.first + num_classes:  # rows after the classes keep their order
                    pairs.append((a + j, b + j - num_classes + src_classes))
            pairs += [(a + self.first + d, b + self.first + s) for s, d in carry]
        dst, src = [d for d, _ in pairs], [s for _, s in pairs]
        return dst, src


@dataclass
class PartCounts:
    """Tensor counts of one top-level part of the model by outcome, and values loaded."""

    loaded: int = 0
    carried: int = 0  # per-class layers: shared rows loaded, new rows fresh
    fresh: int = 0  # kept the new model's initialisation (absent or another shape)
    values: int = 0


@dataclass
class LoadReport:
    """What :func:`transfer_weights` did (per part, per class) and what :func:`freeze` froze."""

    source: str
    parts: dict[str, PartCounts] = field(default_factory=dict)
    carried: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    frozen_params: int = 0

    def table(self) -> str:
        """The report as text: source, classes, a table per part, what was not used."""
        lines = [f"initial weights: {self.source}"] if self.parts else []
        if self.new or self.dropped or self.carried:
            lines.append(
                f"classes carried by name ({len(self.carried)}): {', '.join(self.carried) or '-'}"
                f"; new, initialised ({len(self.new)}): {', '.join(self.new) or '-'}"
                f"; not in this dataset ({len(self.dropped)}): {', '.join(self.dropped) or '-'}"
            )
        counts = [(n, c.loaded, c.carried, c.fresh, c.values) for n, c in self.parts.items()]
        rows = []
        if counts:
            counts.append(("total", *(sum(c[i] for c in counts) for i in range(1, 5))))
            rows = [("part", "loaded", "class rows carried", "re-initialised", "values loaded")]
            rows += [(n, str(a), str(b), str(c), f"{v:,}") for n, a, b, c, v in counts]
        widths = [max(len(r[i]) for r in rows) for i in range(5)] if rows else []
        for i, r in enumerate(rows):
            cells = [r[0].ljust(widths[0])] + [
                v.rjust(w) for v, w in zip(r[1:], widths[1:], strict=True)
            ]
            lines.append("  " + "  ".join(cells))
            if i == 0:
                lines.append("  " + "  ".join("-" * w for w in widths))
        if self.unused:
            more = f" and {len(self.unused) - 6} more" if len(self.unused) > 6 else ""
            lines.append(f"not used from the checkpoint: {', '.join(self.unused[:6])}{more}")
        if self.frozen:
            lines.append(f"frozen ({self.frozen_params:,} parameters): {', '.join(self.frozen)}")
        return "\n".join(lines)


def transfer_weights(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    src_names: list[str],
    dst_names: list[str],
    source: str,
) -> LoadReport:
    """Load ``state`` into ``model`` (built for ``dst_names``), in place: equal name and shape
    loads; per-class layers (``model.class_rows()``) load row by row, classes matched by name;
    the rest keeps ``model``'s initialisation."""
    layers = model.class_rows() if hasattr(model, "class_rows") else {}
    carry = [(src_names.index(n), d) for d, n in enumerate(dst_names) if n in src_names]
    report = LoadReport(
        source,
        carried=[dst_names[d] for _, d in carry],
        new=[n for n in dst_names if n not in src_names],
        dropped=[n for n in src_names if n not in dst_names],
    )
    own = model.state_dict()
    out = {}
    for key, fresh in own.items():
        module, _, _ = key.rpartition(".")
        counts = report.parts.setdefault(key.split(".", 1)[0], PartCounts())
        theirs = state.get(key)
        if module in layers and theirs is not None and list(src_names) != list(dst_names):
            rows = _class_rows(fresh, theirs, layers[module], len(dst_names), len(src_names), carry)
            if rows is not None:
                out[key], n = rows
                counts.carried, counts.values = counts.carried + 1, counts.values + n
                continue
        if theirs is not None and theirs.shape == fresh.shape:
            out[key] = theirs
            counts.loaded, counts.values = counts.loaded + 1, counts.values + theirs.numel()
        else:
            counts.fresh += 1
            if theirs is not None:
                report.unused.append(f"{key} {tuple(theirs.shape)} (here {tuple(fresh.shape)})")
    report.unused += [k for k in state if k not in own]
    model.load_state_dict(own | out)
    return report


def _class_rows(
    fresh: torch.Tensor,
    theirs: torch.Tensor,
    rows: ClassRows,
    num_classes: int,
    src_classes: int,
    carry: list[tuple[int, int]],
) -> tuple[torch.Tensor, int] | None:
    """``fresh`` with :meth:`ClassRows.pairs`'s rows from ``theirs``, and the values taken; None
    when ``theirs`` is not this layer for ``src_classes``."""
    size_src = rows.size - num_classes + src_classes
    if theirs.shape[0] != rows.groups * size_src or theirs.shape[1:] != fresh.shape[1:]:
        return None
    dst, src = rows.pairs(num_classes, src_classes, carry)
    out = fresh.clone()
    out[dst] = theirs[src].to(out.dtype)
    return out, len(dst) * fresh[0].numel()


def state_mismatches(
    own: dict[str, torch.Tensor], state: dict[str, object], where: str, shown: int = 8
) -> list[str]:
    """Why ``state`` would not load strictly into a module whose state dict is ``own``: one text per
    kind (missing, unexpected, shape mismatches ``where``), first ``shown`` names; empty if it fits.

    Example:
        >>> state_mismatches({"w": torch.zeros(2)}, {"w": torch.zeros(3), "b": 1}, "file vs model")
        ['unexpected keys (1): b', 'shape mismatches, file vs model (1): w (3,) vs (2,)']
    """
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and torch.is_tensor(v) and v.shape != own[k].shape
    ]
    return [
        f"{label} ({len(items)}): {', '.join(items[:shown])}{' ...' if len(items) > shown else ''}"
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            (f"shape mismatches, {where}", shapes),
        )
        if items
    ]


def architecture_differences(
    checkpoint: dict[str, object], model: dict[str, object]
) -> list[tuple[str, object, object]]:
    """``(field, checkpoint's value, model's value)`` for each differing :data:`ARCH_KEYS` field of
    two model sections, and ``priors per cell`` when the anchor counts differ.

    Example:
        >>> architecture_differences({"arch": "yolo_csp", "width_mult": 0.5},
        ...                          {"arch": "yolo_csp", "width_mult": 0.3125})
        [('width_mult', 0.5, 0.3125)]
    """
    out = [(k, checkpoint.get(k), model.get(k)) for k in ARCH_KEYS]
    out = [d for d in out if d[1] != d[2]]
    a, b = checkpoint.get("anchors") or [[]], model.get("anchors") or [[]]
    if len(a[0]) != len(b[0]):
        out.append(("priors per cell", len(a[0]), len(b[0])))
    return out


def freeze_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules ``freeze=N`` counts, in forward order: the backbone's stages with parameters,
    then the neck (with adapters; SSD's extras) as one."""
    units: list[tuple[str, nn.Module]] = []
    for name, child in model.backbone.named_children():
        if isinstance(child, nn.ModuleList) or name == "features":
            units += [(f"backbone.{name}.{i}", m) for i, m in enumerate(child)]
        else:
            units.append((f"backbone.{name}", child))
    units = [(n, m) for n, m in units if any(True for _ in m.parameters())]
    neck = [name for name in ("adapt", "neck", "extras") if getattr(model, name, None) is not None]
    if neck:
        units.append(("+".join(neck), nn.ModuleList(getattr(model, n) for n in neck)))
    return units


def freeze(model: nn.Module, spec: str) -> tuple[list[str], int]:
    """Set ``requires_grad=False`` on ``""`` (nothing), ``"backbone"``, ``"neck"`` (all but the
    heads) or ``"N"`` (the first N :func:`freeze_units`); returns (module names, parameters)."""
    if not spec:
        return [], 0
    units = freeze_units(model)
    if spec == "backbone":
        chosen = [(n, m) for n, m in units if n.startswith("backbone.")]
    elif spec == "neck":
        chosen = units
    elif spec.isdigit() and 0 < int(spec) <= len(units):
        chosen = units[: int(spec)]
    else:
        raise ValueError(
            f"freeze={spec!r}: use backbone, neck, or a number from 1 to {len(units)} (the "
            f"first N of: {', '.join(n for n, _ in units)})"
        )
    params = {id(p): p for _, m in chosen for p in m.parameters()}
    for p in params.values():
        p.requires_grad_(False)
    return [n for n, _ in chosen], sum(p.numel() for p in params.values())
