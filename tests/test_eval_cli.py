"""``detkit eval`` end to end on a tiny dataset: tables, JSON summary, rescorable results, PNGs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.image import imread
from test_predict import make_checkpoint

from detkit.cli import main
from detkit.data import write_coco
from detkit.eval import STAT_NAMES, coco_evaluate
from detkit.eval.plots import plot_confusion_matrix, plot_pr_curves, pr_figure
from detkit.eval.runner import error_ious
from detkit.inference.predict import Detector


def test_eval_writes_every_number_and_the_plots(tiny_shapes, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = [f"root={tiny_shapes}", "num_train=8", "num_val=4", "batch=4"]
    weights = make_checkpoint(tmp_path / "w/best.pt", overrides=data, lively=True)
    weights.chmod(0o444)  # a read-only checkpoint: eval only reads it (#22 item 5)
    before = weights.read_bytes()
    args = ["eval", "--weights", str(weights), "--name", "e", "cm_conf=0.05", "errors=0.5:0.95"]
    assert main(args) == 0
    assert weights.read_bytes() == before and sorted(p.name for p in weights.parent.iterdir()) == [
        "best.pt",
        "best.thresholds.json",
    ]
    out = capsys.readouterr().out
    assert "Average Precision" in out and "AP50_voc07" in out and "images/s" in out
    assert all(name in out for name in ("circle", "square", "triangle", "star"))
    run = tmp_path / "runs/eval/e"
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(STAT_NAMES) <= set(metrics) and metrics["num_images"] == 4
    assert metrics["conf"] == 0.001 and metrics["max_det"] == 300 and metrics["images_per_s"] > 0
    assert [row["name"] for row in metrics["per_class"]] == ["circle", "square", "triangle", "star"]
    cm = metrics["confusion_matrix"]
    assert cm["labels"][-1] == "background" and cm["score_threshold"] == 0.05
    counts = np.array(cm["counts"])
    assert counts.shape == (5, 5)
    # every non-crowd object of the split is in exactly one column cell (matched or missed)
    num_gt = sum(row["num_gt"] for row in metrics["per_class"])
    assert counts[:, :4].sum() == num_gt > 0
    # the saved results are in the dataset's terms: pycocotools rescoring gives the same numbers
    results = json.loads((run / "predictions.json").read_text())
    assert results and {r["category_id"] for r in results} <= {1, 2, 3, 4}
    rescored = coco_evaluate(tiny_shapes / "annotations/instances_val.json", results).stats
    for name in STAT_NAMES:
        assert rescored[name] == pytest.approx(metrics[name], abs=1e-9)
    errors = metrics["errors"]
    assert errors["types"] == ["cls", "loc", "both", "dupe", "bkg", "miss"]
    assert errors["mAP50"] == pytest.approx(metrics["mAP50"], abs=1e-12)
    assert errors["mAP50-95"] == pytest.approx(metrics["mAP50-95"], abs=1e-12)
    assert errors["mAP50_all_fixed"] in (1.0, None)  # None: every object missed and removed
    assert sum(errors["counts"].values()) > 0 and len(errors["per_class"]) == 4
    assert set(errors["per_size"]) <= {"small", "medium", "large"}
    assert "errors at IoU 0.5" in out and "dAP50-95" in out
    thresholds = metrics["thresholds"]
    best = thresholds["best_f1"]
    assert 0 < best["conf"] < 1 and best["f1"] > 0 and 0 <= thresholds["ece"] <= 1
    assert sum(thresholds["calibration"]["count"]) > 0
    # the last evaluation's F1-optimal threshold is recorded beside the checkpoint: conf=best
    assert Detector.from_checkpoint(weights, device="cpu", conf="best").conf == best["conf"]
    assert f"at conf {best['conf']:.3f}" in out and "recorded in" in out
    assert main(["infer", str(tiny_shapes / "images/val"), "--weights", str(weights),
                 "--conf", "best", "--name", "i"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "runs/infer/i/detections.json").read_text())
    pngs = ("pr_curves.png", "confusion_matrix.png", "errors.png", "pr_f1.png", "calibration.png")
    for png in pngs:
        pixels = imread(run / png)
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 300 and pixels.std() > 0.05


def test_the_pr_plot_draws_and_labels_coco_ap50_at_iou_at_least_half(tmp_path):
    # class "a": object A = [0, 0, 10, 10] found by a box of IoU exactly 0.5 (COCO: >= 0.5
    # matches; VOC's strict > would not), then a false positive: precision 1 up to recall 1,
    # AP50 1. Class "b": its one object found only by the second-ranked of two detections:
    # precision 1/2 at every recall, AP50 0.5. Class "c": no ground truth, no curve.
    images = [{"id": 1, "file_name": "x.jpg", "width": 100, "height": 100}]
    anns = [{"image_id": 1, "category_id": 7, "bbox": [0, 0, 10, 10]},
            {"image_id": 1, "category_id": 9, "bbox": [50, 50, 10, 10]}]  # fmt: skip
    cats = [{"id": i, "name": n} for i, n in ((7, "a"), (9, "b"), (11, "c"))]
    gt = write_coco(tmp_path / "gt.json", images, anns, cats)
    dets = [(7, [0, 0, 10, 5], 0.9), (7, [80, 0, 10, 10], 0.3),
            (9, [20, 20, 10, 10], 0.8), (9, [50, 50, 10, 10], 0.6)]  # fmt: skip
    results = [{"image_id": 1, "category_id": c, "bbox": b, "score": s} for c, b, s in dets]
    scores = coco_evaluate(gt, results)
    assert scores.stats["mAP50"] == pytest.approx(0.75)
    np.testing.assert_allclose(scores.pr50[7], np.ones(101))
    np.testing.assert_allclose(scores.pr50[9], np.full(101, 0.5))
    assert set(scores.pr50) == {7, 9}
    curves = [scores.pr50.get(c) for c in (7, 9, 11)]
    fig = pr_figure(curves, ["a", "b", "c"], scores.stats["mAP50"])
    ax = fig.axes[0]
    assert ax.get_title() == "Precision-recall at IoU >= 0.5 (COCO AP50: area under each curve)"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["a  AP50 1.000", "b  AP50 0.500", "all classes  mAP50 0.750"]
    np.testing.assert_allclose(ax.lines[-1].get_ydata(), np.full(101, 0.75))
    pr = plot_pr_curves(curves, ["a", "b", "c"], scores.stats["mAP50"], tmp_path / "pr.png")
    cm = plot_confusion_matrix(
        np.array([[1, 1, 0], [0, 0, 0], [0, 0, 0]]), ["a", "b"], tmp_path / "cm.png"
    )
    assert imread(pr).shape[2] == 4 and imread(cm).shape[2] == 4
    # with no detection at all, each class with ground truth is a flat 0
    assert {k: v.tolist() for k, v in coco_evaluate(gt, []).pr50.items()} == {
        7: [0.0] * 101,
        9: [0.0] * 101,
    }


def test_error_breakdown_setting():
    assert error_ious("0.5") == (0.5,) and error_ious("off") == ()
    assert len(error_ious("0.5:0.95")) == 10 and error_ious("0.5:0.95")[-1] == 0.95
    with pytest.raises(ValueError, match=r"eval\.errors"):
        error_ious("0.75")


def test_an_all_background_confusion_matrix_says_to_lower_cm_conf():
    from types import SimpleNamespace

    import numpy as np

    from detkit.cli.evaluate import confusion_hint

    matrix = np.zeros((3, 3), np.int64)
    matrix[2, :2] = [5, 4]  # every object missed: no detection reached cm_conf
    detections = SimpleNamespace(scores=np.array([0.2, 0.05]))
    result = SimpleNamespace(confusion=matrix, confusion_conf=0.25, detections=detections)
    assert confusion_hint(result) == (
        "note: no detection scored >= cm_conf 0.25 (the highest: 0.200), so the confusion "
        "matrix shows every object as missed; try cm_conf=0.16"
    )
    matrix[0, 0] = 1
    assert confusion_hint(result) is None


def test_evaluate_from_python_gives_the_cli_numbers(tiny_shapes, tmp_path, monkeypatch):
    import detkit

    monkeypatch.chdir(tmp_path)
    data = [f"root={tiny_shapes}", "num_train=8", "num_val=4", "batch=4"]
    weights = make_checkpoint(tmp_path / "w/best.pt", overrides=data, lively=True)
    report = detkit.evaluate(weights, out=None, store_conf=False, progress=False)
    assert report.out is None and report.files == {} and report.stored_conf is None
    assert report.result.num_images == 4 and report.meta["conf"] == 0.001
    assert main(["eval", "--weights", str(weights), "--name", "e", "--no-plots"]) == 0
    metrics = json.loads((tmp_path / "runs/eval/e/metrics.json").read_text())
    for name in STAT_NAMES:
        assert report.result.stats[name] == pytest.approx(metrics[name], abs=1e-12)
    again = detkit.evaluate(weights, ["conf=0.01"], max_det=5, progress=False)
    assert again.meta["conf"] == 0.01 and again.meta["max_det"] == 5  # overrides, both ways
    assert again.stored_conf == pytest.approx(again.result.thresholds.best["all"].conf)


def test_eval_honours_plots_false_and_a_failure_leaves_no_run_folder(
    tiny_shapes, tmp_path, monkeypatch, capsys
):
    """Issue 22: ``plots=false`` used to be ignored by eval (a training key, silently), and a
    failed eval left an empty ``runs/eval/<name>``."""
    import detkit
    from detkit.config import ConfigError

    monkeypatch.chdir(tmp_path)
    data = [f"root={tiny_shapes}", "num_train=8", "num_val=4", "batch=4"]
    weights = make_checkpoint(tmp_path / "w/best.pt", overrides=data, lively=True)
    assert main(["eval", "--weights", str(weights), "--name", "np", "plots=false"]) == 0
    written = sorted(p.name for p in (tmp_path / "runs/eval/np").rglob("*"))
    assert "metrics.json" in written and not [n for n in written if n.endswith(".png")]
    capsys.readouterr()
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["eval", "--weights", str(weights), "--name", "bad", "data.format=coco", f"root={empty}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "instances_val.json" in err
    assert not (tmp_path / "runs/eval/bad").exists()
    with pytest.raises(ConfigError, match=r"train\.epochs does nothing in eval"):
        detkit.evaluate(weights, ["epochs=3"])
