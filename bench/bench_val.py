"""Validation speed of an untrained and a trained detector: what the trainer's validation runs.

Run from the repository root: ``python bench/bench_val.py [--weights best.pt] [--img-size 640]
[--num-val 250] [--batch 16] [--threads 1] [--repeats 3]``. It evaluates ``model=yolo_n`` (the
untrained model the first epochs resemble: at conf 0.001 every one of its N x C (box, class)
pairs is a candidate) and, with ``--weights``, a trained checkpoint, on the hard shapes set's
validation split letterboxed to ``--img-size``, through the trainer's own path
(:func:`detkit.engine.validate.validate_split`: the forward, ``postprocess.detect``, the map back to
orig px, COCO entries, pycocotools). Each pass is timed whole and split into the forward, the
post-processing (decode, c·p, NMS, the letterbox maps) and scoring; the models alternate within
each repeat and every number is the median of the repeats. ``untrained / trained`` is the
validation time ratio (the issue asks for at most 2x). CPU seconds of the process are printed
beside the wall times: a busy machine changes them far less.
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

from detkit.config import load_config
from detkit.config.build import build_dataset, build_detection_dataset, build_model
from detkit.data import build_loader, ground_truth
from detkit.engine.distributed import DistContext
from detkit.engine.validate import validate_split
from detkit.inference.predict import Detector


class ForwardClock:
    """Hooks on a model: the wall and CPU seconds its forwards took, summed."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.seconds, self._start = [0.0, 0.0], (0.0, 0.0)
        self.handles = [
            model.register_forward_pre_hook(self._begin),
            model.register_forward_hook(self._end),
        ]

    def _begin(self, module, inputs) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def _end(self, module, inputs, output) -> None:
        self.seconds[0] += time.perf_counter() - self._start[0]
        self.seconds[1] += time.process_time() - self._start[1]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class NoLoss:
    """Validation's criterion without a loss (the benchmark times detection and scoring)."""

    def __call__(self, raw, targets, priors, sizes):
        return torch.zeros(3)


def one_pass(detector: Detector, loader, gt) -> dict[str, float]:
    """One validation pass: wall and CPU seconds of the whole, the forwards and the rest."""
    clock = ForwardClock(detector.model)
    wall, cpu = time.perf_counter(), time.process_time()
    stats = validate_split(detector, NoLoss(), loader, gt, DistContext())
    total = (time.perf_counter() - wall, time.process_time() - cpu)
    clock.remove()
    return {"wall": total[0], "cpu": total[1], "forward_cpu": clock.seconds[1],
            "rest_cpu": total[1] - clock.seconds[1], "mAP50-95": stats["mAP50-95"]}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=None, help="a trained detkit checkpoint")
    p.add_argument("--img-size", type=int, default=640)
    p.add_argument("--num-val", type=int, default=250)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(
        overrides=["model=yolo_n", "data=shapes_hard", "num_train=16", f"num_val={args.num_val}",
                   f"img_size={args.img_size}", "workers=0", "device=cpu"]
    )  # fmt: skip
    split = build_dataset(cfg.data, "val")
    loader = build_loader(
        build_detection_dataset(cfg, split, train=False), args.batch, False, 0, seed=0
    )
    gt = ground_truth(split)
    names, cats = split.class_names, split.cat_ids
    torch.manual_seed(0)
    detectors = {"untrained": Detector(build_model(cfg.model, len(names)), names,
                                       args.img_size, conf=0.001, cat_ids=cats)}  # fmt: skip
    if args.weights is not None:
        detectors["trained"] = Detector.from_checkpoint(
            args.weights, device="cpu", conf=0.001, img_size=args.img_size, cat_ids=cats
        )
    runs: dict[str, list[dict]] = {k: [] for k in detectors}
    for _ in range(args.repeats):  # the models alternate, so load drifts hit both
        for name, det in detectors.items():
            runs[name].append(one_pass(det, loader, gt))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, "
        f"{platform.machine()}, load average {load}; yolo_n, {len(split)} val images of the hard "
        f"shapes set at {args.img_size} px, batch {args.batch}, conf 0.001, median of "
        f"{args.repeats}"
    )
    print("| model | mAP50-95 | img/s (wall) | img/CPU-s | forward CPU ms/img | rest CPU ms/img |")
    print("|---|---|---|---|---|---|")
    med = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in runs.items()}
    n = len(split)
    for name, m in med.items():
        print(
            f"| {name} | {m['mAP50-95']:.3f} | {n / m['wall']:.1f} | {n / m['cpu']:.1f} | "
            f"{1000 * m['forward_cpu'] / n:.1f} | {1000 * m['rest_cpu'] / n:.1f} |"
        )
    if "trained" in med:
        print(f"\nuntrained / trained validation CPU time: "
              f"{med['untrained']['cpu'] / med['trained']['cpu']:.2f}x")  # fmt: skip
    loader.close()


if __name__ == "__main__":
    main()
