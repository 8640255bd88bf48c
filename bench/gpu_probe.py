"""The first-GPU probe: one prepared script that says, in at most 8 minutes on one GPU, whether
detkit's GPU paths work and how fast they are, with a PASS / FAIL / SKIP verdict per stage.

Run it from the repository root (docs/first_gpu.md says how, with the import preflight)::

    timeout 500 python3 bench/gpu_probe.py --out runs/gpu_probe     # on a GPU machine
    python3 bench/gpu_probe.py --smoke --out /tmp/probe             # every stage on CPU, tiny

Each stage appends one JSON line to ``<out>/results.jsonl`` as soon as it finishes (so a run
cut short keeps what it measured) and prints one line: ``PASS|FAIL|SKIP  stage  numbers
(threshold: ...)``. Before each stage the global deadline (``--deadline``, seconds from the
start) is checked against the stage's expected duration; a stage that does not fit is skipped
with that reason. The last line is the verdict: PASS when no stage failed.

Stages (sizes of the full run; ``--smoke`` runs the same code at 64 px on a few images):

- ``env``: versions, GPU, CPU cores, ``/dev/shm``, onnxruntime providers.
- ``data``: 1,280 + 256 generated JPEGs, 480-640 px a side (COCO-like), 80 classes (the hard
  shapes' 5 shapes x 16 label groups: realistic for throughput and the head, not learnable).
- ``ceiling``: the trainer's own step (``Trainer.step``) on preloaded batches,
  bf16 + channels-last / bf16 / fp32: images/s, peak memory, host syncs per step.
- ``fit``: ``Trainer.fit()`` for one epoch with mosaic and a worker per core, then with 2
  workers: images/s, data-wait share, validation images/s.
- ``amp``: 50 updates in fp32 (TF32 off), bf16 and forced fp16 from the same start: the mean
  loss of the last 10 updates of each against fp32's, skipped updates and fp16 overflows.
- ``predict``: ``Detector`` latency at batch 1 and 32, eager, and ONNX Runtime on CUDA.
- ``nms``: post-processing at trained-like (a few hundred candidates) and untrained-like (every
  prior) counts.
- ``ddp``: ``torchrun --nproc_per_node 1`` (NCCL) training a few steps.
- ``compile``: ``compile=true`` in a subprocess with a time cap: compiled or fell back, the
  warm-up's time, the speedup of the step (last: it is the one stage whose time is unknown).

On CPU (``--smoke``) the CUDA-only parts run where torch allows them on a CPU (autocast in
bf16 and fp16, channels-last, the GradScaler, dynamo with its eager backend, DDP with gloo) and
are reported as SKIP with the reason where the stage's point is CUDA itself (NCCL; ONNX Runtime's
CUDA provider is named in ``predict``'s reason); speed thresholds are not applied. Nothing here is a test of detkit's
correctness: the test suite is; this is the measurement nothing on a CPU can make.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run without installing detkit

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclasses.dataclass(frozen=True)
class Plan:
    """The sizes of one probe run."""

    n_train: int
    n_val: int
    side: tuple[int, int]  # image height and width drawn in this range (inclusive)
    img_size: int
    batch: int
    model: str
    steps: int  # timed steps per ceiling configuration (after 3 warm-up steps)
    updates: int  # AMP parity updates per dtype
    repeats: int  # predict latency repeats
    big_batch: int  # predict's large batch
    compile_cap_s: int
    need_s: dict[str, float]  # expected seconds per stage, for the deadline


FULL = Plan(
    n_train=1280, n_val=256, side=(480, 640), img_size=640, batch=32, model="yolo_s", steps=30,
    updates=50, repeats=30, big_batch=32, compile_cap_s=180,
    need_s={"env": 2, "data": 30, "ceiling": 40, "fit": 90, "amp": 45, "predict": 30, "nms": 10,
            "ddp": 40, "compile": 120},
)  # fmt: skip
SMOKE = Plan(
    n_train=8, n_val=4, side=(64, 96), img_size=64, batch=2, model="yolo_tiny", steps=2, updates=3,
    repeats=2, big_batch=4, compile_cap_s=300, need_s={},
)  # fmt: skip


class Probe:
    """Runs the stages in order under one deadline, writing each result as it comes."""

    def __init__(self, out: Path, plan: Plan, deadline_s: float, smoke: bool) -> None:
        self.out, self.plan, self.smoke = out, plan, smoke
        self.start = time.monotonic()
        self.deadline = self.start + deadline_s
        self.device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
        out.mkdir(parents=True, exist_ok=True)
        # the dataset and runs go to the temp folder: a run killed by its timeout must not
        # leave 100 MB in the folder that is copied back
        self.work = Path(tempfile.mkdtemp(prefix="gpu_probe-"))
        self.data: Path | None = None  # the generated dataset
        self.weights: Path | None = None  # a checkpoint from the fit stage
        self.results: list[dict[str, Any]] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, stage: Callable[[Probe], dict[str, Any]]) -> dict[str, Any]:
        """One stage: skipped when it does not fit the deadline; an exception is a FAIL."""
        need = self.plan.need_s.get(name, 0.0)
        t0 = time.monotonic()
        if self.left() < need:
            result = {
                "verdict": SKIP,
                "reason": f"deadline: {self.left():.0f} s left, needs ~{need:.0f}",
            }
        else:
            try:
                result = stage(self)
            except Exception as e:  # the probe goes on: later stages may still answer
                tail = traceback.format_exc().strip().splitlines()[-6:]
                result = {"verdict": FAIL, "error": f"{type(e).__name__}: {e}", "traceback": tail}
        result = {"stage": name, **result, "seconds": round(time.monotonic() - t0, 1)}
        if self.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
            result["cuda_allocated_after_mib"] = round(torch.cuda.memory_allocated() / 2**20)
        self.results.append(result)
        with open(self.out / "results.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(result, default=str) + "\n")
        print(summary_line(result), flush=True)
        return result

    def overrides(self, project: str, *extra: str) -> list[str]:
        """The training overrides every stage shares (dataset, model, size, run folder)."""
        p = self.plan
        return [
            "data.format=coco", f"root={self.data}", f"model={p.model}", f"img_size={p.img_size}",
            f"batch={p.batch}", "epochs=1", "quiet=true", "plots=false", "multi_scale=0",
            f"project={self.work / project}", f"device={self.device}", "seed=0", *extra,
        ]  # fmt: skip


def summary_line(r: dict[str, Any]) -> str:
    """``VERDICT  stage  key numbers  (threshold: ...)``."""
    skip = {"stage", "verdict", "threshold", "traceback", "seconds", "reason", "error"}
    numbers = ", ".join(f"{k} {_short(v)}" for k, v in r.items() if k not in skip)
    extra = r.get("error") or r.get("reason") or ""
    threshold = f"  (threshold: {r['threshold']})" if r.get("threshold") else ""
    return f"{r['verdict']:<4}  {r['stage']:<8} {numbers}{'; ' if numbers and extra else ''}{extra}{threshold}  [{r['seconds']} s]"


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_short(x)}" for k, x in v.items()) + "}"
    return str(v)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(*objects: Any) -> None:
    """Close the loaders of trainers and let their memory go before the next reading."""
    for obj in objects:
        for loader in (getattr(obj, "train_loader", None), getattr(obj, "val_loader", None)):
            if loader is not None:
                loader.close()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- env, data -------------------------------------------------------------------------------
def env_stage(probe: Probe) -> dict[str, Any]:
    import detkit

    shm = shutil.disk_usage("/dev/shm") if Path("/dev/shm").is_dir() else None
    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "detkit": detkit.__version__, "cores": len(os.sched_getaffinity(0)),
        "dev_shm_gib": round(shm.free / 2**30, 1) if shm else None,
    }  # fmt: skip
    try:
        import onnxruntime

        info["onnxruntime"] = f"{onnxruntime.__version__} {onnxruntime.get_available_providers()}"
    except ImportError:
        info["onnxruntime"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {
            "gpu": props.name, "gpus": torch.cuda.device_count(),
            "capability": f"{props.major}.{props.minor}",
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        }  # fmt: skip
    ok = probe.device.type == "cuda" or probe.smoke
    return {"verdict": PASS if ok else FAIL, **info, "threshold": "a CUDA GPU (smoke: CPU)"}


def probe_variant(side: tuple[int, int]) -> Any:
    """The hard shapes' scenes at COCO-like sizes, with 80 labels: each object's shape label
    plus 5 times a group drawn from the image's generator (16 groups)."""
    from detkit.data.shapes_hard import HARD

    groups = 16

    def render(rng: np.random.Generator, height: int, width: int) -> tuple[Any, Any, Any]:
        image, boxes, labels = HARD.render(rng, height, width)
        return image, boxes, labels + len(HARD.classes) * rng.integers(0, groups, len(labels))

    names = tuple(f"{c}{g}" for g in range(groups) for c in HARD.classes)
    return dataclasses.replace(HARD, name="probe", classes=names, render=render, side_range=side)


def _generate_chunk(args: tuple[Path, int, int, int, tuple[int, int]]) -> Path:
    from detkit.data import generate_shapes

    root, n_train, n_val, seed, side = args
    return generate_shapes(root, n_train, n_val, seed=seed, variant=probe_variant(side))


def data_stage(probe: Probe) -> dict[str, Any]:
    """Generate the dataset in one chunk per core, then merge the chunks into one COCO set."""
    from detkit.data.groundtruth import write_coco

    p, t0 = probe.plan, time.perf_counter()
    chunks = max(1, min(len(os.sched_getaffinity(0)), 16, p.n_train // 8))
    parts = probe.work / "parts"
    jobs = [
        (parts / str(k), _share(p.n_train, chunks, k), _share(p.n_val, chunks, k), k, p.side)
        for k in range(chunks)
    ]
    with ProcessPoolExecutor(chunks) as pool:
        roots = list(pool.map(_generate_chunk, jobs))
    root = probe.work / "data"
    counts = {}
    for split in ("train", "val"):
        images, annotations, categories = [], [], []
        (root / "images" / split).mkdir(parents=True)
        for k, part in enumerate(roots):
            coco = json.loads((part / f"annotations/instances_{split}.json").read_text())
            categories = coco["categories"]
            ids = {}
            for im in coco["images"]:
                ids[im["id"]] = len(images) + 1
                name = f"{k:02d}_{im['file_name']}"
                (part / "images" / split / im["file_name"]).rename(root / "images" / split / name)
                images.append({**im, "id": ids[im["id"]], "file_name": name})
            for a in coco["annotations"]:
                annotations.append(
                    {**a, "id": len(annotations) + 1, "image_id": ids[a["image_id"]]}
                )
        write_coco(root / f"annotations/instances_{split}.json", images, annotations, categories)
        counts[split] = len(images)
    shutil.rmtree(parts)
    probe.data = root
    ok = counts == {"train": p.n_train, "val": p.n_val}
    seconds = time.perf_counter() - t0
    return {
        "verdict": PASS if ok else FAIL, "images": counts, "classes": len(categories),
        "processes": chunks, "images_per_s": round((p.n_train + p.n_val) / seconds, 1),
        "threshold": f"{p.n_train} + {p.n_val} images written",
    }  # fmt: skip


def _share(n: int, parts: int, k: int) -> int:
    return n // parts + (k < n % parts)


# -- the model's ceiling -----------------------------------------------------------------------
CEILING = {  # name -> (autocast dtype, channels_last)
    "bf16+channels_last": (torch.bfloat16, True),
    "bf16": (torch.bfloat16, False),
    "fp32": (None, False),
}


def ceiling_stage(probe: Probe) -> dict[str, Any]:
    """The trainer's step on batches already on the device: what the GPU can do when data
    loading costs nothing. One trainer serves the three configurations (its autocast dtype and
    memory layout switched), so no earlier model stays in memory under a later reading."""
    from detkit.api import build_trainer
    from detkit.config import load_config
    from detkit.data import set_loader_epoch

    extra = ["workers=0", "amp=false", "channels_last=false", "name=ceiling"]
    trainer = build_trainer(load_config(overrides=probe.overrides("ceiling", *extra)))
    set_loader_epoch(trainer.train_loader, 0)
    batches = []
    for batch in trainer.train_loader:
        batches.append(batch.to(probe.device))
        if len(batches) == min(len(trainer.train_loader), 4):
            break
    trainer.net.train()
    rows = {}
    for name, (dtype, channels_last) in CEILING.items():
        trainer.opts = dataclasses.replace(trainer.opts, amp=dtype, channels_last=channels_last)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        trainer.model.to(memory_format=layout)
        rows[name] = _ceiling_row(probe, trainer, batches)
    release(trainer)
    fast, fp32 = rows["bf16+channels_last"]["images_per_s"], rows["fp32"]["images_per_s"]
    ok = probe.smoke or fast >= fp32
    return {
        "verdict": PASS if ok else FAIL, **rows, "speedup_vs_fp32": round(fast / fp32, 2),
        "threshold": "bf16+channels_last at least as fast as fp32 (smoke: runs)",
    }  # fmt: skip


def _ceiling_row(probe: Probe, trainer: Any, batches: list[Any]) -> dict[str, Any]:
    """Images/s over ``plan.steps`` steps after 3 warm-up steps, host syncs in one step, peak
    memory (CUDA)."""
    p = probe.plan

    def step(i: int) -> None:
        b = batches[i % len(batches)]
        trainer.step(b)

    for i in range(3):
        step(i)
    sync(probe.device)
    syncs = _count_syncs(probe.device, lambda: step(3))
    if probe.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(probe.device)
    sync(probe.device)
    t0 = time.perf_counter()
    for i in range(p.steps):
        step(i)
    sync(probe.device)
    seconds = time.perf_counter() - t0
    row = {"images_per_s": round(p.steps * p.batch / seconds, 1), "host_syncs_per_step": syncs}
    if probe.device.type == "cuda":
        row["peak_mib"] = round(torch.cuda.max_memory_allocated(probe.device) / 2**20)
    return row


def _count_syncs(device: torch.device, step: Callable[[], None]) -> int | None:
    """Host syncs in one step, from CUDA's sync debug mode warnings (None on CPU)."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


# -- end to end ------------------------------------------------------------------------------
def fit_stage(probe: Probe) -> dict[str, Any]:
    many = workers_per_core()
    rows = {f"workers_{many}": _fit_row(probe, many)}
    if many != 2:  # the contrast: the loader's share; best.pt's report was timed above
        rows["workers_2"] = _fit_row(probe, 2, report=False)
    best = rows[f"workers_{many}"]
    ok = probe.smoke or (best["data_wait"] < 0.5 and best["mAP50"] == best["mAP50"])
    return {
        "verdict": PASS if ok else FAIL, **rows,
        "threshold": "data wait < 50% of the epoch with a worker per core; validation scored",
    }  # fmt: skip


def workers_per_core(most: int = 16) -> int:
    """A loader worker per core but one (the training process's), 2 to ``most``."""
    return max(2, min(len(os.sched_getaffinity(0)) - 1, most))


def _fit_row(probe: Probe, workers: int, report: bool = True) -> dict[str, Any]:
    """One epoch of ``fit()``; ``report``: also the evaluation of best.pt a finished run
    writes (VOC AP, confusion matrix, error breakdown), timed on its own."""
    from detkit.api import build_trainer
    from detkit.config import load_config

    cfg = load_config(overrides=probe.overrides(
        "fit", f"workers={workers}", "mosaic=1.0", f"name=w{workers}", "eval_every=1",
    ))  # fmt: skip
    trainer = build_trainer(cfg)
    validate, seconds = trainer.validate, []

    def timed_validate():
        t0 = time.perf_counter()
        out = validate()
        seconds.append(time.perf_counter() - t0)
        return out

    trainer.validate = timed_validate
    evaluate_best, report_s = trainer._evaluate_best, []

    def timed_report() -> None:
        t0 = time.perf_counter()
        if report:
            evaluate_best()
        report_s.append(time.perf_counter() - t0)

    trainer._evaluate_best = timed_report
    t0 = time.perf_counter()
    run_dir = trainer.fit()
    total = time.perf_counter() - t0
    images_per_s, wait = trainer.speed.summary()
    history = trainer.state.history[-1]
    probe.weights = run_dir / "last.pt"
    release(trainer)
    return {
        "images_per_s": round(images_per_s, 1), "data_wait": round(wait, 3),
        "val_images_per_s": round(probe.plan.n_val / seconds[0], 1) if seconds else None,
        "mAP50": history.get("mAP50"), "wall_s": round(total, 1),
        **({"best_report_s": round(report_s[0], 1)} if report and report_s else {}),
    }  # fmt: skip


# -- AMP parity ------------------------------------------------------------------------------
PARITY = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PARITY_TOLERANCE = 0.10  # relative, on the mean loss of the last 10 updates


def amp_stage(probe: Probe) -> dict[str, Any]:
    """The same 50 updates in fp32 (TF32 off), bf16 and fp16: the losses must agree."""
    rows = {name: _parity_row(probe, name, dtype) for name, dtype in PARITY.items()}
    ref = rows["fp32"]["final_loss"]
    ok = True
    for name in ("bf16", "fp16"):
        rows[name]["vs_fp32"] = round(rows[name]["final_loss"] / ref - 1, 4)
        ok &= abs(rows[name]["vs_fp32"]) <= PARITY_TOLERANCE and rows[name]["skipped"] == 0
    return {
        "verdict": PASS if ok or probe.smoke else FAIL, **rows,
        "threshold": f"bf16 and fp16 final loss within {PARITY_TOLERANCE:.0%} of fp32's, no "
        "non-finite skips (fp16 overflows counted, allowed); smoke: runs",
    }  # fmt: skip


def _parity_row(probe: Probe, name: str, dtype: Any) -> dict[str, Any]:
    from detkit.api import build_trainer
    from detkit.config import load_config

    p = probe.plan
    amp = [f"amp={str(dtype is not None).lower()}"]
    amp += [f"amp_dtype={'fp16' if dtype == torch.float16 else 'bf16'}"] if dtype else []
    cfg = load_config(overrides=probe.overrides(
        "amp", *amp, f"workers={workers_per_core(8)}", f"max_steps={p.updates}", "epochs=100", "eval_every=1000",
        "channels_last=false", f"name={name}",
    ))  # fmt: skip
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        trainer = build_trainer(cfg)
        if probe.smoke and dtype is not None:  # CPU autocast; fp16 with a CPU GradScaler
            trainer.opts = dataclasses.replace(trainer.opts, amp=dtype)
            scaler = torch.amp.GradScaler("cpu", enabled=dtype == torch.float16)
            trainer.updater.scaler = scaler
        losses: list[float] = []
        update = trainer.updater.step

        def recording(pending, state, signum):
            losses.append(float(sum(parts.sum() for parts, _ in pending) / len(pending)))
            return update(pending, state, signum)

        trainer.updater.step = recording
        trainer.fit()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    s = trainer.state
    release(trainer)
    tail = [x for x in losses[-10:] if x == x and abs(x) != float("inf")]
    return {
        "final_loss": round(statistics.fmean(tail), 4) if tail else float("nan"),
        "first_loss": round(losses[0], 4), "skipped": s.skipped, "overflows": s.overflows,
    }  # fmt: skip


# -- inference -------------------------------------------------------------------------------
def predict_stage(probe: Probe) -> dict[str, Any]:
    from detkit.inference.predict import Detector

    if probe.weights is None:
        return {"verdict": SKIP, "reason": "no checkpoint: the fit stage did not run"}
    p = probe.plan
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (*p.side, 3), dtype=np.uint8) for _ in range(p.big_batch)]
    eager = Detector.from_checkpoint(probe.weights, device=str(probe.device), conf=0.25)
    row = {
        "eager_b1_ms": _latency(eager, images[:1], p.repeats, probe.device),
        f"eager_b{p.big_batch}_ms_per_image": _latency(eager, images, 3, probe.device),
    }
    onnx, reason = _onnx_latency(probe, images)
    row |= onnx
    ok = row["eager_b1_ms"] > 0
    verdict = PASS if ok else FAIL
    if reason and verdict == PASS and not probe.smoke:
        verdict = SKIP
    return {"verdict": verdict, **row, **({"reason": reason} if reason else {}),
            "threshold": "eager runs; ONNX Runtime on CUDA when installed"}  # fmt: skip


def _latency(det: Any, images: list[np.ndarray], repeats: int, device: torch.device) -> float:
    """Median milliseconds per image of ``det.predict(images)`` (after one warm-up call)."""
    det.predict(images if len(images) > 1 else images[0])
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        det.predict(images if len(images) > 1 else images[0])
        sync(device)
        times.append((time.perf_counter() - t0) / len(images))
    return round(1000 * statistics.median(times), 2)


def _onnx_latency(probe: Probe, images: list[np.ndarray]) -> tuple[dict[str, Any], str]:
    """ONNX Runtime on CUDA; on a CPU (or without the CUDA provider) the same export runs on
    the CPU provider and the reason is given."""
    try:
        import onnxruntime
    except ImportError:
        return {}, "onnxruntime is not installed"
    from detkit.inference.export import export_checkpoint
    from detkit.inference.predict import Detector

    cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    path = export_checkpoint(probe.weights, probe.work / "model.onnx")
    device = "cuda" if cuda and probe.device.type == "cuda" else "cpu"
    det = Detector.from_checkpoint(path, device=device, conf=0.25)
    row = {f"onnx_{device}_b1_ms": _latency(det, images[:1], probe.plan.repeats, probe.device)}
    reason = "" if device == "cuda" else (
        "ONNX Runtime has no CUDAExecutionProvider here (onnxruntime-gpu): ran on the CPU"
    )  # fmt: skip
    return row, reason


def nms_stage(probe: Probe) -> dict[str, Any]:
    """Post-processing alone (c·p, threshold, top-k, class-aware NMS) on decoded outputs at the
    counts a trained model (few candidates above conf 0.25) and an untrained one at validation's
    conf 0.001 (every prior, capped at PRE_NMS_TOPK) produce."""
    from detkit.inference.postprocess import postprocess

    p = probe.plan
    priors = sum((p.img_size // s) ** 2 for s in (8, 16, 32))
    classes, batch = 80, p.big_batch
    g = torch.Generator(device="cpu").manual_seed(0)
    boxes = torch.rand(batch, priors, 4, generator=g) * p.img_size
    boxes = torch.cat([boxes[..., :2], boxes[..., :2] + 8 + boxes[..., 2:] / 4], -1)
    cases = {
        "trained_like": (torch.full((batch, priors), 0.01), 0.25, 300),  # ~300 above 0.25
        "untrained_like": (torch.rand(batch, priors, generator=g), 0.001, priors),
    }
    row = {"priors": priors, "classes": classes, "batch": batch}
    for name, (obj, conf, hot) in cases.items():
        obj, hot = obj.clone(), min(hot, priors)
        obj[:, :hot] = torch.rand(batch, hot, generator=g) * 0.5 + 0.5
        probs = torch.softmax(torch.randn(batch, priors, classes, generator=g) * 3, -1)
        args = [t.to(probe.device) for t in (boxes, obj, probs)]
        postprocess(*args, conf=conf)  # warm-up
        times = []
        for _ in range(3):
            sync(probe.device)
            t0 = time.perf_counter()
            kept = postprocess(*args, conf=conf)
            sync(probe.device)
            times.append(time.perf_counter() - t0)
        row[f"{name}_ms_per_image"] = round(1000 * min(times) / batch, 3)
        row[f"{name}_kept"] = int(sum(len(k[0]) for k in kept))
    limit = 5.0
    ok = probe.smoke or row["untrained_like_ms_per_image"] < limit
    return {"verdict": PASS if ok else FAIL, **row,
            "threshold": f"untrained-like < {limit} ms per image (smoke: runs)"}  # fmt: skip


# -- compile, DDP: subprocesses with a cap ---------------------------------------------------
def compile_stage(probe: Probe) -> dict[str, Any]:
    cap = min(probe.plan.compile_cap_s, max(probe.left() - 5, 10))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--compile-child", str(probe.data),
           "--out", str(probe.work), *(["--smoke"] if probe.smoke else [])]  # fmt: skip
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=cap)
    except subprocess.TimeoutExpired:
        return {"verdict": FAIL, "reason": f"not done in {cap:.0f} s (the cap)"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"verdict": FAIL, "reason": f"exit {done.returncode}: {done.stderr[-800:]}"}
    row = json.loads(lines[-1])
    ok = row["compiled"] and (probe.smoke or row["speedup"] >= 1.0)
    return {"verdict": PASS if ok else FAIL, **row,
            "threshold": "compiled (no fallback) and the step at least as fast as eager"}  # fmt: skip


def compile_child(data: Path, out: Path, smoke: bool) -> None:
    """In the capped subprocess: the same steps eager and with ``compile=true``; one JSON line.

    On a CPU (``--smoke``) dynamo runs with its ``eager`` backend: the tracing, the warm-up and
    the fallback logic run, inductor's C++ code generation (minutes on 2 cores) does not."""
    import logging

    from detkit.api import build_trainer
    from detkit.config import load_config
    from detkit.data import set_loader_epoch

    plan = SMOKE if smoke else FULL
    probe = Probe(out, plan, 1e9, smoke)
    probe.data = data
    if smoke:
        compile_fn = torch.compile
        torch.compile = lambda m, **kw: compile_fn(m, backend="eager", **kw)
    fallbacks: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: fallbacks.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("detkit.engine.trainer").addHandler(handler)
    row: dict[str, Any] = {"backend": "eager (smoke: dynamo only)" if smoke else "inductor"}
    times = {}
    for name in ("eager", "compiled"):
        flag = f"compile={str(name == 'compiled').lower()}"
        t0 = time.perf_counter()
        trainer = build_trainer(load_config(overrides=probe.overrides(
            "compile", flag, "workers=0", f"name={name}")))  # fmt: skip
        if name == "compiled":
            row["warm_up_s"] = round(time.perf_counter() - t0, 1)
            row["compiled"] = trainer.net is not trainer.ddp_module
        set_loader_epoch(trainer.train_loader, 0)
        batch = next(iter(trainer.train_loader)).to(probe.device)
        trainer.net.train()
        for i in range(3 + plan.steps):
            if i == 3:
                sync(probe.device)
                t0 = time.perf_counter()
            trainer.step(batch)
        sync(probe.device)
        times[name] = (time.perf_counter() - t0) / plan.steps
        release(trainer)
    row["speedup"] = round(times["eager"] / times["compiled"], 3)
    row["step_ms"] = {k: round(1000 * v, 1) for k, v in times.items()}
    row["fallback"] = next((m for m in fallbacks if "compile=true failed" in m), "")
    print(json.dumps(row), flush=True)


def ddp_stage(probe: Probe) -> dict[str, Any]:
    """torchrun with one process: the launch, the process group, DDP wrapping, rank 0's
    checkpoint. NCCL on a GPU; gloo on a CPU (then SKIP: NCCL needs CUDA)."""
    project = probe.work / "ddp"
    args = [a for a in probe.overrides("ddp", "workers=2", "max_steps=3", "name=ddp")
            if not a.startswith("device=")]  # fmt: skip
    device = ["device=cpu"] if probe.device.type == "cpu" else []
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           str(ROOT / "tools/train.py"), *args, *device]  # fmt: skip
    cap = max(min(probe.left() - 10, 240), 10)
    # tools/train.py imports detkit: from this checkout, installed or not (a bare GPU image)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=cap,
                              env={**os.environ, "PYTHONPATH": path})  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"verdict": FAIL, "reason": f"not done in {cap:.0f} s"}
    last = project / "ddp" / "last.pt"
    ok = done.returncode == 0 and last.is_file()
    backend = "nccl" if probe.device.type == "cuda" else "gloo"
    row: dict[str, Any] = {"backend": backend, "exit": done.returncode}
    if not ok:
        return {"verdict": FAIL, **row, "reason": done.stderr[-800:]}
    if backend == "gloo":
        return {"verdict": SKIP, **row, "reason": "NCCL needs CUDA; the same launch ran with gloo"}
    return {"verdict": PASS, **row, "threshold": "exit 0 and last.pt written"}


STAGES: dict[str, Callable[[Probe], dict[str, Any]]] = {
    "env": env_stage, "data": data_stage, "ceiling": ceiling_stage, "fit": fit_stage,
    "amp": amp_stage, "predict": predict_stage, "nms": nms_stage, "ddp": ddp_stage,
    "compile": compile_stage,
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/gpu_probe", help="results.jsonl goes here")
    p.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="seconds for all stages (default 450; --smoke: none)",
    )
    p.add_argument("--smoke", action="store_true", help="every stage on CPU at tiny sizes")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    p.add_argument("--compile-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.compile_child:
        compile_child(Path(args.compile_child), Path(args.out), args.smoke)
        return 0
    plan = SMOKE if args.smoke else FULL
    deadline = args.deadline or (1e6 if args.smoke else 450.0)
    probe = Probe(Path(args.out), plan, deadline, args.smoke)
    print(f"gpu_probe: {probe.device}, {'smoke' if args.smoke else 'full'} plan, deadline "
          f"{deadline:.0f} s, results in {probe.out / 'results.jsonl'}", flush=True)  # fmt: skip
    try:
        for name in ["env", "data", *[s for s in args.stages if s not in ("env", "data")]]:
            probe.run(name, STAGES[name])
    finally:
        shutil.rmtree(probe.work, ignore_errors=True)
    failed = [r["stage"] for r in probe.results if r["verdict"] == FAIL]
    verdict = {"stage": "verdict", "verdict": FAIL if failed else PASS, "failed": failed,
               "seconds": round(time.monotonic() - probe.start, 1)}  # fmt: skip
    with open(probe.out / "results.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(verdict) + "\n")
    print(f"verdict: {verdict['verdict']}" + (f" (failed: {', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
