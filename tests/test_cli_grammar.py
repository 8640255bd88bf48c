"""One grammar on every verb: key=value pairs become the verb's flags, with did-you-mean."""

from __future__ import annotations

import pytest

from detkit.cli import build_parser, main
from detkit.cli.grammar import pairs_to_flags
from detkit.config import ConfigError


@pytest.fixture(scope="module")
def parser():
    return build_parser()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["infer", "img.jpg", "conf=0.5", "device=cpu", "imgsz=320"],
            ["infer", "img.jpg", "--conf", "0.5", "--device", "cpu", "--img-size", "320"],
        ),
        (
            ["infer", "source=img.jpg", "model=best.pt", "save_txt=true", "save_conf=false"],
            ["infer", "img.jpg", "--weights", "best.pt", "--save-txt"],
        ),
        (
            ["infer", "x.jpg", "classes=[circle,2]", "agnostic_nms=True", "max_det=5"],
            ["infer", "x.jpg", "--classes", "circle", "2", "--agnostic", "--max-det", "5"],
        ),
        (
            ["export", "weights=w.pt", "imgsz=320", "nms=true", "dynamic=yes"],
            ["export", "--weights", "w.pt", "--img-size", "320", "--nms", "--dynamic"],
        ),
        # eval: flags where they exist, config overrides otherwise
        (
            ["eval", "weights=w.pt", "conf=0.01", "split=val"],
            ["eval", "--weights", "w.pt", "conf=0.01", "split=val"],
        ),
        # train: config overrides stay overrides; --flags and values after them are untouched
        (
            ["train", "epochs=3", "device=cpu", "--resume", "a=b.pt"],
            ["train", "epochs=3", "--device", "cpu", "--resume", "a=b.pt"],
        ),
        (["convert", "a.json", "out", "from=coco", "to=yolo"], None),
    ],
)
def test_pairs_become_flags(parser, argv, expected):
    out = pairs_to_flags(parser, argv)
    if expected is None:
        expected = ["convert", "a.json", "out", "--from", "coco", "--to", "yolo"]
    assert out == expected
    parser.parse_known_args(out)  # argparse accepts the result


def test_unknown_keys_of_a_verb_without_overrides_say_did_you_mean(parser, capsys):
    with pytest.raises(
        ConfigError, match="infer: unknown key 'confidence'; did you mean 'conf'"
    ) as e:
        pairs_to_flags(parser, ["infer", "x.jpg", "confidence=0.5"])
    assert "keys:" not in str(e.value)  # the near names, not the verb's whole list (#22)
    with pytest.raises(ConfigError, match=r"infer: unknown key 'zzz'; keys: agnostic, batch, "):
        pairs_to_flags(parser, ["infer", "x.jpg", "zzz=1"])
    with pytest.raises(ConfigError, match="expected true or false"):
        pairs_to_flags(parser, ["infer", "x.jpg", "save_txt=maybe"])
    assert main(["export", "opsett=12"]) == 2
    assert "export: unknown key 'opsett'; did you mean 'opset'?" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["infer", "x.jpg", "conf=1.5"], "argument --conf: a threshold lies in [0, 1], got 1.5"),
        (["infer", "x.jpg", "--conf", "1.5"], "argument --conf: a threshold lies in [0, 1], got 1.5"),
        (["infer", "x.jpg", "iou=-1"], "argument --iou: a threshold lies in [0, 1], got -1.0"),
        (["infer", "x.jpg", "--iou", "nan?"], "argument --iou: expected a number in [0, 1], got 'nan?'"),
        (["infer"], "the following arguments are required: source"),
    ],
)  # fmt: skip
def test_a_wrong_argument_is_one_line_naming_it_not_the_usage_block(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err
    assert err.count("\n") == 1 and err.startswith("detkit infer: error: ")
    assert err.endswith("(usage: detkit infer --help)\n")


# -- issue 22: Ultralytics' verbs, and a bad key refused before torch is imported ------------
def test_predict_and_val_are_infer_and_eval(parser):
    from detkit.cli import evaluate, infer

    argv = pairs_to_flags(parser, ["predict", "source=img.jpg", "model=best.pt", "conf=0.5"])
    assert argv == ["predict", "img.jpg", "--weights", "best.pt", "--conf", "0.5"]
    assert parser.parse_args(argv).func is infer.run
    argv = pairs_to_flags(parser, ["val", "model=best.pt", "split=val", "exist_ok=true"])
    assert argv == ["val", "--weights", "best.pt", "split=val", "--exist-ok"]
    assert parser.parse_args(argv).func is evaluate.run


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "epochz=3"], "unknown key 'epochz'; did you mean 'epochs'?"),
        (["train", "model=ssd300", "assigner=neighbors"], "model.assigner does nothing here"),
        (["train", "--resume", "x/last.pt", "nmae=other"], "unknown key 'nmae'; did you mean 'name'?"),
        (["eval", "mosaic=1.0"], "data.mosaic does nothing in eval: a training setting"),
        (["val", "model=yolo_n"], "model does nothing in eval: the model is the checkpoint's"),
        (["check-data", "lr=0.1"], "train.lr does nothing in check-data"),
        (["check-data", "conf=0.5"], "eval.conf does nothing in check-data"),
        (["convert", "a.json", "out", "--to", "yolo", "conf=0.5"], "eval.conf does nothing in convert"),
    ],
)  # fmt: skip
def test_a_bad_key_is_refused_before_torch_is_imported(argv, message):
    """The whole command in a fresh interpreter: one line, exit 2, and torch never imported
    (importing it is most of the ~8 s such a refusal took)."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys\nfrom detkit.cli import main\n"
        f"rc = main({json.dumps(argv)})\nprint(rc, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "False"], out.stdout + out.stderr
    assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr


def test_keys_lists_every_key_with_its_default(capsys):
    assert main(["train", "--keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "train.epochs = 12  (int)" in lines and "data.fraction = 1.0  (float)" in lines
    assert len(lines) > 100


def test_resume_true_continues_the_newest_last_pt(tmp_path, monkeypatch, capsys):
    import os

    monkeypatch.chdir(tmp_path)
    for i, name in enumerate(("b", "a")):  # a is the newer
        last = tmp_path / "runs/train" / name / "last.pt"
        last.parent.mkdir(parents=True)
        last.write_text("not weights")
        os.utime(last, (1_000_000 + i, 1_000_000 + i))
    assert main(["train", "resume=True", "epochs=5"]) == 2
    out, err = capsys.readouterr()
    assert "resume=true: continuing the newest last.pt, runs/train/a/last.pt" in out
    assert "runs/train/a/last.pt is not a detkit checkpoint" in err  # not "not found: True"
    monkeypatch.chdir(tmp_path / "runs")
    assert main(["train", "resume=True"]) == 2
    assert "resume=true: no runs/train/*/last.pt found" in capsys.readouterr().err


def test_a_missing_package_is_one_line_and_a_broken_import_keeps_its_traceback(monkeypatch, capsys):
    import detkit.api
    from detkit.cli import main
    from detkit.core.versions import MissingPackage

    def missing(*args, **kwargs):
        raise MissingPackage("the summary needs the 'x' package: pip install x")

    monkeypatch.setattr(detkit.api, "model_summary", missing)
    assert main(["summary", "yolo_n"]) == 2
    assert capsys.readouterr().err == "error: the summary needs the 'x' package: pip install x\n"

    def broken(*args, **kwargs):
        raise ImportError("cannot import name 'gone' from 'detkit.models'")

    monkeypatch.setattr(detkit.api, "model_summary", broken)
    with pytest.raises(ImportError, match="cannot import name 'gone'"):
        main(["summary", "yolo_n"])
