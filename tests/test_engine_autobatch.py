"""``batch=-1``: the batch from a line fitted to measured peak memory (the CUDA measurement is
replaced by numbers here: no GPU in the tests), a fixed batch on a CPU."""

from __future__ import annotations

import torch

from detkit.engine import autobatch

MiB = 2**20


def _measured(monkeypatch, sizes, peaks, free=1000 * MiB, allocated=50 * MiB):
    monkeypatch.setattr(autobatch, "_profile", lambda *args: (sizes, peaks))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free, 4 * free))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: allocated)


def test_the_batch_keeps_the_fitted_peak_under_60_percent_of_free_memory(monkeypatch):
    model = torch.nn.Conv2d(3, 4, 3)  # 448 bytes of parameters: the optimiser moments are 896
    sizes = [1, 2, 4, 8]
    _measured(monkeypatch, sizes, [100 * MiB + 10 * MiB * n for n in sizes])
    said = []
    batch = autobatch.auto_batch(model, 320, torch.device("cuda"), say=said.append)
    # budget 50 + 600 MiB - 896 B; (650 MiB - 896 B - 100 MiB) / 10 MiB = 54.99 -> 54 -> 48
    assert batch == 48
    assert said == ["batch=-1: 48 (peak 100 MiB + 10.0 MiB per image at 320 px; 60% of 1.0 GiB "
                    "free on cuda)"]  # fmt: skip
    _measured(monkeypatch, sizes, [100 * MiB + 200 * MiB * n for n in sizes])
    assert autobatch.auto_batch(model, 320, torch.device("cuda"), say=said.append) == 2
    _measured(monkeypatch, [1], [100 * MiB])  # not even two images fit
    assert autobatch.auto_batch(model, 320, torch.device("cuda"), say=said.append) == 1


def test_a_cpu_gets_a_fixed_batch(monkeypatch):
    monkeypatch.setattr(autobatch, "_profile", None)  # nothing is measured
    said = []
    assert (
        autobatch.auto_batch(torch.nn.Conv2d(3, 4, 3), 320, torch.device("cpu"), say=said.append)
        == 16
    )
    assert "a fixed batch on cpu" in said[0]
