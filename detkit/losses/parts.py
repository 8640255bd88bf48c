"""The parts of a loss (``box``, ``obj``, ``cls``) kept on the device until someone reads them.

A criterion returns its parts as :class:`LossParts`: a read-only mapping of floats, as the
criterion contract says, whose numbers stay in a detached ``[3]`` tensor on the loss's device
until the first read. The trainer never reads them per batch: it stacks the tensors of an
update's batches and reads them, with the non-finite check, in one host sync per update
(on CUDA a ``.tolist()`` per batch waited for the GPU every batch).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

PART_NAMES = ("box", "obj", "cls")


class LossParts(Mapping[str, float]):
    """``{"box", "obj", "cls"}`` -> float, backed by a detached tensor.

    Args:
        values: ``[3]`` the parts in :data:`PART_NAMES` order (any device; detached here).

    Example:
        >>> parts = LossParts(torch.tensor([0.5, 1.0, 2.0]))
        >>> parts["obj"], dict(parts)
        (1.0, {'box': 0.5, 'obj': 1.0, 'cls': 2.0})
    """

    def __init__(self, values: torch.Tensor) -> None:
        self.tensor = values.detach()
        self._floats: dict[str, float] | None = None

    def _host(self) -> dict[str, float]:
        if self._floats is None:  # the one host sync, at the first read
            self._floats = dict(zip(PART_NAMES, self.tensor.tolist(), strict=True))
        return self._floats

    def __getitem__(self, name: str) -> float:
        return self._host()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(PART_NAMES)

    def __len__(self) -> int:
        return len(PART_NAMES)

    def __repr__(self) -> str:
        return f"LossParts({dict(self)})"


def parts_tensor(parts: Mapping[str, float], device: torch.device) -> torch.Tensor:
    """A criterion's parts as a ``[3]`` float tensor on ``device`` in :data:`PART_NAMES` order:
    the device tensor of :class:`LossParts` as it is (no sync), any other mapping copied."""
    if isinstance(parts, LossParts):
        return parts.tensor
    return torch.tensor([float(parts[k]) for k in PART_NAMES], device=device)
