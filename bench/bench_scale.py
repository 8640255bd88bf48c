"""A COCO-sized split opened, checked, loaded and evaluated: the scale numbers of issue 25.

Run from the repository root: ``python bench/bench_scale.py [--root DIR] [--train N]
[--boxes M] [--val V] [--skip check open eval] [--errors-limit L]``. It writes (once, under
``--root``, default ``/tmp/detkit_scale``) a COCO-layout dataset of 64x64 JPEGs: ``--train``
images holding ``--boxes`` boxes of 80 classes (COCO's category ids), a ``--val`` split, and a
500-image reference split over the same train images (``annotations/instances_ref.json``).
Then, each in a fresh process (wall time and peak RSS from ``wait4``; every number printed
against its target in the last column):

- ``check-data first``: ``detkit.check_data`` of both splits with an empty ``DETKIT_HOME``
  (every image probed and decoded once); ``check-data cached``: the same again;
- ``open train, first``: ``build_dataset`` of the train split as training opens it, its split
  cache removed (the decode verdicts of check-data kept: parsing and checks only);
  ``open train, cached``: again, from the cache, and what it added to the process's memory;
- ``worker memory``: a process forked from the one that opened the split (as loader workers
  are) reads every image's record once and collects garbage, as a worker has by the end of an
  epoch; its private memory (``Private_Dirty`` of ``/proc/PID/smaps_rollup``: the pages
  copied for it; clean pages of the memory-mapped split are page cache shared with every
  process) against the same over the 500-image reference split: the difference is what the
  split costs each worker (the rest is the interpreter's own objects, any split);
- ``eval``: ``detkit eval`` of an untrained 80-class model whose every (box, class) pair passes
  ``conf=0.001``, so ``max_det`` = 300 detections per image (1.5 M at 5,000 images), with the
  default error breakdown (``--errors-limit`` to change it); its time, peak memory, the lines
  ``predictions.jsonl`` held before scoring, and the breakdown's share of the scoring time or
  the line that says it was skipped (from ``metrics.json``).

Targets (issue 25): cached open <= 5 s; per-worker split memory <= 20 MiB; error breakdown <=
25% of scoring at 1.5 M detections, or off by default above a stated size; eval memory <= 2 GB.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run without installing detkit

CLASSES = 80
REF_IMAGES = 500
SIDE = 64


def coco_categories() -> list[dict]:
    """80 categories with sparse ids (1..90 with COCO's ten gaps)."""
    gaps = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    ids = [i for i in range(1, 91) if i not in gaps][:CLASSES]
    return [{"id": c, "name": f"class{c}", "supercategory": ""} for c in ids]


def write_split(root: Path, folder: str, ann: str, n: int, n_boxes: int, seed: int) -> None:
    """``n`` 64x64 JPEGs in ``root/folder`` and their COCO file ``root/annotations/ann``."""
    import cv2

    rng = np.random.default_rng(seed)
    (root / folder).mkdir(parents=True, exist_ok=True)
    cats = coco_categories()
    counts = rng.multinomial(n_boxes, np.full(n, 1.0 / n)) if n else np.zeros(0, int)
    images, anns = [], []
    for i in range(n):
        name = f"{i:012d}.jpg"
        path = root / folder / name
        colour, (x, y) = rng.integers(0, 256, 3, dtype=np.uint8), rng.integers(0, SIDE - 16, 2)
        if not path.exists():  # drawn either way: the boxes do not depend on what existed
            image = np.empty((SIDE, SIDE, 3), np.uint8)
            image[:] = colour
            image[y : y + 16, x : x + 16] = 255 - colour
            ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            assert ok
            path.write_bytes(data.tobytes())
        images.append({"id": i + 1, "file_name": name, "height": SIDE, "width": SIDE})
        for _ in range(int(counts[i])):
            x, y = rng.uniform(0, SIDE - 8, 2)
            w, h = rng.uniform(4, SIDE - max(x, y), 2)
            cat = cats[int(rng.integers(0, CLASSES))]["id"]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat,
                         "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                         "area": round(w * h, 2), "iscrowd": 0})  # fmt: skip
    doc = {"images": images, "annotations": anns, "categories": cats}
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / ann).write_text(json.dumps(doc))


def generate(root: Path, n_train: int, n_boxes: int, n_val: int) -> None:
    """The dataset under ``root``, unless a previous run wrote it with the same sizes."""
    marker = root / "done.json"
    want = {"train": n_train, "boxes": n_boxes, "val": n_val, "version": 1}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return
    start = time.perf_counter()
    write_split(root, "train2017", "instances_train2017.json", n_train, n_boxes, 1)
    write_split(root, "val2017", "instances_val2017.json", n_val, n_val * n_boxes // n_train, 2)
    doc = json.loads((root / "annotations/instances_train2017.json").read_text())
    ref = [img for img in doc["images"] if img["id"] <= REF_IMAGES]
    doc = {**doc, "images": ref,
           "annotations": [a for a in doc["annotations"] if a["image_id"] <= REF_IMAGES]}  # fmt: skip
    (root / "annotations/instances_ref.json").write_text(json.dumps(doc))
    marker.write_text(json.dumps(want))
    print(f"generated {root} in {time.perf_counter() - start:.0f} s")


# -- phases, each run in a process of its own ---------------------------------------------------
def private_mib(pid: int) -> float:
    """Memory a process holds of its own, in MiB: ``Private_Dirty`` (pages it wrote, or the
    kernel copied for it). Clean private pages of a file mapping are page cache the kernel can
    drop and share again (a memory-mapped split read by one process only), so not counted."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def data_args(root: Path, ann: str = "instances_train2017.json") -> list[str]:
    return ["data=coco", f"root={root}", f"train_ann=annotations/{ann}", "img_size=64"]


def phase_check(root: Path, out: Path) -> dict:
    from detkit.api import check_data

    check_data(None, data_args(root), out=out)
    return {}


def phase_open(root: Path, ann: str) -> dict:
    from detkit.config import load_config
    from detkit.config.build import build_dataset

    cfg = load_config(None, data_args(root, ann))
    before = rss_mib()
    start, cpu = time.perf_counter(), time.process_time()
    split = build_dataset(cfg.data, "train")
    return {"seconds": time.perf_counter() - start, "cpu_s": time.process_time() - cpu,
            "added_mib": rss_mib() - before, "images": len(split)}  # fmt: skip


def phase_workers(root: Path, ann: str) -> dict:
    """Private memory of a process forked from the one that opened the split, after it read
    every image's record once and collected garbage: what a loader worker holds of its own by
    the end of an epoch (its reads and the collector write to every object they visit, and
    the kernel copies each page that holds one)."""
    from detkit.config import load_config
    from detkit.config.build import build_dataset

    split = build_dataset(load_config(None, data_args(root, ann)).data, "train")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the "worker"
        os.close(read)
        before = private_mib(os.getpid())
        for i in range(len(split)):
            split.image_path(i), split.targets(i), split.image_size(i)
        gc.collect()
        os.write(write, json.dumps([before, private_mib(os.getpid())]).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        before, after = json.loads(f.read())
    os.waitpid(pid, 0)
    return {"worker_private_mib": after, "at_fork_mib": before, "images": len(split)}


def make_weights(root: Path, path: Path) -> Path:
    """An untrained 80-class ``yolo_tiny`` whose every (box, class) pair scores about 0.01."""
    import torch

    import detkit
    from detkit.config import load_config
    from detkit.config.build import build_model, deploy_record
    from detkit.models.checkpoint import save_checkpoint

    cfg = load_config(None, [*data_args(root), "device=cpu", "workers=2", "batch=64"])
    cats = coco_categories()
    names, ids = [c["name"] for c in cats], [c["id"] for c in cats]
    torch.manual_seed(0)
    model = build_model(cfg.model, CLASSES)
    with torch.no_grad():
        for head in model.heads:
            bias = head.bias.view(model.num_anchors, 5 + CLASSES)
            bias[:, 4] = 3.0  # objectness ~0.95: c*p ~ 1/80 > conf 0.001 for every class
    state = model.eval().state_dict()
    ckpt = {"model": state, "ema": state, "config": cfg.to_dict(), "class_names": names,
            "cat_ids": ids, "deploy": deploy_record(cfg, names, ids).to_dict(), "epoch": 0,
            "step": 0, "best_map": -1.0, "history": [], "version": detkit.__version__}  # fmt: skip
    save_checkpoint(ckpt, path)
    return path


def phase_eval(root: Path, out: Path, errors_limit: int | None = None) -> dict:
    from detkit.cli import main

    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)  # detkit eval writes runs/eval/<name> here
    weights = make_weights(root, out / "weights.pt")
    stream = StreamWatch(out / "runs/eval/e/predictions.jsonl")
    stream.start()
    limit = [] if errors_limit is None else [f"errors_limit={errors_limit}"]
    rc = main(["eval", "--weights", str(weights), "--name", "e", "split=val", *data_args(root),
               "workers=2", "batch=64", *limit])  # fmt: skip
    stream.set()
    metrics = out / "runs/eval/e/metrics.json"
    if rc != 0 or not metrics.is_file():
        return {"rc": rc}
    m = json.loads(metrics.read_text())
    predict = m["num_images"] / m["images_per_s"]
    scoring = m["eval_seconds"] - predict
    errors = m.get("errors") or {}
    seconds = errors.get("seconds")
    dets = len(json.loads((metrics.parent / "predictions.json").read_text()))
    return {"rc": rc, "images": m["num_images"], "detections": dets, "predict_s": predict,
            "scoring_s": scoring, "errors_s": seconds, "errors_skipped": errors.get("skipped"),
            "errors_share": seconds / scoring if seconds is not None else None,
            "streamed_lines": stream.lines}  # fmt: skip


class StreamWatch(threading.Thread):
    """Counts the lines of ``predictions.jsonl`` while ``detkit eval`` runs: the largest count
    seen is what was on disk before scoring (the file goes once predictions.json is written)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.lines, self.done = path, 0, threading.Event()

    def run(self) -> None:
        f = None
        while not self.done.wait(1.0):
            try:
                f = f or open(self.path, "rb")  # noqa: SIM115 (kept open: read what was added)
            except OSError:
                continue
            while chunk := f.read(1 << 20):  # only the bytes written since the last look
                self.lines += chunk.count(b"\n")
        if f is not None:
            f.close()

    def set(self) -> None:
        self.done.set()
        self.join()


PHASES = {"check": phase_check, "open": phase_open, "workers": phase_workers}


def run_phase(
    name: str, root: Path, arg: str, env: dict[str, str], limit: float = 0, extra: tuple = ()
) -> dict:
    """Run one phase in a fresh process (killed after ``limit`` seconds when > 0; ``extra``:
    more command-line arguments); its result with ``wall_s`` and ``peak_mib`` added."""
    cmd = [sys.executable, __file__, "--phase", name, "--root", str(root), "--arg", arg, *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    timer = threading.Timer(limit, proc.kill) if limit > 0 else None
    if timer is not None:
        timer.start()
    output = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    if timer is not None:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    lines = [x for x in output.splitlines() if x.startswith("RESULT ")]
    result = json.loads(lines[-1][7:]) if lines else {"failed": proc.returncode}
    cpu = usage.ru_utime + usage.ru_stime  # with the process's own children (decode workers)
    return {**result, "wall_s": wall, "proc_cpu_s": cpu, "peak_mib": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/detkit_scale"))
    parser.add_argument("--train", type=int, default=100_000)
    parser.add_argument("--boxes", type=int, default=702_000)
    parser.add_argument("--val", type=int, default=5_000)
    parser.add_argument("--skip", nargs="*", default=[], choices=["check", "open", "eval"])
    parser.add_argument("--eval-limit", type=float, default=1200, help="seconds (0: none)")
    parser.add_argument(
        "--errors-limit",
        type=int,
        default=None,
        help="eval.errors_limit of the eval step (default: detkit's)",
    )
    parser.add_argument("--work", type=Path, default=None, help="default: ROOT/work (emptied)")
    parser.add_argument("--phase", default="")
    parser.add_argument("--arg", default="")
    args = parser.parse_args()
    if args.phase:  # a child process
        if args.phase == "eval":
            result = phase_eval(args.root, Path(args.arg), args.errors_limit)
        else:
            result = PHASES[args.phase](
                args.root, Path(args.arg) if args.phase == "check" else args.arg
            )
        print("RESULT " + json.dumps(result), flush=True)
        return
    root = args.root.resolve()
    generate(root, args.train, args.boxes, args.val)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load}, python "
          f"{platform.python_version()}; {args.train} train images / {args.boxes} boxes, "
          f"{args.val} val images, 80 classes, 64x64 JPEG; {time.strftime('%Y-%m-%d')}")  # fmt: skip
    work = (args.work or root / "work").resolve()
    env = {**os.environ, "DETKIT_HOME": str(work / "home"), "OMP_NUM_THREADS": "1"}
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    rows: list[tuple[str, object, object, str, str]] = []
    if "check" not in args.skip:
        first = run_phase("check", root, str(work / "check1"), env)
        cached = run_phase("check", root, str(work / "check2"), env)
        rows += [("check-data, first (empty DETKIT_HOME)", first["wall_s"], first["peak_mib"],
                  f"CPU {first['proc_cpu_s']:.0f} s (with its decode workers)", ""),
                 ("check-data, cached", cached["wall_s"], cached["peak_mib"],
                  f"CPU {cached['proc_cpu_s']:.0f} s", "")]  # fmt: skip
    if "open" not in args.skip:
        rows += open_rows(root, work, env, decoded="check" not in args.skip)
    if "eval" not in args.skip:
        extra = () if args.errors_limit is None else ("--errors-limit", str(args.errors_limit))
        rows.append(
            eval_row(run_phase("eval", root, str(work / "eval"), env, args.eval_limit, extra))
        )
    print("| step | seconds | peak MiB | notes | against the target |")
    print("| --- | --- | --- | --- | --- |")
    for name, sec, peak, note, target in rows:
        s = f"{sec:.1f}" if isinstance(sec, float) else sec
        p = f"{peak:.0f}" if isinstance(peak, float) else peak
        print(f"| {name} | {s} | {p} | {note} | {target} |")


def verdict(value: float, limit: float, unit: str) -> str:
    """``value`` against an upper ``limit``: ``"1.6 s / 5 s = 0.32, met"``."""
    num = lambda x: f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"  # noqa: E731
    ok = "met" if value <= limit else f"MISSED by {num(value - limit)} {unit}"
    return f"{num(value)} {unit} / {limit:g} {unit} = {value / limit:.2f}, {ok}"


def open_rows(root: Path, work: Path, env: dict[str, str], decoded: bool) -> list[tuple]:
    """The train split opened as training opens it, first without its split cache (the
    decode verdicts kept when check-data ran before: parsing and checks only), then cached;
    and the private memory of a loader worker forked from the process that opened it."""
    shutil.rmtree(work / "home/cache/splits", ignore_errors=True)
    first = run_phase("open", root, "instances_train2017.json", env)
    o = run_phase("open", root, "instances_train2017.json", env)
    what = "decode verdicts cached" if decoded else "every image decoded"
    rows = [(f"open train split, first (no split cache, {what})", first["seconds"],
             first["peak_mib"], f"CPU {first['cpu_s']:.1f} s in the process", ""),
            ("open train split, cached", o["seconds"], o["peak_mib"],
             f"CPU {o['cpu_s']:.1f} s; +{o['added_mib']:.0f} MiB in the process",
             verdict(o["seconds"], 5, "s"))]  # fmt: skip
    ref = run_phase("workers", root, "instances_ref.json", env)
    big = run_phase("workers", root, "instances_train2017.json", env)
    share = big["worker_private_mib"] - ref["worker_private_mib"]
    rows.append(("loader worker after an epoch: the split's private memory", "", "",
                 f"Private_Dirty {big['worker_private_mib']:.0f} MiB, {REF_IMAGES}-image "
                 f"split {ref['worker_private_mib']:.0f} MiB (the rest: the interpreter's "
                 "objects the collector visits)", verdict(share, 20, "MiB")))  # fmt: skip
    return rows


def eval_row(e: dict) -> tuple:
    """The row of ``detkit eval``: detections, streaming, the breakdown's share, memory."""
    if e.get("rc") != 0:
        note = f"no metrics.json (exit status {e.get('failed', e.get('rc'))})"
        return ("detkit eval (val split)", e["wall_s"], e["peak_mib"], note,
                verdict(e["peak_mib"], 2048, "MiB"))  # fmt: skip
    share = e["errors_share"]
    if share is not None:
        errors = f"error breakdown {e['errors_s']:.1f} s; " + verdict(100 * share, 25, "%")
    else:
        errors = "error breakdown off: " + (e["errors_skipped"] or "eval.errors=off")
    note = (f"{e['detections']} detections, {e['streamed_lines']} streamed to "
            f"predictions.jsonl before scoring; predict {e['predict_s']:.0f} s, scoring "
            f"{e['scoring_s']:.0f} s; CPU {e['proc_cpu_s']:.0f} s")  # fmt: skip
    return ("detkit eval (val split)", e["wall_s"], e["peak_mib"], note,
            f"memory {verdict(e['peak_mib'], 2048, 'MiB')}; {errors}")  # fmt: skip


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crashing child leaves no core file
    main()
