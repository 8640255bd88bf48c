"""Stop signals as clusters send them, with loader workers (``workers=2``), on real processes.

``timeout``, SLURM, Kubernetes, a terminal and ``kill -- -PGID`` signal a whole process group;
torchrun forwards a SIGTERM it receives to each rank's process group (rank and loader workers).
Each case must end with a resumable ``last.pt`` written after the signal, exit status 143
(128 + SIGTERM) from every training process, no hang and no traceback from detkit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from detkit.data import seed_worker
from detkit.engine.safety import StopSignals
from detkit.models.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 900  # generous: the test machine may be shared and heavily loaded


@pytest.fixture
def restore_handlers(monkeypatch):
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_loader_workers_ignore_stop_signals(restore_handlers, capsys):
    seed_worker(0)  # the loader's worker_init_fn
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    # the fd-sharing thread's report of a main process gone mid-handshake (a stop signal) is
    # no traceback on the user's terminal; any other error in a worker's thread still is
    for kind in (ConnectionResetError, BrokenPipeError):
        sys.excepthook(kind, kind(104, "Connection reset by peer"), None)
    assert capsys.readouterr().err == ""
    sys.excepthook(ValueError, ValueError("a worker's own"), None)
    assert "ValueError: a worker's own" in capsys.readouterr().err


def test_a_copy_of_the_first_signal_is_ignored_a_later_one_aborts(restore_handlers, monkeypatch):
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)  # say, to the group ...
        os.kill(os.getpid(), signal.SIGTERM)  # ... and forwarded by the launcher
        assert signals.received == signal.SIGTERM
        monkeypatch.setattr(StopSignals, "REPEAT_S", 0.0)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def _overrides(root: Path, project: Path, *extra: str) -> list[str]:
    return [
        f"root={root}", "num_train=32", "num_val=4", "epochs=40", "batch=8", "img_size=64",
        "workers=2", "quiet=true", "device=cpu", "model.widths=[8,16,16,16,16]",
        "model.neck_width=16", f"project={project}", "name=exp", "plots=false", "save_every=1",
        "eval_every=100", *extra,
    ]  # fmt: skip


def _children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return sorted(out)


def _start(cmd: list[str], cwd: Path, min_step: int = 1) -> subprocess.Popen:
    """``cmd`` as the leader of a new process group, once its run has saved ``last.pt`` at
    step ``min_step`` or later."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    last, deadline = cwd / "runs/exp/last.pt", time.monotonic() + TIMEOUT_S
    # min_step 1: any last.pt will do, and reading none keeps the poll quick on a busy machine
    # (a checkpoint load competing with 2 ranks and their workers took seconds)
    while not (last.exists() and (min_step <= 1 or _step(cwd) >= min_step)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    return proc


def _finish(proc: subprocess.Popen, cwd: Path, step_before: int) -> tuple[dict, str]:
    """Wait for the stopped run; return its ``last.pt`` and stderr."""
    try:
        _, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"no exit {TIMEOUT_S} s after the signal: {proc.communicate()}")
    ckpt = load_checkpoint(cwd / "runs/exp/last.pt")
    assert ckpt["step"] > step_before, err  # written after the signal, on a step boundary
    assert ckpt["batch_in_epoch"] == 0 or ckpt["stop_reason"] == "interrupted", err
    # no traceback through detkit's code (torch's own files may sit under REPO/.venv)
    assert f'File "{REPO / "detkit"}' not in err, err
    assert f'File "{REPO / "tools"}' not in err, err
    return ckpt, err


def _step(cwd: Path) -> int:
    return load_checkpoint(cwd / "runs/exp/last.pt")["step"]  # written atomically


@pytest.mark.slow
@pytest.mark.parametrize("to_group", [False, True], ids=["process", "group"])
def test_sigterm_single_process_with_workers(shapes32, tmp_path, to_group):
    cmd = [sys.executable, str(REPO / "tools/train.py"), *_overrides(shapes32, tmp_path / "runs")]
    proc = _start(cmd, tmp_path)
    assert len(_children(proc.pid)) >= 2  # the loader's workers are up
    before = _step(tmp_path)
    (os.killpg if to_group else os.kill)(proc.pid, signal.SIGTERM)
    ckpt, err = _finish(proc, tmp_path, before)
    assert proc.returncode == 143, err
    assert "Traceback" not in err, err
    assert "continue with: detkit train --resume" in err
    assert ckpt["world_size"] == 1


def _torchrun(shapes32: Path, tmp_path: Path, *extra: str, restarts: int = 0) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "--max-restarts", str(restarts), str(REPO / "tools/train.py"),
        *_overrides(shapes32, tmp_path / "runs", *extra),
    ]  # fmt: skip


def _ranks(launcher: int) -> list[int]:
    ranks = _children(launcher)
    assert len(ranks) == 2, ranks
    return ranks


@pytest.mark.slow
@pytest.mark.parametrize("target", ["launcher", "group", "rank1"])
def test_sigterm_under_torchrun_with_workers(shapes32, tmp_path, target):
    """To the launcher (it forwards SIGTERM to each rank's group), to the launcher's process
    group (``kill -- -PGID`` of the job), or to one rank alone: the ranks agree to stop at the
    same step, rank 0 writes last.pt, and every rank exits 143."""
    proc = _start(_torchrun(shapes32, tmp_path), tmp_path)
    ranks = _ranks(proc.pid)
    before = _step(tmp_path)
    if target == "launcher":
        os.kill(proc.pid, signal.SIGTERM)
    elif target == "group":
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        os.kill(ranks[1], signal.SIGTERM)
    ckpt, err = _finish(proc, tmp_path, before)
    assert ckpt["world_size"] == 2
    assert err.count("continue with: detkit train --resume") == 1, err  # rank 0 says it
    if target == "rank1":  # the launcher reports its ranks' status: 143, or killed by SIGTERM
        # (the launcher signals the other ranks as soon as one has exited: same meaning)
        assert err.count("exitcode  : 143") + err.count("exitcode  : -15") == 2, err
    print(f"launcher exit status {proc.returncode}")


@pytest.mark.slow
def test_resume_auto_under_torchrun_max_restarts_is_bit_identical(shapes32, tmp_path):
    """``torchrun --max-restarts 1 ... name=exp --resume auto`` with one rank killed (SIGKILL,
    no chance to save) mid-run: the relaunch continues in the same folder from the last
    ``save_every`` checkpoint and ends with the weights of a run never stopped."""
    # 4 updates per epoch, 20 in all, at 128 px so that the kill (at the first last.pt seen)
    # lands well before the end on a fast machine too (at 64 px 20 updates took ~2 s)
    args = ("epochs=5", "img_size=128", "--resume", "auto")
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "elastic"
    ref_dir.mkdir(), run_dir.mkdir()
    ref = subprocess.run(
        _torchrun(shapes32, ref_dir, *args), cwd=ref_dir, capture_output=True, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=TIMEOUT_S,
    )  # fmt: skip
    assert ref.returncode == 0, ref.stderr

    proc = _start(_torchrun(shapes32, run_dir, *args, restarts=1), run_dir, min_step=1)
    os.kill(_ranks(proc.pid)[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, err
    assert "--resume auto: continuing from" in err, err  # the relaunch resumed
    assert sorted(p.name for p in (run_dir / "runs").iterdir()) == ["exp"]
    a, b = (load_checkpoint(d / "runs/exp/last.pt") for d in (ref_dir, run_dir))
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (5, 20)
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
