"""Training throughput of the default model, split into data wait, forward/backward and optimiser.

Run from the repository root: ``python bench/bench_train.py [--img-size 320] [--batch 16]``.
It builds the real :class:`detkit.engine.trainer.Trainer` (:func:`detkit.api.build_trainer`) for ``configs/default.yaml`` (the
default model) on a generated shapes set, and times its own steps: waiting for the loader's next
batch, the step's forward and backward (uint8 -> float, forward, loss, backward) and
``Updater.step`` (unscale, clip, the non-finite check, optimiser step, EMA, LR schedule).

The reference is a bare loop on the same model and the same (preloaded) batches: forward, loss,
backward, AdamW step, nothing else. The ratio engine / reference is the cost of what the trainer
adds (clipping, the finiteness check, EMA, bookkeeping) to the compute. Rows alternate per step,
so load on the machine affects both alike; times are medians. Peak memory is the process's peak
RSS on a CPU (loader workers counted separately) or ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run without installing detkit

from detkit.api import build_trainer
from detkit.config import load_config
from detkit.data import generate_shapes, images_to_float, set_loader_epoch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall times are the step's own."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker_peak_mb() -> float:
    """Largest peak RSS (VmHWM) among this process's live children (the loader workers), in MiB;
    0 where /proc is missing."""
    peak = 0.0
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            status = Path(f"/proc/{pid}/status")
            for line in status.read_text().splitlines() if status.exists() else []:
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
    return peak


def bare_step(model, criterion, optimizer, batch, priors, sizes) -> tuple[float, ...]:
    """The reference: forward, loss (assignment included), backward, optimiser step; returns
    the seconds of each of the four."""
    t0 = time.perf_counter()
    raw = model(images_to_float(batch.images))
    t1 = time.perf_counter()
    loss = criterion(raw, batch.targets, priors, sizes).sum()
    t2 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t3 = time.perf_counter()
    optimizer.step()
    return t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3


def run(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    n_steps = args.warmup + args.steps
    root = generate_shapes(workdir / "shapes", num_train=args.batch * n_steps, num_val=4, seed=0)
    overrides = [
        f"root={root}", f"num_train={args.batch * n_steps}", "num_val=4", f"batch={args.batch}",
        f"img_size={args.img_size}", f"workers={args.workers}", f"device={args.device}",
        f"project={workdir / 'runs'}", "quiet=true", "plots=false", *args.overrides,
    ]  # fmt: skip
    trainer = build_trainer(load_config(overrides=overrides))
    dev, size = trainer.device, args.img_size
    ref_cfg = load_config(overrides=[*overrides, "workers=0"])
    reference = build_trainer(ref_cfg)  # same init, own model
    ref_opt = torch.optim.AdamW(reference.model.parameters(), lr=ref_cfg.train.lr)
    priors, sizes = reference.model.priors(size, size), reference.model.feature_sizes(size, size)
    set_loader_epoch(reference.train_loader, 0)
    batches = [b.to(dev) for b in reference.train_loader]

    set_loader_epoch(trainer.train_loader, 0)
    trainer.net.train()
    times: dict[str, list[float]] = {"data": [], "fwd_bwd": [], "optim": [], "bare": [], "cpu": []}
    parts: dict[str, list[float]] = {"forward": [], "loss": [], "backward": [], "step": []}
    loader = iter(trainer.train_loader)
    optim_s, update = [], trainer.updater.step

    def timed_update(pending, state, signum):
        sync(dev)
        t = time.perf_counter()
        signum = update(pending, state, signum)
        sync(dev)
        optim_s.append(time.perf_counter() - t)
        return signum

    trainer.updater.step = timed_update
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for i in range(n_steps):
        t0 = time.perf_counter()
        batch = next(loader)
        t1, c1 = time.perf_counter(), time.process_time()
        trainer.step(batch)
        sync(dev)
        t3, c3 = time.perf_counter(), time.process_time()
        t2 = t3 - optim_s[-1]
        split = bare_step(reference.model, reference.criterion, ref_opt, batches[i], priors, sizes)
        sync(dev)
        t4 = time.perf_counter()
        if i >= args.warmup:
            for key, value in zip(
                times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, c3 - c1), strict=True
            ):
                times[key].append(value)
            for key, value in zip(parts, split, strict=True):
                parts[key].append(value)
    med = {k: statistics.median(v) for k, v in (times | parts).items()}
    if dev.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(dev) / 2**20
        worker_mb = 0.0
    else:  # ru_maxrss is in KiB on Linux
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        worker_mb = worker_peak_mb()
    return med | {"peak_mb": peak_mb, "worker_mb": worker_mb, "device": str(dev)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="loader worker processes")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. model=yolo_n mosaic=1.0")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        r = run(args, Path(tmp))
    b = args.batch
    step = r["data"] + r["fwd_bwd"] + r["optim"]
    compute = r["fwd_bwd"] + r["optim"]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"{platform.machine()}, device {r['device']}, load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; {' '.join(args.overrides) or 'default model'}, {args.img_size} px, "
        f"batch {b}, {args.workers} workers, median of {args.steps} steps"
    )
    print("| phase                  | ms / step | share |")
    print("|------------------------|-----------|-------|")
    for name, key in (("data wait", "data"), ("forward + backward", "fwd_bwd"), ("optimizer + EMA", "optim")):  # fmt: skip
        print(f"| {name:22} | {r[key] * 1e3:9.1f} | {r[key] / step:5.0%} |")
    print(f"| {'step':22} | {step * 1e3:9.1f} |       |")
    print(f"| {'reference (bare step)':22} | {r['bare'] * 1e3:9.1f} |       |")
    for name in ("forward", "loss", "backward", "step"):
        label = {"loss": "  loss + assignment", "step": "  optimizer step"}.get(name, f"  {name}")
        print(f"| {label:22} | {r[name] * 1e3:9.1f} | {r[name] / r['bare']:5.0%} |")
    print()
    print(f"training: {b / step:.1f} images/s end to end, {b / compute:.1f} images/s compute only")
    print(f"engine compute / bare step: {compute / r['bare']:.2f}")
    print(f"engine compute CPU seconds: {r['cpu'] * 1e3 / b:.1f} ms per image (the load changes it less than wall)")  # fmt: skip
    if r["device"].startswith("cuda"):
        print(f"peak GPU memory allocated: {r['peak_mb']:.0f} MiB")
    else:
        print(f"peak RSS: {r['peak_mb']:.0f} MiB (main process), {r['worker_mb']:.0f} MiB (largest worker)")  # fmt: skip


if __name__ == "__main__":
    main()
