"""detkit's nano model against YOLOv8n, trained from scratch side by side on the hard shapes set.

Run from the repository root: ``python bench/bench_peer.py [--epochs 15] [--num-train 1000]``.

1. Generates the hard benchmark set (:mod:`detkit.data.shapes_hard`) and writes a YOLO-format
   copy (symlinked images) for the peer.
2. Installs Ultralytics (pinned) into a throw-away venv under ``bench/.peer/`` that reuses this
   environment's torch through a ``.pth`` file; it is never a dependency of detkit, never
   imported by it, and runs offline (``YOLO_OFFLINE=True``, ``plots=False``, ``amp=False``, its
   settings folder inside ``bench/.peer/``). ``bench/peer_yolo.py`` is the peer's side.
3. Trains YOLOv8n (``batch=16 nbs=16``, its defaults otherwise) and detkit's model (``--detkit``
   overrides) at the same time, each pinned to its own core with one thread, no loader workers,
   keeping every epoch's weights; wall time is taken at the end of each training epoch.
4. Scores every epoch of both with one pycocotools function on the same COCO ground truth
   (conf 0.001; each side's own NMS settings), and prints mAP50-95 against elapsed time, the
   time ratio to reach YOLOv8n's final mAP50-95, the final mAP at equal epochs, batch-1 latency
   (PyTorch eager for both, ONNX Runtime for detkit), parameters, GFLOPs, peak memory (max RSS
   of each training process) and training images/s.

Budgets are arguments, so a smoke run takes minutes (``--epochs 1 --num-train 32 --num-val 8``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run without installing detkit

ULTRALYTICS = "ultralytics==8.3.40"
DETKIT_RECIPE = ["model=yolo_n", "mosaic=1.0"]


def peer_python(work: Path) -> Path:
    """The throw-away venv's interpreter, created on first use (torch shared via a .pth)."""
    venv = work / "venv"
    py = venv / "bin" / "python"
    if (venv / ".ready").is_file():
        return py
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "detkit_torch.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", ULTRALYTICS], check=True)
    (venv / ".ready").write_text(ULTRALYTICS + "\n")
    return py


def peer_env(work: Path) -> dict[str, str]:
    env = dict(os.environ, YOLO_OFFLINE="True", YOLO_CONFIG_DIR=str(work / "config"))
    return env | one_thread_env()


def one_thread_env() -> dict[str, str]:
    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    return dict(os.environ) | dict.fromkeys(keys, "1")


def prepare_data(work: Path, num_train: int, num_val: int) -> tuple[Path, Path, Path]:
    """The hard set (COCO) and its YOLO copy; returns (coco root, val ann file, data.yaml)."""
    from detkit.data import CocoDataset, convert_dataset, ensure_shapes, shapes_split
    from detkit.data.shapes_hard import HARD

    root = ensure_shapes(None, num_train, num_val, 0, variant=HARD)
    out = work / f"yolo-{root.name}"
    # the copy links to the COCO images: rebuild it when they moved (a test's temporary home)
    first = (
        next((out / "images/train").glob("*"), None) if (out / "images/train").is_dir() else None
    )
    if (
        not (out / "data.yaml").is_file()
        or first is None
        or not first.resolve().is_relative_to(root)
    ):
        shutil.rmtree(out, ignore_errors=True)
        sources = {s: CocoDataset(*shapes_split(root, s)) for s in ("train", "val")}
        convert_dataset(sources, "yolo", out, images="symlink")
    return root, shapes_split(root, "val")[0], out / "data.yaml"


def pinned(core: int, argv: list[str]) -> list[str]:
    """``argv`` pinned to one core when taskset exists and there are two cores or more."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(core), *argv]
    return argv


def run_side_by_side(jobs: dict[str, tuple[list[str], dict, Path]]) -> dict[str, dict]:
    """Start every job at once; return per job its wall time, peak RSS (MiB) and exit code."""
    procs = {}
    for name, (argv, env, log) in jobs.items():
        f = open(log, "w")  # noqa: SIM115 - closed below
        procs[name] = (subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT), f)
    start, out = time.perf_counter(), {}
    pending = {p.pid: name for name, (p, _) in procs.items()}
    while pending:
        pid, status, usage = os.wait4(-1, 0)
        if pid not in pending:
            continue
        name = pending.pop(pid)
        procs[name][1].close()
        out[name] = {
            "wall_s": time.perf_counter() - start,
            "peak_mb": usage.ru_maxrss / 1024,
            "rc": os.waitstatus_to_exitcode(status),
        }
    for name, (p, _) in procs.items():
        p.returncode = out[name]["rc"]
    return out


def coco_scores(ann_file: Path, results: list[dict]) -> dict[str, float]:
    """COCO mAP50-95, mAP50 and AP_small of ``results`` (the one pycocotools call both use)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {"mAP50-95": 0.0, "mAP50": 0.0, "AP_small": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"mAP50-95": ev.stats[0], "mAP50": ev.stats[1], "AP_small": ev.stats[3]}


def val_images(ann_file: Path, images_dir: Path) -> list[dict]:
    gt = json.loads(ann_file.read_text())
    return [{"id": im["id"], "path": str(images_dir / im["file_name"])} for im in gt["images"]]


def detkit_results(weights: Path, images: list[dict]) -> list[dict]:
    """COCO results of one detkit checkpoint at conf 0.001 (category id from the checkpoint)."""
    from detkit.predict import Detector

    det = Detector.from_checkpoint(weights, device="cpu", conf=0.001)
    cat_ids = det.cat_ids or list(range(1, len(det.class_names) + 1))
    out = []
    for i in range(0, len(images), 16):
        chunk = images[i : i + 16]
        for item, d in zip(chunk, det.predict([c["path"] for c in chunk]), strict=True):
            a = d.to_numpy()
            for (x1, y1, x2, y2), s, k in zip(a["boxes"], a["scores"], a["labels"], strict=True):
                out.append(
                    {
                        "image_id": item["id"],
                        "category_id": int(cat_ids[int(k)]),
                        "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                        "score": float(s),
                    }
                )
    return out


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def detkit_latency(weights: Path, image: str, repeats: int) -> float:
    """Median batch-1 ``Detector.predict`` ms on one thread (a subprocess pinned to core 0);
    ``weights`` a checkpoint (PyTorch eager) or an ``.onnx`` export (ONNX Runtime)."""
    code = (
        "import json,statistics,time,sys,cv2,torch;torch.set_num_threads(1);"
        f"sys.path.insert(0,{str(REPO)!r});from detkit.predict import Detector;"
        f"d=Detector.from_checkpoint({str(weights)!r},device='cpu');im=cv2.imread({image!r});"
        "[d.predict(im) for _ in range(5)];t=[]\n"
        f"for _ in range({repeats}):\n s=time.perf_counter();d.predict(im);"
        "t.append((time.perf_counter()-s)*1000)\n"
        "print(json.dumps({'ms':statistics.median(t)}))"
    )
    r = subprocess.run(
        pinned(0, [sys.executable, "-c", code]), env=one_thread_env(), check=True,
        capture_output=True, text=True,
    )  # fmt: skip
    return last_json(r.stdout)["ms"]


def first_reaching(curve: list[tuple[float, float]], target: float) -> float | None:
    """Elapsed seconds of the first (seconds, mAP) point at or above ``target``."""
    return next((t for t, m in curve if m >= target), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--num-train", type=int, default=1000)
    p.add_argument("--num-val", type=int, default=250)
    p.add_argument("--img-size", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=30, help="latency repeats")
    p.add_argument("--work", type=Path, default=REPO / "bench" / ".peer")
    p.add_argument("--detkit", nargs="*", default=DETKIT_RECIPE, help="detkit key=value args")
    p.add_argument("--reuse", action="store_true", help="score existing runs, do not train")
    args = p.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    tag = f"e{args.epochs}-n{args.num_train}"
    runs = work / f"runs-{tag}"

    root, ann_file, data_yaml = prepare_data(work, args.num_train, args.num_val)
    py = peer_python(work)
    det_dir = runs / "detkit"
    if not args.reuse:
        shutil.rmtree(runs, ignore_errors=True)
        runs.mkdir(parents=True)
        detkit_args = [
            "data=shapes_hard", f"num_train={args.num_train}", f"num_val={args.num_val}",
            f"epochs={args.epochs}", f"img_size={args.img_size}", f"batch={args.batch}",
            "workers=0", "save_period=1", f"eval_every={args.epochs}", "plots=false",
            f"close_mosaic={max(1, args.epochs // 3)}", f"project={runs}", "name=detkit",
            *args.detkit,
        ]  # fmt: skip
        jobs = {
            "yolov8n": (
                pinned(0, [str(py), str(REPO / "bench" / "peer_yolo.py"), "train",
                           str(data_yaml), str(runs), str(args.epochs), str(args.img_size),
                           str(args.batch)]),
                peer_env(work), runs / "yolov8n.log",
            ),
            "detkit": (
                pinned(1, [sys.executable, str(REPO / "tools" / "train.py"), *detkit_args]),
                one_thread_env(), runs / "detkit.log",
            ),
        }  # fmt: skip
        proc = run_side_by_side(jobs)
        (runs / "processes.json").write_text(json.dumps(proc))
        for name, r in proc.items():
            if r["rc"] != 0:
                raise SystemExit(f"{name} training failed (rc {r['rc']}); see {jobs[name][2]}")
    proc = json.loads((runs / "processes.json").read_text())
    peer_times = [float(r["time"]) for r in _csv_rows(runs / "yolov8n" / "results.csv")]
    det_times = [float(r["time"]) for r in _csv_rows(det_dir / "metrics.csv")]

    images = val_images(ann_file, root / "images" / "val")
    images_json = work / "val_images.json"
    images_json.write_text(json.dumps(images))
    curves: dict[str, list[dict]] = {"yolov8n": [], "detkit": []}
    for e in range(1, args.epochs + 1):
        out_json = runs / f"yolov8n-epoch{e}.json"
        # Ultralytics saves epoch e as epoch{e-1}.pt, and the last one only as last.pt
        last = e == args.epochs
        w = runs / "yolov8n" / "weights" / ("last.pt" if last else f"epoch{e - 1}.pt")
        subprocess.run(
            [str(py), str(REPO / "bench" / "peer_yolo.py"), "predict", str(w), str(images_json),
             str(out_json), str(args.img_size)],
            env=peer_env(work), check=True, capture_output=True,
        )  # fmt: skip
        peer = coco_scores(ann_file, json.loads(out_json.read_text()))
        mine = coco_scores(ann_file, detkit_results(det_dir / f"epoch{e}.pt", images))
        curves["yolov8n"].append({"epoch": e, "time": peer_times[e - 1], **peer})
        curves["detkit"].append({"epoch": e, "time": det_times[e - 1], **mine})
        print(
            f"epoch {e:>2}: YOLOv8n {peer['mAP50-95']:.3f} ({peer_times[e - 1]:.0f} s)   "
            f"detkit {mine['mAP50-95']:.3f} ({det_times[e - 1]:.0f} s)",
            flush=True,
        )
    report(args, work, runs, proc, curves, py, images)


def _csv_rows(path: Path) -> list[dict]:
    import csv

    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def report(args, work, runs, proc, curves, py, images) -> None:
    """Print the tables and write ``results.json`` into the runs folder."""
    from detkit.model_summary import summary
    from detkit.onnx_export import export_checkpoint
    from detkit.predict import Detector

    final_w = runs / "detkit" / f"epoch{args.epochs}.pt"
    peer_w = runs / "yolov8n" / "weights" / "last.pt"
    image = images[0]["path"]
    onnx = export_checkpoint(final_w, runs / "detkit.onnx")
    lat = {"detkit": [], "detkit_onnx": [], "yolov8n": []}
    for _ in range(2):  # alternate, so load drifts hit both
        lat["detkit"].append(detkit_latency(final_w, image, args.repeats))
        lat["detkit_onnx"].append(detkit_latency(onnx, image, args.repeats))
        r = subprocess.run(
            pinned(0, [str(py), str(REPO / "bench" / "peer_yolo.py"), "latency", str(peer_w),
                       image, str(args.img_size), str(args.repeats)]),
            env=peer_env(work), check=True, capture_output=True, text=True,
        )  # fmt: skip
        lat["yolov8n"].append(last_json(r.stdout)["ms"])
    ms = {k: min(v) for k, v in lat.items()}
    r = subprocess.run(
        [str(py), str(REPO / "bench" / "peer_yolo.py"), "info", str(peer_w), str(args.img_size)],
        env=peer_env(work), check=True, capture_output=True, text=True,
    )  # fmt: skip
    peer_info = last_json(r.stdout)
    det_model = Detector.from_checkpoint(final_w, device="cpu").model
    det_info = {
        "params": sum(q.numel() for q in det_model.parameters()),
        "gflops": summary(det_model, args.img_size).flops / 1e9,
    }
    yo, dk = curves["yolov8n"], curves["detkit"]
    target = yo[-1]["mAP50-95"]
    t_det = first_reaching([(c["time"], c["mAP50-95"]) for c in dk], target)
    t_peer = yo[-1]["time"]
    import torch

    print(
        f"\n{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {ULTRALYTICS}, "
        f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}; hard shapes "
        f"{args.num_train} train / {args.num_val} val, {args.img_size} px, {args.epochs} epochs, "
        f"batch {args.batch}, one core and one thread each; detkit: {' '.join(args.detkit)}"
    )
    print(
        "\n| epoch | YOLOv8n mAP50-95 | s | detkit mAP50-95 | s | YOLOv8n AP_small | detkit AP_small |"
    )
    print("|---|---|---|---|---|---|---|")
    for a, b in zip(yo, dk, strict=True):
        print(
            f"| {a['epoch']} | {a['mAP50-95']:.3f} | {a['time']:.0f} | {b['mAP50-95']:.3f} | "
            f"{b['time']:.0f} | {a['AP_small']:.3f} | {b['AP_small']:.3f} |"
        )
    reach = "never" if t_det is None else f"{t_det / t_peer:.2f}x"
    n_img = args.num_train * args.epochs
    rows = [
        ("final mAP50-95 (detkit - YOLOv8n)", f"{dk[-1]['mAP50-95'] - target:+.3f}"),
        ("final mAP50 (detkit / YOLOv8n)", f"{dk[-1]['mAP50']:.3f} / {yo[-1]['mAP50']:.3f}"),
        ("time to YOLOv8n's final mAP50-95 (detkit / YOLOv8n)", reach),
        ("training images/s (detkit / YOLOv8n)",
         f"{n_img / dk[-1]['time']:.2f} / {n_img / t_peer:.2f} = {t_peer / dk[-1]['time']:.2f}x"),
        ("batch-1 ms eager (detkit / YOLOv8n)",
         f"{ms['detkit']:.1f} / {ms['yolov8n']:.1f} = {ms['detkit'] / ms['yolov8n']:.2f}x"),
        ("batch-1 ms ONNX Runtime detkit / YOLOv8n eager",
         f"{ms['detkit_onnx']:.1f} / {ms['yolov8n']:.1f} = "
         f"{ms['detkit_onnx'] / ms['yolov8n']:.2f}x"),
        ("params (detkit / YOLOv8n)", f"{det_info['params']:,} / {peer_info['params']:,}"),
        ("GFLOPs@" + str(args.img_size), f"{det_info['gflops']:.2f} / {peer_info['gflops']:.2f}"),
        ("peak training RSS MiB (detkit / YOLOv8n)",
         f"{proc['detkit']['peak_mb']:.0f} / {proc['yolov8n']['peak_mb']:.0f}"),
    ]  # fmt: skip
    print("\n| measure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    out = {"curves": curves, "latency_ms": lat, "detkit": det_info, "yolov8n": peer_info,
           "processes": proc, "args": {k: str(v) for k, v in vars(args).items()}}  # fmt: skip
    (runs / "results.json").write_text(json.dumps(out, indent=1))
    print(f"\nwritten: {runs / 'results.json'}; median of {args.repeats}, best of 2 alternations")


if __name__ == "__main__":
    main()
