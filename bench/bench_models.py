"""Size and CPU latency of every model config, with ratios to yolo_tiny measured in the same run.

Run from the repository root: ``python bench/bench_models.py [--repeats N] [--threads T]``.
For each config under ``configs/models/``: parameters (for the 4 shapes classes and for 80 COCO
classes), GFLOPs of one 320 x 320 image (80 classes, :func:`detkit.summary`), and the median
latency of ``model(images)`` (eval mode, ``no_grad``, batch 1, float32) over N repeats after two
warm-ups. Models take turns within every repeat so that load on the machine hits them alike; the
ratio column is latency / yolo_tiny's latency.

Latency is the network's forward pass only: decode and NMS cost about the same for every model
(see ``bench/bench_boxes.py``), and with untrained weights nothing passes a real threshold.

``--blocks`` profiles instead: for each model spec (a config name and its overrides, e.g.
``"yolo_n model.block=c2f"``), the forward and backward ms per image of every block (a conv,
CSP block, SPPF, head branch: :func:`blocks`) in training mode at ``--batch``, each block
replayed alone on the inputs it received in one forward of the whole network (so the glue
between blocks, concatenations and upsampling, is the "rest" row), blocks taking turns in every
repeat. ``--cost`` screens candidate configs on cost: per spec the training forward + backward
ms per image of the whole network at ``--batch`` and the batch-1 ``Detector.predict`` ms in
PyTorch eager (BN folded) and ONNX Runtime (one intra-op thread), specs taking turns; with
``--peer-weights`` the Ultralytics models' ``predict`` (``bench/peer_yolo.py latency``, in the
throw-away venv of ``bench/bench_peer.py``) and their training step (``peer_yolo.py step``) run
in the same rounds, so the ratios are same-run. A spec token ``channels_last`` runs that spec
in the channels-last memory format. Run it pinned: ``taskset -c 0 python bench/bench_models.py
--cost --threads 1 ...``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run without installing detkit

from detkit.config import load_config
from detkit.config.build import build_model
from detkit.models.summary import summary

MODELS = ["yolo_tiny", "yolo_n", "yolo_s", "yolo_m", "ssdlite320", "ssd300"]
REFERENCE = "yolo_tiny"


def _model(name: str, num_classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(load_config(overrides=[f"model={name}"]).model, num_classes).eval()


# containers whose children are timed, not the container itself
_CONTAINERS = (nn.Sequential, nn.ModuleList)


def blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The blocks :func:`time_blocks` times: the children of the model, of ``nn.Sequential`` /
    ``nn.ModuleList`` containers and of ``descend`` modules (the detector's backbone, neck and
    heads, which call their children themselves), recursively; any other module is one block.
    Which classes to descend is decided by name, so the same walk serves detkit's models and
    Ultralytics' (``DetectionModel.model`` is a Sequential of its layers)."""
    descend = {"YOLO", "CSPDarknet", "PAN", "DecoupledHead", "DWSeparable", "DetectionModel"}
    out: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if isinstance(child, _CONTAINERS) or type(child).__name__ in descend:
                walk(full + ".", child)
            else:
                out.append((full, child))

    walk("", model)
    return out


def _tensors(x: object) -> Iterator[torch.Tensor]:
    """Every tensor inside ``x`` (tensors, lists, tuples, dict values), depth first."""
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, list | tuple):
        for item in x:
            yield from _tensors(item)
    elif isinstance(x, dict):
        for item in x.values():
            yield from _tensors(item)


def _leaf_copy(x: object) -> object:
    """``x`` with every tensor replaced by a detached copy that requires grad where the original
    did (a block's input as the network's backward sees it: the images' does not), structure
    kept."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone().requires_grad_(x.requires_grad)
    if isinstance(x, list | tuple):
        return type(x)(_leaf_copy(item) for item in x)
    return x


def _scalar(out: object) -> torch.Tensor:
    """A scalar whose backward sends a gradient into every output tensor of a block."""
    return sum(t.float().mean() for t in _tensors(out) if t.requires_grad)


def block_inputs(model: nn.Module, images: torch.Tensor) -> dict[str, tuple]:
    """The positional inputs every block of :func:`blocks` received in one training-mode
    forward of ``model(images)`` (``[B, 3, H, W]``), detached copies (first call per block)."""
    named = blocks(model)
    inputs: dict[str, tuple] = {}
    hooks = [
        m.register_forward_pre_hook(
            lambda _m, args, name=name: inputs.setdefault(name, _leaf_copy(args))
        )
        for name, m in named
    ]
    try:
        model(images)  # with autograd on, so an input's requires_grad is the network's
    finally:
        for h in hooks:
            h.remove()
    model.zero_grad(set_to_none=True)
    return inputs


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """``(wall seconds, process CPU seconds)`` of one call of ``fn``. On a shared machine the CPU
    seconds of a one-thread run change less with the load than the wall seconds."""
    c, t = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def time_blocks(
    model: nn.Module, images: torch.Tensor, repeats: int, flops: dict[str, int] | None = None
) -> list[dict]:
    """Per block, median forward and backward CPU seconds of one training-mode call on the
    inputs it received from ``images`` (``[B, 3, H, W]``); blocks take turns in every repeat,
    after one warm-up each. Rows ``{"block", "kind", "fwd", "bwd", "flops"}`` in execution
    order; ``flops`` per image where given (``{block name: FLOPs}``)."""
    model.train()
    inputs = block_inputs(model, images)
    named = [(n, m) for n, m in blocks(model) if n in inputs]
    times: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n, _ in named}
    for rep in range(repeats + 1):
        for name, module in named:
            args = _leaf_copy(inputs[name])
            out: list[object] = []
            fwd = timed(lambda m=module, a=args, o=out: o.append(m(*a)))[1]
            loss = _scalar(out[0])
            bwd = timed(loss.backward)[1] if isinstance(loss, torch.Tensor) else 0.0
            module.zero_grad(set_to_none=True)
            if rep:
                times[name][0].append(fwd)
                times[name][1].append(bwd)
    return [
        {
            "block": n,
            "kind": type(m).__name__,
            "fwd": statistics.median(times[n][0]),
            "bwd": statistics.median(times[n][1]),
            "flops": (flops or {}).get(n, 0),
        }
        for n, m in named
    ]


def train_step(model: nn.Module, images: torch.Tensor) -> tuple[float, float]:
    """``(wall, CPU)`` seconds of one training-mode forward + backward of the whole network on
    ``images`` (the backward of the mean of every output: the loss itself is 0.2% of a step,
    BENCHMARKS.md "Training step")."""
    model.train()
    took = timed(lambda: _scalar(model(images)).backward())
    model.zero_grad(set_to_none=True)
    return took


def parse_spec(spec: str) -> tuple[str, list[str], bool]:
    """``"yolo_n model.block=c2f channels_last"`` -> (model name, overrides, channels_last)."""
    name, *rest = spec.split()
    return name, [t for t in rest if t != "channels_last"], "channels_last" in rest


def spec_model(spec: str, num_classes: int) -> nn.Module:
    """The (seeded) model of a spec, in the memory format it names."""
    name, overrides, last = parse_spec(spec)
    torch.manual_seed(0)
    cfg = load_config(overrides=[f"model={name}", *overrides]).model
    model = build_model(cfg, num_classes)
    return model.to(memory_format=torch.channels_last) if last else model


def block_flops(model: nn.Module, size: int) -> dict[str, int]:
    """FLOPs per image of every block of :func:`blocks` (its layers' sum, :func:`summary`)."""
    rows = summary(model, size).rows
    return {n: sum(r.flops for r in rows if r.name == n or r.name.startswith(n + ".")) for n, _ in blocks(model)}  # fmt: skip


def print_blocks(title: str, rows: list[dict], total: float, batch: int) -> None:
    """A per-block table: CPU ms per image forward / backward, share of the whole step's CPU
    seconds ``total``, MFLOPs per image."""
    f = sum(r["fwd"] + r["bwd"] for r in rows)
    print(f"\n{title}: whole forward + backward {total / batch * 1e3:.1f} CPU ms/image, blocks alone {f / batch * 1e3:.1f}")  # fmt: skip
    print("| block | kind | fwd CPU ms/img | bwd CPU ms/img | share | MFLOPs/img |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['block']} | {r['kind']} | {r['fwd'] / batch * 1e3:.2f} | "
            f"{r['bwd'] / batch * 1e3:.2f} | {(r['fwd'] + r['bwd']) / total:.1%} | {r['flops'] / 1e6:.0f} |"
        )  # fmt: skip
    print(f"| rest (glue) | | {(total - f) / batch * 1e3:.2f} | | {(total - f) / total:.1%} | |")


def profile_blocks(args: argparse.Namespace) -> None:
    """``--blocks``: the per-block table of every spec (and of ``--peers``, in their venv)."""
    s, b = args.img_size, args.batch
    images = torch.rand(b, 3, s, s, generator=torch.Generator().manual_seed(0))
    for spec in args.models:
        model = spec_model(spec, args.num_classes)
        x = images.to(memory_format=torch.channels_last) if parse_spec(spec)[2] else images
        rows = time_blocks(model, x, args.repeats, block_flops(model, s))
        whole = statistics.median(train_step(model, x)[1] for _ in range(args.repeats))
        print_blocks(spec, rows, whole, b)
    for name in args.peers:
        r = peer_call("blocks", f"{name}.yaml", str(s), str(b), str(args.repeats))
        print_blocks(f"{name} (Ultralytics)", r["rows"], r["whole"], b)


def predictors(spec: str, num_classes: int, size: int, work: Path) -> dict[str, Callable]:
    """The batch-1 ``Detector.predict`` calls of a spec's (untrained) model: ``eager`` (BN
    folded, as ``Detector`` runs it) and ``ort`` (its ONNX export in ONNX Runtime with one
    intra-op thread; ``ort0`` with onnxruntime's default thread count)."""
    from detkit.inference.export import export_onnx
    from detkit.inference.onnx_runtime import OnnxModel
    from detkit.inference.predict import Detector

    model = spec_model(spec, num_classes).eval()
    names = [f"c{i}" for i in range(num_classes)]
    path = export_onnx(model, work / f"{len(list(work.iterdir()))}.onnx", size, names)
    eager = Detector(model, names, size)
    if parse_spec(spec)[2]:
        eager.model = eager.model.to(memory_format=torch.channels_last)
    ort = Detector(OnnxModel(path, threads=1), names, size)
    ort0 = Detector(OnnxModel(path, threads=0), names, size)
    return {"eager": eager.predict, "ort": ort.predict, "ort0": ort0.predict}


def peer_call(*argv: str) -> dict:
    """One ``bench/peer_yolo.py`` command in ``bench/bench_peer.py``'s throw-away Ultralytics
    venv (offline, one thread, this process's CPU affinity); its JSON line."""
    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    from bench_peer import last_json, peer_env, peer_python

    work = here / ".peer"
    r = subprocess.run(
        [str(peer_python(work)), str(here / "peer_yolo.py"), *argv], env=peer_env(work),
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return last_json(r.stdout)


class Samples:
    """Wall and CPU milliseconds per ``(model, measure)``, medians printed as a table with the
    ratio of each to a reference model's same measure (by CPU ms)."""

    def __init__(self) -> None:
        self.ms: dict[tuple[str, str], tuple[list[float], list[float]]] = {}

    def add(self, model: str, measure: str, wall_ms: float, cpu_ms: float) -> None:
        walls, cpus = self.ms.setdefault((model, measure), ([], []))
        walls.append(wall_ms)
        cpus.append(cpu_ms)

    def median(self, key: tuple[str, str]) -> tuple[float, float]:
        return statistics.median(self.ms[key][0]), statistics.median(self.ms[key][1])

    def print(self, reference: str) -> None:
        print(f"| model | measure | wall ms | CPU ms | CPU / {reference} |")
        print("|---|---|---|---|---|")
        for model, measure in self.ms:
            wall, cpu = self.median((model, measure))
            ref = self.ms.get((reference, measure.replace("ort0", "ort")))
            ratio = f"{cpu / statistics.median(ref[1]):.2f}" if ref else ""
            print(f"| {model} | {measure} | {wall:.1f} | {cpu:.1f} | {ratio} |")


def peer_round(samples: Samples, args: argparse.Namespace, name: str, pt: Path, onnx: Path) -> None:
    """One round of a peer: predict latency eager and ONNX Runtime, and its training step."""
    s, b = str(args.img_size), str(args.batch)
    for kind, w in (("eager", pt), ("ort", onnx)):
        r = peer_call("latency", str(w), args.image, s, str(args.repeats))
        samples.add(name, kind, r["ms"], r["cpu_ms"])
    r = peer_call("step", f"{name}.yaml", s, b, str(args.steps))
    samples.add(name, "train", r["ms"], r["cpu_ms"])


def cost_screen(args: argparse.Namespace) -> None:
    """``--cost``: training step and batch-1 latency of every spec (and peer), taking turns."""
    import cv2

    s, b = args.img_size, args.batch
    images = torch.rand(b, 3, s, s, generator=torch.Generator().manual_seed(0))
    image = cv2.imread(args.image)
    if image is None:
        raise SystemExit(f"--image {args.image!r}: not an image")
    peers = {}
    for w in args.peer_weights:  # the peers' own export, at this size, beside a copy
        pt = Path(w)
        peers[pt.stem] = (pt, Path(peer_call("export", str(pt), str(s))["onnx"]))
    samples = Samples()
    with tempfile.TemporaryDirectory() as tmp:
        train = {spec: spec_model(spec, args.num_classes) for spec in args.models}
        predict = {spec: predictors(spec, args.num_classes, s, Path(tmp)) for spec in args.models}
        for spec in args.models:  # warm-ups
            train_step(train[spec], images)
            for fn in predict[spec].values():
                [fn(image) for _ in range(5)]
        for _ in range(args.rounds):
            for spec in args.models:
                x = images.to(memory_format=torch.channels_last) if parse_spec(spec)[2] else images
                for _ in range(args.steps):
                    wall, cpu = train_step(train[spec], x)
                    samples.add(spec, "train", wall / b * 1e3, cpu / b * 1e3)
                for kind, fn in predict[spec].items():
                    for _ in range(args.repeats):
                        wall, cpu = timed(lambda f=fn: f(image))
                        samples.add(spec, kind, wall * 1e3, cpu * 1e3)
            for name, (pt, onnx) in peers.items():
                peer_round(samples, args, name, pt, onnx)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, affinity "
        f"{sorted(os.sched_getaffinity(0))}, {platform.machine()}, load average {load}; {s} px; "
        f"train: forward + backward per image at batch {b}, {args.steps} steps x {args.rounds} "
        f"rounds; eager / ort: batch-1 predict, {args.repeats} x {args.rounds}; medians"
    )
    samples.print(next(iter(peers), args.models[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=320)
    parser.add_argument("--models", nargs="+", default=MODELS, help="configs, or specs with --blocks/--cost: 'yolo_n model.block=c2f'")  # fmt: skip
    parser.add_argument("--blocks", action="store_true", help="per-block forward/backward profile")
    parser.add_argument("--cost", action="store_true", help="training step and predict latency")
    parser.add_argument("--batch", type=int, default=16, help="training batch of --blocks/--cost")
    parser.add_argument("--num-classes", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="--cost: training steps per round")
    parser.add_argument("--rounds", type=int, default=2, help="--cost: alternation rounds")
    parser.add_argument("--image", default="", help="--cost: the image predict runs on")
    parser.add_argument("--peer-weights", nargs="*", default=[], help="--cost: Ultralytics .pt files named <model>.pt, e.g. yolov8n.pt (run in bench/.peer's venv; exported beside)")  # fmt: skip
    parser.add_argument("--peers", nargs="*", default=[], help="--blocks: Ultralytics models, e.g. yolov8n")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.blocks:
        return profile_blocks(args)
    if args.cost:
        return cost_screen(args)
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
