"""``detkit eval`` at scale and under faults, at the size of a test: detections streamed to disk
as they are made, the scoring bounded (a chunk of images at a time, no dict per detection), the
error breakdown skipped above ``errors_limit`` with the line that turns it back on, metrics.json
written whatever a picture does, and no crash on a file name that is not UTF-8."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_predict import make_checkpoint

import detkit
import detkit.eval.coco as coco_module
import detkit.eval.plots as plots_module
from detkit.cli import main
from detkit.eval import coco_evaluate

ROOT = Path(__file__).resolve().parents[1]
evaluate_module = importlib.import_module(
    "detkit.eval.runner"
)  # detkit.eval.runner is also a function


@pytest.fixture
def weights(tiny_shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    data = [f"root={tiny_shapes}", "num_train=8", "num_val=4", "batch=2", "workers=0"]
    return make_checkpoint(tmp_path / "w/best.pt", overrides=data, lively=True)


def test_above_errors_limit_the_breakdown_is_skipped_with_the_line_that_turns_it_on(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["eval", "--weights", str(weights), "--name", "big", "errors_limit=10"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "runs/eval/big/metrics.json").read_text())
    skipped = metrics["errors"]["skipped"]
    assert "> errors_limit=10" in skipped and "errors_limit=0" in skipped
    assert f"errors: breakdown skipped: {skipped}" in out and "errors at IoU" not in out
    assert not (tmp_path / "runs/eval/big/errors.png").exists()
    assert main(["eval", "--weights", str(weights), "--name", "all", "errors_limit=0"]) == 0
    metrics = json.loads((tmp_path / "runs/eval/all/metrics.json").read_text())
    assert (
        sum(metrics["errors"]["counts"].values()) > 0 and "errors at IoU" in capsys.readouterr().out
    )


def test_detections_reach_the_disk_as_they_are_made(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the evaluation stops once every image is predicted

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(evaluate_module, "score_predictions", killed)
        with pytest.raises(KeyboardInterrupt):
            detkit.evaluate(weights, out=out, progress=False, store_conf=False)
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert {r["image_id"] for r in lines} == {1, 2, 3, 4} and not (out / "metrics.json").exists()
    report = detkit.evaluate(weights, out=out, progress=False, store_conf=False)
    # done: predictions.json holds exactly what was streamed, and replaces the stream
    assert json.loads((out / "predictions.json").read_text()) == lines
    assert not (out / "predictions.jsonl").exists() and len(report.result.detections) == len(lines)


def test_a_plot_that_fails_costs_no_number(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise MemoryError("no room for the figure")

    monkeypatch.setattr(plots_module, "plot_confusion_matrix", broken)
    report = detkit.evaluate(weights, out=tmp_path / "run", progress=False, store_conf=False)
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["mAP50-95"] == report.result.stats["mAP50-95"]
    assert metrics["plot_errors"] == {"confusion_matrix": "MemoryError: no room for the figure"}
    assert "confusion_matrix" not in metrics["files"] and "pr_curves" in metrics["files"]
    assert (tmp_path / "run/pr_curves.png").is_file()


def test_scoring_holds_a_chunk_of_images_never_a_dict_per_detection(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    entries_at = coco_module.DetTable.entries_at

    def counted(self: object, rows: object) -> list:
        out = entries_at(self, rows)
        seen.append(len(out))
        return out

    monkeypatch.setattr(coco_module, "CHUNK_IMAGES", 1)
    monkeypatch.setattr(coco_module.DetTable, "entries_at", counted)
    report = detkit.evaluate(weights, ["errors_limit=1"], out=tmp_path / "run", progress=False,
                             store_conf=False)  # fmt: skip
    table = report.result.detections
    per_image = np.unique(table.image_ids, return_counts=True)[1]
    scoring = seen[: len(per_image)]  # then predictions.json is written from the table
    assert len(scoring) == len(per_image) and max(scoring) == per_image.max() < len(table)
    assert report.result._results is None  # no list of dicts was ever built
    gt = json.loads(Path(report.meta["annotations"]).read_text())
    whole = coco_evaluate(gt, report.result.results).stats
    assert report.result.stats == whole


@pytest.mark.slow
def test_eval_survives_a_file_name_that_is_not_utf8(tiny_shapes: Path, tmp_path: Path) -> None:
    # drawing the worst/ gallery took the image's name through a C string: a segfault, and
    # metrics.json never written
    root = tmp_path / "data"
    shutil.copytree(tiny_shapes, root)
    ann = root / "annotations/instances_val.json"
    doc = json.loads(ann.read_text())
    first = doc["images"][0]
    odd = os.fsdecode(b"\xff\xfe odd.jpg")
    os.rename(
        root / "images/val" / first["file_name"],
        os.fsencode(root / "images/val") + b"/\xff\xfe odd.jpg",
    )
    first["file_name"] = odd
    ann.write_text(json.dumps(doc))
    data = [f"root={root}", "num_train=8", "num_val=4", "batch=2", "workers=0"]
    weights = make_checkpoint(tmp_path / "w/best.pt", overrides=data, lively=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, str(ROOT / "tools/eval.py"), "--weights", str(weights), "--name", "e",
         "worst=4"],
        cwd=tmp_path, env=env, capture_output=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-2000:]
    out = tmp_path / "runs/eval/e"
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 4
    index = json.loads((out / "worst/index.json").read_text())
    assert odd in [i["image"].rsplit("/", 1)[-1] for i in index["images"]]
    for png in (out / "worst").glob("*.png"):
        png.name.encode("utf-8")  # every name written is text
