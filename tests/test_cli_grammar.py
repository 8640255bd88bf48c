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
    with pytest.raises(ConfigError, match="infer: unknown key 'confidence'; did you mean 'conf'"):
        pairs_to_flags(parser, ["infer", "x.jpg", "confidence=0.5"])
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
