"""Every verb's process ends on its own with loader workers (the default ``workers=2``): after
success, after an error, after Ctrl-C and after SIGTERM; and ``make demo``'s three steps run in
sequence. A process still alive after its bound has every thread's stack dumped (its loader
workers' too) before it is killed, so a hang says where it hangs. Slow: real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
SMALL = ["data=shapes", "num_train=16", "num_val=8", "img_size=64", "batch=8", "device=cpu"]
BOUND = 150  # seconds: minutes more than any of these needs, seconds less than a hang

# detkit's CLI (or a tools/ script) with every thread's stack dumped on SIGUSR1 (forked loader
# workers inherit it) and the cyclic garbage collector off: a loader left for the collector to
# close then stays open at exit on every run, as it did in `make demo` whenever a reference
# cycle (an exception's traceback, a plot's frames) held it
_MAIN = """
import faulthandler, gc, runpy, signal, sys
gc.disable()
signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal, even when the
signal.signal(signal.SIGTERM, signal.SIG_DFL)  # suite runs in a background job (SIGINT ignored)
faulthandler.register(signal.SIGUSR1, all_threads=True)
tool = sys.argv.pop(1)
if tool:
    sys.argv[0] = tool
    runpy.run_path(tool, run_name="__main__")
else:
    from detkit.cli import main
    sys.argv[0] = "detkit"
    sys.exit(main())
"""


def _start(args: list[str], cwd: Path, tool: str | None = None) -> subprocess.Popen:
    """``detkit args`` (or ``python tools/<tool>.py args``) in its own process group."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = str(REPO / "tools" / f"{tool}.py") if tool else ""
    return subprocess.Popen(
        [sys.executable, "-c", _MAIN, script, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def _finish(proc: subprocess.Popen, bound: float = BOUND) -> subprocess.CompletedProcess:
    """Wait for ``proc``; past ``bound`` seconds dump its group's stacks, kill it and fail."""
    try:
        out, err = proc.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        masks = _signal_masks(proc.pid)
        os.killpg(proc.pid, signal.SIGUSR1)  # faulthandler: the main process and its workers
        time.sleep(2)
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(
            f"{proc.args[3:]} still running after {bound} s ({masks}); stacks:\n{err[-6000:]}"
        )
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _signal_masks(pid: int) -> str:
    """The blocked and ignored signal masks of ``pid`` (why a signal may not have ended it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return "no /proc"
    return " ".join(line for line in status if line.startswith(("SigBlk", "SigIgn")))


def _run(*args: str, cwd: Path, tool: str | None = None) -> subprocess.CompletedProcess:
    done = _finish(_start(list(args), cwd, tool))
    assert "Traceback" not in done.stderr, done.stderr
    return done


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(folder, best.pt)`` of one epoch trained with ``workers=2``, by ``detkit train``."""
    cwd = tmp_path_factory.mktemp("exit")
    done = _run("train", *SMALL, "epochs=1", "workers=2", "plots=false", "name=w", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return cwd, cwd / "runs/train/w/best.pt"


def _val_image(cwd: Path) -> str:
    cmd = [sys.executable, "-m", "detkit.data.synthetic", "--num-train", "16", "--num-val", "8",
           "--val-image", "0"]  # fmt: skip
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize(
    "verb",
    [
        ["eval", "--weights", "{w}", "workers=2", "--no-plots"],
        ["eval", "--weights", "{w}", "workers=2", "--name", "plots"],
        ["infer", "{image}", "--weights", "{w}"],
        ["explain", "{image}", "--weights", "{w}"],
        ["export", "--weights", "{w}", "--output", "m.onnx"],
        ["check-data", *SMALL[:3]],
        ["convert", "{coco}", "out-yolo", "--from", "coco", "--to", "yolo"],
    ],
    ids=["eval", "eval-plots", "infer", "explain", "export", "check-data", "convert"],
)
def test_each_verb_exits_after_success(trained, tiny_shapes, verb):
    cwd, weights = trained
    coco = tiny_shapes  # the COCO root folder
    image = _val_image(cwd) if "{image}" in verb else ""  # a subprocess: only where it is used
    values = {"w": str(weights), "image": image, "coco": str(coco)}
    done = _run(*[a.format(**values) for a in verb], cwd=cwd)
    assert done.returncode == 0, done.stderr


def test_eval_exits_after_an_error_with_workers(trained):
    cwd, weights = trained
    # the split opens and its loader starts, then the classes do not match the checkpoint
    done = _run("eval", "--weights", str(weights), "workers=2", "data=shapes_hard",
                "num_train=16", "num_val=8", cwd=cwd)  # fmt: skip
    assert done.returncode == 2, done.stderr


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (from /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_train_and_eval_exit_after_a_signal_to_the_group(trained, signum):
    cwd, weights = trained
    for args in (
        ["train", *SMALL, "epochs=50", "workers=2", "plots=false", f"name=s{signum}"],
        ["eval", "--weights", str(weights), "workers=2", *SMALL[:3], "batch=1",
         "--name", f"s{signum}"],
    ):  # fmt: skip
        proc = _start(args, cwd)
        deadline = time.monotonic() + BOUND
        while len(_children(proc.pid)) < 2 and proc.poll() is None:  # the loader's workers
            assert time.monotonic() < deadline, "no loader workers started"
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1]
        os.killpg(proc.pid, signum)  # as a terminal (Ctrl-C) or a scheduler does
        done = _finish(proc, bound=60)
        assert done.returncode in (130, 143, -signum), done.stderr
        assert "Traceback" not in done.stderr, done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the demo's sizes assume a CPU")
def test_make_demo_steps_run_in_sequence_and_exit(tmp_path):
    """``make demo``: tools/train.py, tools/eval.py, tools/infer.py <val image>, default workers."""
    small = ["epochs=1", "num_train=16", "num_val=8", "img_size=64", "batch=8"]
    train = _run(*small, cwd=tmp_path, tool="train")
    assert train.returncode == 0, train.stderr
    ev = _run("num_train=16", "num_val=8", cwd=tmp_path, tool="eval")
    assert ev.returncode == 0, ev.stderr
    assert "saved to runs/eval/exp" in ev.stdout
    infer = _run(_val_image(tmp_path), cwd=tmp_path, tool="infer")
    assert infer.returncode == 0, infer.stderr
    assert (tmp_path / "runs/infer/exp/000000.jpg").is_file(), infer.stdout


_OPEN_LOADER = """
import faulthandler, gc, signal, sys
faulthandler.register(signal.SIGUSR1, all_threads=True)
from detkit.data import CocoDataset, DetectionDataset, build_loader, build_transforms, shapes_split
from detkit.data.synthetic import generate_shapes
gc.disable()
source = CocoDataset(*shapes_split(generate_shapes(sys.argv[1], num_train=8, num_val=4), "val"))
dataset = DetectionDataset(source, build_transforms(64, train=False))
loader = build_loader(dataset, 2, train=False, workers=2, seed=0)
batches = sum(1 for _ in loader)
cycle = [loader]
cycle.append(cycle)  # only the collector, which is off, could free the loader
print(batches)
"""


def test_a_loader_left_open_by_the_caller_does_not_hold_up_exit(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", _OPEN_LOADER, str(tmp_path / "shapes")], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    done = _finish(proc, bound=60)
    assert done.returncode == 0 and done.stdout.strip() == "2", done.stderr


def test_close_ends_the_workers_and_the_loader_can_run_again(tiny_shapes):
    from detkit.data import (
        CocoDataset,
        DetectionDataset,
        build_loader,
        build_transforms,
        shapes_split,
    )

    dataset = DetectionDataset(
        CocoDataset(*shapes_split(tiny_shapes, "val")), build_transforms(64, train=False)
    )
    with build_loader(dataset, 2, train=False, workers=2, seed=0) as loader:
        first = [b.image_ids for b in loader]
        workers = list(loader._iterator._workers)
        assert all(w.is_alive() for w in workers)  # persistent between passes
    assert loader._iterator is None and not any(w.is_alive() for w in workers)
    assert [b.image_ids for b in loader] == first  # new workers, the same batches
    loader.close()
