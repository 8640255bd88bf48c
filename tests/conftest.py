"""Shared fixtures: tiny datasets written into temporary folders (CPU only, no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from detkit.data.synthetic import generate_shapes


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shapes dataset with 8 train and 4 val images (seed 0); treat it as read-only."""
    return generate_shapes(tmp_path_factory.mktemp("shapes") / "tiny", num_train=8, num_val=4)
