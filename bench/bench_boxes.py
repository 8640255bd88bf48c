"""Time detkit's box ops against torchvision.ops (or the obvious torch composition), same run.

Run from the repository root: ``python bench/bench_boxes.py [--repeats N]``. Each row is the
median of N timed runs after one warm-up; detkit and the reference alternate within every repeat
so that load on the machine affects both alike. The ratio is detkit / reference (< 1 is faster).
Each row also checks that both sides return the same result.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
import torchvision.ops as tvo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run without installing detkit

from detkit.boxes import batched_multiclass_nms, batched_nms, box_iou, multiclass_nms, nms
from detkit.boxes.coder import GridCoder, make_grid_priors

SCORE_THRESHOLD, IOU_THRESHOLD, MAX_DET = 0.001, 0.6, 300


def random_boxes(n: int, gen: torch.Generator, size: float = 640.0) -> torch.Tensor:
    """Tensor[n, 4] xyxy px: corners uniform over the image, sides 1 to 100 px."""
    xy = torch.rand(n, 2, generator=gen) * size
    return torch.cat((xy, xy + torch.rand(n, 2, generator=gen) * 99 + 1), dim=1)


def clustered_boxes(n: int, gen: torch.Generator, objects: int = 50) -> torch.Tensor:
    """Tensor[n, 4] xyxy px: a raw detector's dense overlap, ``n`` jittered copies of
    ``objects`` boxes (sides 20-200 px, centres and sides moved by up to 10%)."""
    base = random_boxes(objects, gen)
    wh = torch.rand(objects, 2, generator=gen) * 180 + 20
    base = torch.cat((base[:, :2], base[:, :2] + wh), dim=1)
    pick = torch.randint(0, objects, (n,), generator=gen)
    size = (base[pick, 2:] - base[pick, :2]).repeat(1, 2)
    return base[pick] + (torch.rand(n, 4, generator=gen) - 0.5) * 0.2 * size


def yolo_output(gen: torch.Generator, batch: int | None = None):
    """Decoded predictions of a 320 px, 3-level, 3-anchor head: 6300 cells x 80 classes.

    Objectness is mostly tiny (sigmoid of N(-7, 1.5)) with a few confident cells; class
    probabilities are a peaked softmax, so most of the 504k scores c * p are below 0.001.
    """
    anchors = [
        [(10, 13), (16, 30), (33, 23)],
        [(30, 61), (62, 45), (59, 119)],
        [(116, 90), (156, 198), (373, 326)],
    ]
    priors = make_grid_priors([(40, 40), (20, 20), (10, 10)], [8, 16, 32], anchors)
    lead = (priors.shape[0],) if batch is None else (batch, priors.shape[0])
    deltas = torch.cat(
        (torch.rand(*lead, 2, generator=gen), torch.randn(*lead, 2, generator=gen) * 0.5), -1
    )
    boxes = GridCoder().decode(deltas, priors)
    obj = torch.sigmoid(torch.randn(lead, generator=gen) * 1.5 - 7)
    confident = torch.rand(lead, generator=gen) < 0.01
    obj = torch.where(confident, torch.rand(lead, generator=gen) * 0.5 + 0.5, obj)
    probs = torch.softmax(torch.randn(*lead, 80, generator=gen) * 3, dim=-1)
    return boxes, obj, probs


def reference_multiclass(boxes, obj, probs):
    """The obvious torch composition: c * p, threshold, torchvision batched_nms, top max_det."""
    scores = obj[:, None] * probs
    i, c = torch.nonzero(scores > SCORE_THRESHOLD, as_tuple=True)
    s = scores[i, c]
    keep = tvo.batched_nms(boxes[i], s, c, IOU_THRESHOLD)[:MAX_DET]
    return boxes[i][keep], s[keep], c[keep]


def same(a, b) -> bool:
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return torch.equal(a, b)


def timed(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median seconds of each function; one warm-up, then the functions alternate."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def cases(gen: torch.Generator) -> list[tuple[str, str, Callable, Callable]]:
    a, b = random_boxes(4000, gen), random_boxes(4000, gen)
    # distinct scores: with ties torchvision's order is arbitrary, and the check below would fail
    boxes, scores = random_boxes(20000, gen), (torch.randperm(20000, generator=gen) + 1) / 20000
    labels = torch.randint(0, 80, (20000,), generator=gen)
    dense = clustered_boxes(20000, gen)
    dense_scores = (torch.randperm(20000, generator=gen) + 1) / 20000
    y_boxes, y_obj, y_probs = yolo_output(gen)
    n_cand = int((y_obj[:, None] * y_probs > SCORE_THRESHOLD).sum())
    bb, bo, bp = yolo_output(gen, batch=8)
    return [
        ("box_iou", "4000 x 4000", lambda: box_iou(a, b), lambda: tvo.box_iou(a, b)),
        ("nms", "20k sparse", lambda: nms(boxes, scores, 0.5), lambda: tvo.nms(boxes, scores, 0.5)),
        (
            "nms",
            "20k dense overlap",
            lambda: nms(dense, dense_scores, 0.5),
            lambda: tvo.nms(dense, dense_scores, 0.5),
        ),
        (
            "batched_nms",
            "20k sparse, 80 classes",
            lambda: batched_nms(boxes, scores, labels, 0.5),
            lambda: tvo.batched_nms(boxes, scores, labels, 0.5),
        ),
        (
            "batched_nms",
            "20k dense, 80 classes",
            lambda: batched_nms(dense, dense_scores, labels, 0.5),
            lambda: tvo.batched_nms(dense, dense_scores, labels, 0.5),
        ),
        (
            "multiclass_nms",
            f"6300 x 80, {n_cand} > {SCORE_THRESHOLD}",
            lambda: multiclass_nms(
                y_boxes, y_obj, y_probs, SCORE_THRESHOLD, IOU_THRESHOLD, MAX_DET
            ),
            lambda: reference_multiclass(y_boxes, y_obj, y_probs),
        ),
        (
            "batched_multiclass_nms",
            "8 x 6300 x 80",
            lambda: batched_multiclass_nms(bb, bo, bp, SCORE_THRESHOLD, IOU_THRESHOLD, MAX_DET),
            lambda: [reference_multiclass(bb[i], bo[i], bp[i]) for i in range(8)],
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {platform.machine()}, "
        f"load average {load}, {args.repeats} repeats"
    )
    header = f"| {'op':<24}| {'input':<28}| {'detkit ms':>10} | {'reference ms':>12} | {'ratio':>6} | same |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name, size, ours, reference in cases(gen):
        t_ours, t_ref = timed([ours, reference], args.repeats)
        ok = "yes" if same(ours(), reference()) else "NO"
        print(
            f"| {name:<24}| {size:<28}| {t_ours * 1e3:>10.2f} | {t_ref * 1e3:>12.2f} | {t_ours / t_ref:>6.2f} | {ok:<4} |"
        )


if __name__ == "__main__":
    main()
