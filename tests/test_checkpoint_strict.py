"""Strict checkpoint loading: NaN/inf weights, key and shape mismatches, a truncated last.pt."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_predict import make_checkpoint

from detkit.cli import main
from detkit.config.build import load_model
from detkit.inference.predict import Detector
from detkit.models.checkpoint import CheckpointError, load_checkpoint, load_weights


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")


def _edited(good: Path, out: Path, edit) -> Path:
    ckpt = torch.load(good, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, out)
    return out


def _poison(ckpt: dict) -> None:
    name = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][name] = ckpt["model"][name].clone().fill_(float("nan"))
    if ckpt.get("ema"):
        ckpt["ema"][name] = ckpt["model"][name]


def test_nan_weights_are_refused_with_their_names(good: Path, tmp_path: Path) -> None:
    bad = _edited(good, tmp_path / "nan.pt", _poison)
    name = next(
        k for k, v in torch.load(good, weights_only=True)["model"].items() if v.is_floating_point()
    )
    with pytest.raises(CheckpointError, match=rf"NaN/inf weights, refused: model\.{name}"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="NaN/inf"):
        Detector.from_checkpoint(bad)


@pytest.mark.parametrize("verb", ["infer", "export", "evaluate"])
def test_every_verb_refuses_nan_weights_in_one_line(
    good: Path, tmp_path: Path, capsys, verb: str
) -> None:
    bad = _edited(good, tmp_path / "nan.pt", _poison)
    image = tmp_path / "x.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(image), np.full((32, 32, 3), 128, np.uint8))
    args = {
        "infer": ["infer", str(image), "--weights", str(bad), "--project", str(tmp_path / "runs")],
        "export": ["export", "--weights", str(bad)],
        "evaluate": ["eval", "--weights", str(bad)],
    }[verb]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "NaN/inf weights, refused" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_key_and_shape_mismatches_are_listed(good: Path, tmp_path: Path) -> None:
    state = torch.load(good, weights_only=True)["model"]
    keys = [k for k, v in state.items() if v.is_floating_point() and v.ndim == 4]
    drop, reshape = keys[0], keys[1]

    def edit(ckpt: dict) -> None:
        for sd in {id(ckpt[p]): ckpt[p] for p in ("model", "ema") if ckpt.get(p)}.values():
            del sd[drop]
            sd[reshape] = torch.zeros(1, *sd[reshape].shape[1:])
            sd["extra.weight"] = torch.zeros(2)

    bad = _edited(good, tmp_path / "mismatch.pt", edit)
    with pytest.raises(CheckpointError) as e:
        load_model(bad)
    message = str(e.value)
    assert f"missing keys (1): {drop}" in message
    assert "unexpected keys (1): extra.weight" in message
    assert f"{reshape} (1, " in message and "shape mismatches" in message


def test_load_weights_accepts_an_exact_fit() -> None:
    a, b = torch.nn.Linear(2, 3), torch.nn.Linear(2, 3)
    load_weights(b, a.state_dict(), "a")
    assert torch.equal(a.weight, b.weight)
    with pytest.raises(
        CheckpointError,
        match=r"shape mismatches, checkpoint vs model \(2\): weight \(3, 2\) vs \(4, 2\)",
    ):
        load_weights(torch.nn.Linear(2, 4), a.state_dict(), "a")


def test_truncated_last_points_to_best(good: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(good.read_bytes())
    data = good.read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"best\.pt \(saved at another time\) may be intact"):
        load_checkpoint(run / "last.pt")
    assert load_checkpoint(run / "best.pt")["class_names"]
