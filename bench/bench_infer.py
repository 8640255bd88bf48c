"""Inference speed: PyTorch eager against onnxruntime, per model config, in the same run.

Run from the repository root: ``python bench/bench_infer.py [--repeats N] [--threads T]
[--sizes 320 640] [--models yolo_tiny ...]``. For every config in ``configs/models/`` (untrained
weights, 80 classes, CPU, float32) and every input size it times:

- latency per image at batch 1 and throughput at batch 8, model + post-processing, with
  PyTorch eager (the reference) and with onnxruntime running the exported decoded graph;
- the post-processing inside those numbers: decode + c·p + NMS for eager, c·p + NMS for
  onnxruntime (its graph holds the decode), at conf 0.25;
- the same post-processing on *trained-like* scores: untrained weights put every c·p near
  ``0.01 / 80``, so nothing passes a threshold and NMS never runs. Objectness is replaced by
  sigmoid(N(-7, 1.5)) with 1% of the cells confident and class probabilities by a peaked
  softmax (as ``bench_boxes.py``), at the deploy (0.25) and the mAP (0.001) threshold.

Each number is the median of N runs after one warm-up, eager and onnxruntime alternating within
each repeat so that load on the machine hits both alike. Ratios are onnxruntime / eager.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run without installing detkit

from detkit.config import CONFIG_DIR, load_config
from detkit.config.build import build_model
from detkit.inference.export import export_onnx
from detkit.inference.onnx_runtime import OnnxModel
from detkit.inference.postprocess import postprocess

NUM_CLASSES, CONF, IOU, MAX_DET = 80, 0.25, 0.6, 300


def median_times(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median seconds of each function; one warm-up, then the functions alternate."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def trained_like(boxes: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """``boxes`` with objectness and class probabilities distributed like a trained model's."""
    lead = boxes.shape[:-1]
    obj = torch.sigmoid(torch.randn(lead, generator=gen) * 1.5 - 7)
    confident = torch.rand(lead, generator=gen) < 0.01
    obj = torch.where(confident, torch.rand(lead, generator=gen) * 0.5 + 0.5, obj)
    probs = torch.softmax(torch.randn(*lead, NUM_CLASSES, generator=gen) * 3, dim=-1)
    return boxes, obj, probs


def bench_size(model: torch.nn.Module, onnx: OnnxModel, size: int, repeats: int) -> dict:
    """Every timing of one model at one input size (seconds)."""
    gen = torch.Generator().manual_seed(0)
    priors = model.priors(size, size)
    out: dict[str, float] = {}
    for batch in (1, 8):
        images = torch.rand(batch, 3, size, size, generator=gen)
        with torch.inference_mode():
            raw = model(images)
            decoded_onnx = onnx(images)

            def eager_post(raw=raw):
                return postprocess(*model.decode(raw, priors), conf=CONF, iou=IOU, max_det=MAX_DET)

            def onnx_post(decoded=decoded_onnx):
                return postprocess(*decoded, conf=CONF, iou=IOU, max_det=MAX_DET)

            fwd, ort_run, post, ort_post = median_times(
                [lambda im=images: model(im), lambda im=images: onnx(im), eager_post, onnx_post],
                repeats,
            )
        out[f"eager_b{batch}"], out[f"eager_post_b{batch}"] = fwd + post, post
        out[f"ort_b{batch}"], out[f"ort_post_b{batch}"] = ort_run + ort_post, ort_post
    with torch.inference_mode():
        raw = model(torch.rand(1, 3, size, size, generator=gen))
        decoded = model.decode(raw, priors)
    like = trained_like(decoded[0], gen)
    decode_t, deploy_t, map_t = median_times(
        [
            lambda: model.decode(raw, priors),
            lambda: postprocess(*like, conf=CONF, iou=IOU, max_det=MAX_DET),
            lambda: postprocess(*like, conf=0.001, iou=IOU, max_det=MAX_DET),
        ],
        repeats,
    )
    out["like_decode"], out["like_post_025"], out["like_post_0001"] = decode_t, deploy_t, map_t
    return out


def rows(name: str, size: int, t: dict) -> list[str]:
    """Two table rows (eager, onnxruntime) of one model and size.

    "post" is what the measured run spent after the network (decode + c·p + NMS for eager,
    c·p + NMS for onnxruntime); "trained-like" swaps in the post-processing of trained-like
    scores and gives its share of the batch-1 latency that would result.
    """
    lines = []
    for backend in ("eager", "ort"):
        b1, b8, post = t[f"{backend}_b1"], t[f"{backend}_b8"], t[f"{backend}_post_b1"]
        decode = t["like_decode"] if backend == "eager" else 0.0  # in the ONNX graph
        like, like_map = decode + t["like_post_025"], decode + t["like_post_0001"]
        like_share = like / (b1 - post + like)
        label = "PyTorch eager" if backend == "eager" else "onnxruntime"
        lines.append(
            f"| {name:<12} | {size:>4} | {label:<13} | {1e3 * b1:>9.2f} | {b1 / t['eager_b1']:>5.2f} "
            f"| {8 / b8:>8.1f} | {t['eager_b8'] / b8:>5.2f} | {1e3 * post:>7.2f} | {100 * post / b1:>5.1f}% "
            f"| {1e3 * like:>7.2f} ({100 * like_share:>4.1f}%) / {1e3 * like_map:>6.2f} |"
        )
    return lines


HEADER = (
    "| model        | size | backend       | b1 ms/img | ratio | b8 img/s | ratio | post ms | share  "
    "| trained-like post ms (share) @0.25 / @0.001 |\n"
    "|--------------|------|---------------|-----------|-------|----------|-------|---------|--------"
    "|---------------------------------------------|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads")
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    parser.add_argument("--models", nargs="+", default=None, help="configs/models names")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import onnxruntime

    names = args.models or sorted(p.stem for p in (CONFIG_DIR / "models").glob("*.yaml"))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {platform.machine()}, "
        f"load average {load}, {args.repeats} repeats, {NUM_CLASSES} classes, conf {CONF}"
    )
    print(HEADER)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            cfg = load_config(overrides=[f"model={name}"])
            model = build_model(cfg.model, NUM_CLASSES).eval()
            for size in args.sizes:
                path = export_onnx(
                    model,
                    Path(tmp) / f"{name}-{size}.onnx",
                    size,
                    [str(i) for i in range(NUM_CLASSES)],
                )
                onnx = OnnxModel(path, threads=torch.get_num_threads())
                try:
                    lines = rows(name, size, bench_size(model, onnx, size, args.repeats))
                except (RuntimeError, ValueError) as e:  # a model that cannot take this size
                    lines = [f"| {name:<12} | {size:>4} | failed: {str(e).splitlines()[0][:80]} |"]
                print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
