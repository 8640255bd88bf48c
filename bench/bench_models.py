"""Size and CPU latency of every model config, with ratios to yolo_tiny measured in the same run.

Run from the repository root: ``python bench/bench_models.py [--repeats N] [--threads T]``.
For each config under ``configs/models/``: parameters (for the 4 shapes classes and for 80 COCO
classes), GFLOPs of one 320 x 320 image (80 classes, :func:`detkit.summary`), and the median
latency of ``model(images)`` (eval mode, ``no_grad``, batch 1, float32) over N repeats after two
warm-ups. Models take turns within every repeat so that load on the machine hits them alike; the
ratio column is latency / yolo_tiny's latency.

Latency is the network's forward pass only: decode and NMS cost about the same for every model
(see ``bench/bench_boxes.py``), and with untrained weights nothing passes a real threshold.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run without installing detkit

from detkit.build import build_model
from detkit.config import load_config
from detkit.model_summary import summary

MODELS = ["yolo_tiny", "yolo_n", "yolo_s", "yolo_m", "ssdlite320", "ssd300"]
REFERENCE = "yolo_tiny"


def _model(name: str, num_classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(load_config(overrides=[f"model={name}"]).model, num_classes).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=320)
    parser.add_argument("--models", nargs="+", default=MODELS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [REFERENCE, *[m for m in args.models if m != REFERENCE]]
    s = args.img_size
    models = {n: _model(n, 4) for n in names}
    sizes = {}
    for n in names:
        coco = _model(n, 80)
        sizes[n] = (sum(p.numel() for p in coco.parameters()), summary(coco, s).flops / 1e9)
    x = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.no_grad():
        for n in names:  # two warm-ups each
            models[n](x)
            models[n](x)
        for _ in range(args.repeats):
            for n in names:
                t = time.perf_counter()
                models[n](x)
                times[n].append(time.perf_counter() - t)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, "
        f"{platform.machine()}, load average {load}, {args.repeats} repeats, batch 1, {s} px"
    )
    print(
        f"| {'model':<11} | {'params (4 cls)':>14} | {'params (80)':>11} | {'GFLOPs@' + str(s):>11} "
        f"| {'CPU ms':>8} | {'ratio':>6} |"
    )
    print(f"|{'-' * 13}|{'-' * 16}|{'-' * 13}|{'-' * 13}|{'-' * 10}|{'-' * 8}|")
    ref = statistics.median(times[REFERENCE])
    for n in names:
        params4 = sum(p.numel() for p in models[n].parameters())
        params80, gflops = sizes[n]
        ms = statistics.median(times[n])
        print(
            f"| {n:<11} | {params4 / 1e6:>12.2f} M | {params80 / 1e6:>9.2f} M | {gflops:>11.2f} "
            f"| {ms * 1e3:>8.1f} | {ms / ref:>6.2f} |"
        )


if __name__ == "__main__":
    main()
