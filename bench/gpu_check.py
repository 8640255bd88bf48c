"""The GPU paths CPU tests cannot reach, checked in a few minutes on any Linux machine with CUDA.

Run ``bench/gpu_check.sh`` (it skips cleanly without CUDA). On a generated shapes set it trains
``yolo_n`` at 640 for a few updates per configuration (fp32, AMP with the dtype the rules pick:
bf16 where native else fp16 + scaler, AMP + channels_last, AMP + ``compile=true``), stops and
resumes one run and compares it with the same run never stopped (within a tolerance: GPU kernels
are not bit-deterministic), and with 2 or more GPUs runs 2 NCCL processes through torchrun. It
prints images/s (updates after the first 3) and peak GPU memory per configuration.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run without installing detkit

from detkit.api import build_trainer, resume  # noqa: E402
from detkit.config import load_config  # noqa: E402
from detkit.data import generate_shapes  # noqa: E402
from detkit.engine.checkpoint import load_checkpoint  # noqa: E402
from detkit.engine.device import amp_dtype  # noqa: E402

CONFIGS = {  # name -> overrides
    "fp32": ["amp=false", "channels_last=false"],
    "amp": ["amp=true", "channels_last=false"],
    "amp+channels_last": ["amp=true", "channels_last=true"],
    "amp+compile": ["amp=true", "channels_last=true", "compile=true"],
}


def base_overrides(args: argparse.Namespace, root: Path, project: Path) -> list[str]:
    return [
        f"model={args.model}", f"root={root}", f"num_train={args.batch * args.steps}",
        "num_val=8", f"batch={args.batch}", f"img_size={args.img_size}", "epochs=1",
        f"max_steps={args.steps}", f"workers={args.workers}", f"project={project}",
        "quiet=true", "plots=false", "multi_scale=0",
    ]  # fmt: skip


def timed_run(overrides: list[str]) -> dict[str, float]:
    """Train; images/s over the updates after the first 3, peak memory in MiB."""
    trainer = build_trainer(load_config(overrides=overrides))
    stamps: list[float] = []
    update = trainer.update

    def stamped(pending):
        update(pending)
        torch.cuda.synchronize(trainer.device)
        stamps.append(time.perf_counter())

    trainer.update = stamped
    torch.cuda.reset_peak_memory_stats(trainer.device)
    trainer.fit()
    steady = stamps[3:]
    per_s = (len(steady) - 1) * trainer.opts.batch / (steady[-1] - steady[0])
    return {"images/s": per_s, "peak MiB": torch.cuda.max_memory_allocated() / 2**20}


def resume_gap(args: argparse.Namespace, root: Path, work: Path) -> float:
    """Largest |difference| between the weights of a run stopped halfway and resumed and the
    same run never stopped (AMP)."""
    full = build_trainer(load_config(overrides=base_overrides(args, root, work / "full")))
    full_dir = full.fit()
    half = [*base_overrides(args, root, work / "half"), f"max_steps={args.steps // 2}"]
    half_dir = build_trainer(load_config(overrides=half)).fit()
    resume(half_dir / "last.pt", [f"max_steps={args.steps}"])
    a, b = (load_checkpoint(d / "last.pt")["model"] for d in (full_dir, half_dir))
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def nccl_run(args: argparse.Namespace, root: Path, work: Path) -> str:
    """2 processes through torchrun; their exit status and wall time."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(ROOT / "tools/train.py"), *base_overrides(args, root, work / "nccl"),
    ]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
    status = "ok" if done.returncode == 0 else f"exit {done.returncode}: {done.stderr[-500:]}"
    return f"{status} in {time.perf_counter() - t0:.0f} s"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="yolo_n")
    p.add_argument("--img-size", type=int, default=640)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--workers", type=int, default=4)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine: skipped")
        return 0
    device = torch.device("cuda", 0)
    name, cap = torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)
    print(f"gpu_check on {torch.cuda.device_count()} x {name} (capability {cap[0]}.{cap[1]}), "
          f"torch {torch.__version__}; AMP dtype: {amp_dtype(device, True)}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = generate_shapes(work / "shapes", num_train=args.batch * args.steps, num_val=8)
        print(f"{'configuration':<20} {'images/s':>10} {'peak MiB':>10}")
        for label, extra in CONFIGS.items():
            row = timed_run([*base_overrides(args, root, work / label), *extra])
            print(f"{label:<20} {row['images/s']:>10.1f} {row['peak MiB']:>10.0f}")
        gap = resume_gap(args, root, work)
        print(f"resume: max |weight difference| vs never stopped = {gap:.3g}")
        if torch.cuda.device_count() >= 2:
            print(f"2 NCCL processes: {nccl_run(args, root, work)}")
        else:
            print("2 NCCL processes: skipped (1 GPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
