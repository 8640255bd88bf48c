"""The benchmark scripts run end to end on tiny settings and print their ratio tables (so
``make bench`` cannot rot unnoticed). Their numbers are not checked: timings are never asserted.

Those runs are marked ``bench``: ``make bench`` runs them, ``make test`` deselects them (they
are a quarter of the suite's CPU time). What ``make test`` keeps here: every name a benchmark
script imports from detkit resolves, the GPU probe's smoke run, and the probe's plan.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "bench_boxes.py": ["--repeats", "1", "--threads", "1"],
    "bench_data.py": ["--images", "4", "--repeats", "1", "--sizes", "64", "--workers", "0"],
    "bench_infer.py": ["--repeats", "1", "--threads", "1", "--sizes", "64", "--models", "yolo_tiny"],
    "bench_models.py": ["--repeats", "1", "--threads", "1", "--img-size", "64",
                        "--models", "yolo_tiny", "ssdlite320"],
    "bench_scale.py": ["--root", "scale", "--train", "60", "--boxes", "300", "--val", "4",
                       "--skip", "check"],
    "bench_train.py": ["--img-size", "64", "--batch", "2", "--steps", "1", "--warmup", "1",
                       "--workers", "0", "--threads", "1"],
    "bench_val.py": ["--img-size", "64", "--num-val", "4", "--batch", "2", "--repeats", "1"],
    "bench_finetune.py": ["--pre-epochs", "1", "--epochs", "1", "--num-train", "16", "--num-ft",
                          "8", "--num-val", "4", "--img-size", "64", "--batch", "4",
                          "--backbones", "mobilenet_v3_large", "--work", "work"],
    # installs Ultralytics into bench/.peer/venv once (the package index: `make bench` runs it,
    # `make test` deselects the network mark), then trains four models for one tiny epoch
    "bench_peer.py": ["--epochs", "1", "--num-train", "16", "--num-val", "4", "--img-size", "64",
                      "--batch", "4", "--repeats", "1"],
}  # fmt: skip
NEEDS_NETWORK = {"bench_peer.py"}


def test_every_benchmark_script_is_covered() -> None:
    assert sorted(p.name for p in (ROOT / "bench").glob("bench_*.py")) == sorted(CASES)


def detkit_imports(path: Path) -> list[tuple[str, str | None]]:
    """``(module, name)`` of every ``from detkit... import name`` and ``(module, None)`` of every
    ``import detkit...`` in a file, functions included; names inside code strings as well (a
    script's subprocess snippets)."""
    out: list[tuple[str, str | None]] = []
    trees = [ast.parse(path.read_text(encoding="utf-8"))]
    for node in ast.walk(trees[0]):  # code handed to `python -c` as a string constant
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and "detkit" in node.value
        ):
            for line in node.value.replace(";", "\n").splitlines():
                if line.strip().startswith(("from detkit", "import detkit")):
                    trees.append(ast.parse(line.strip()))
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("detkit"):
                out += [(node.module, a.name) for a in node.names]
            elif isinstance(node, ast.Import):
                out += [(a.name, None) for a in node.names if a.name.startswith("detkit")]
    return out


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "bench").glob("*.py")))
def test_every_name_a_benchmark_script_imports_from_detkit_exists(script: str) -> None:
    """The cheap half of the smoke runs ``make test`` leaves to ``make bench``: a renamed or
    moved module or function breaks a script here first."""
    imports = detkit_imports(ROOT / "bench" / script)
    missing = []
    for module, name in imports:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            missing.append(module)
            continue
        if name is not None and not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{module}.{name}")
    assert missing == []
    if script.startswith("bench_"):
        assert imports, script  # the parse is real: every benchmark uses detkit


@pytest.mark.slow
@pytest.mark.parametrize(
    "script",
    [
        pytest.param(s, marks=pytest.mark.network if s in NEEDS_NETWORK else pytest.mark.bench)
        for s in sorted(CASES)
    ],
)
def test_benchmark_runs_and_prints_a_table(script: str, tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *CASES[script]],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("|")]
    assert len(rows) >= 3, out.stdout  # header, rule, at least one measured row


def _load_probe():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_probe", ROOT / "bench/gpu_probe.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # every stage of the GPU probe, at 64 px on a few images (~1 min idle)
def test_gpu_probe_smoke_runs_every_stage(tmp_path):
    """``bench/gpu_probe.py --smoke``: every stage runs on the CPU and writes its JSON line, so
    the probe cannot rot before a GPU runs it; stages whose point is CUDA report SKIP."""
    probe = _load_probe()
    env = {**os.environ, "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench/gpu_probe.py"), "--smoke", "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == [*probe.STAGES, "verdict"]
    verdicts = {r["stage"]: r["verdict"] for r in rows}
    assert verdicts == {**dict.fromkeys(probe.STAGES, "PASS"), "ddp": "SKIP", "verdict": "PASS"}
    by_stage = {r["stage"]: r for r in rows}
    assert by_stage["ddp"]["backend"] == "gloo" and by_stage["ddp"]["exit"] == 0
    assert by_stage["compile"]["compiled"] is True
    assert by_stage["data"]["classes"] == 80
    assert set(by_stage["ceiling"]) >= {"bf16+channels_last", "bf16", "fp32"}
    assert set(by_stage["amp"]) >= {"fp32", "bf16", "fp16"}
    for line in done.stdout.splitlines()[1:-1]:  # one line per stage, as documented
        assert line.split()[0] in ("PASS", "SKIP"), line
    assert sorted(p.name for p in out.iterdir()) == ["results.jsonl"]  # work went to the temp


def test_gpu_probe_full_plan_is_valid_configs(tmp_path):
    """The full plan's overrides (what the GPU run trains) parse into configs; the stages fit
    the 8-minute budget with room to spare."""
    from detkit.config import load_config

    probe = _load_probe()
    p = probe.Probe(tmp_path, probe.FULL, 420.0, smoke=False)
    p.data = tmp_path / "data"
    for extra in (
        ["mosaic=1.0", "workers=15"],
        ["amp_dtype=fp16", "max_steps=50"],
        ["compile=true"],
    ):
        cfg = load_config(overrides=p.overrides("x", *extra))
        assert (cfg.train.img_size, cfg.train.batch, cfg.model.arch) == (640, 32, "yolo_csp")
    assert sum(probe.FULL.need_s.values()) <= 480
    assert list(probe.FULL.need_s) == list(probe.STAGES)


def _load_bench(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profiled_blocks_partition_the_model_and_its_flops() -> None:
    """``bench_models --blocks`` (#20): every parameter of yolo_n sits in exactly one profiled
    block, every block ran in the forward (so each gets a row), and the blocks' FLOPs add up to
    the model's: the per-block table accounts for the whole network, the glue aside."""
    import torch

    from detkit.models.summary import summary

    bm = _load_bench("bench_models")
    model = bm.spec_model("yolo_n", 5)
    named = bm.blocks(model)
    owners = [id(p) for _, m in named for p in m.parameters()]
    assert sorted(owners) == sorted(id(p) for p in model.parameters())
    kinds = {type(m).__name__ for _, m in named}
    assert {"C3", "SPPF", "ConvBNAct", "Conv2d"} <= kinds and "DecoupledHead" not in kinds
    flops = bm.block_flops(model, 64)
    assert sum(flops.values()) == summary(model, 64).flops
    rows = bm.time_blocks(model, torch.rand(2, 3, 64, 64), repeats=1, flops=flops)
    assert [r["block"] for r in rows] == [n for n, _ in named]
    # the stem's input is the images: no input gradient, as in training
    assert not bm.block_inputs(model, torch.rand(1, 3, 64, 64))["backbone.stem"][0].requires_grad
    assert bm.block_inputs(model, torch.rand(1, 3, 64, 64))["neck.lateral.0"][0].requires_grad


@pytest.mark.slow
@pytest.mark.bench
def test_model_cost_screen_and_block_profile_print_tables(tmp_path: Path, write_image) -> None:
    """``bench_models --cost`` and ``--blocks`` on two specs (one in channels-last) print a row
    per spec and measure (no peers: those need bench_peer's venv)."""
    image = write_image(tmp_path / "im.jpg", (64, 64))
    env = {**os.environ, "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    common = [sys.executable, str(ROOT / "bench/bench_models.py"), "--threads", "1",
              "--img-size", "64", "--batch", "2", "--repeats", "1"]  # fmt: skip
    specs = ["--models", "yolo_tiny", "yolo_n model.head_branches=dw_cls channels_last"]
    cost = subprocess.run(
        [*common, "--cost", "--steps", "1", "--rounds", "1", "--image", str(image), *specs],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert cost.returncode == 0, cost.stderr[-3000:]
    rows = [line.split("|")[1:3] for line in cost.stdout.splitlines() if line.startswith("| yolo")]
    measures = ["train", "eager", "ort", "ort0"]
    assert [(m.strip(), k.strip()) for m, k in rows] == [
        (s, k) for s in specs[1:] for k in measures
    ]
    prof = subprocess.run(
        [*common, "--blocks", *specs], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert prof.returncode == 0, prof.stderr[-3000:]
    assert prof.stdout.count("| rest (glue) |") == 2
    assert "| heads.0.cls_branch.0.0 | ConvBNAct |" in prof.stdout  # dw_cls: depthwise, pointwise
