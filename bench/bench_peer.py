"""detkit's nano model against Ultralytics' nano models, trained from scratch side by side on the
hard shapes set.

Run from the repository root: ``python bench/bench_peer.py [--epochs 15] [--peers yolov8n
yolo11n yolo26n] [--num-train 1000]``; ``--epochs 45`` is the longer schedule (3x).

1. Generates the hard benchmark set (:mod:`detkit.data.shapes_hard`) and writes a YOLO-format
   copy (symlinked images) for the peers.
2. Installs Ultralytics (pinned) into a throw-away venv under ``bench/.peer/`` that reuses this
   environment's torch through a ``.pth`` file; it is never a dependency of detkit, never
   imported by it, and runs offline (``YOLO_OFFLINE=True``, ``YOLO_AUTOINSTALL=False``,
   ``plots=False``, ``amp=False``, its settings folder inside ``bench/.peer/``).
   ``bench/peer_yolo.py`` is the peers' side.
3. Trains detkit's ``model=yolo_n`` with *no recipe overrides* (the recipe is the default: batch,
   mosaic and its switch-off come from the model's recipe) and every peer (``batch=<detkit's>
   nbs=<same>``, its defaults otherwise) at the same time, one thread each, no loader workers,
   the processes spread over the cores with ``taskset`` (two trainings share a core when there
   are more trainings than cores), keeping every epoch's weights. Wall and process CPU seconds are
   taken at the end of each training epoch.
4. Scores every epoch of every model with one pycocotools function on the same COCO ground truth
   (conf 0.001; each side's own NMS) and prints mAP50-95 against elapsed time, the time detkit
   takes to reach the best peer's final mAP50-95 as a fraction of that peer's training time,
   training images per second (wall, and per CPU second, which the machine's load changes less),
   batch-1 latency (PyTorch eager and ONNX Runtime, one thread, alternating runs; wall and CPU
   ms), parameters, GFLOPs and peak memory.

Budgets are arguments, so a smoke run takes minutes (``--epochs 1 --num-train 16 --num-val 4
--img-size 64 --batch 4``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run without installing detkit

ULTRALYTICS = "ultralytics==8.4.190"
PEERS = {"yolov8n": "yolov8n.yaml", "yolo11n": "yolo11n.yaml", "yolo26n": "yolo26n.yaml"}
DETKIT_MODEL = "yolo_n"


def peer_python(work: Path) -> Path:
    """The throw-away venv's interpreter, created on first use (torch shared via a .pth)."""
    venv = work / "venv"
    py = venv / "bin" / "python"
    ready = venv / ".ready"
    if ready.is_file() and ready.read_text().strip() == ULTRALYTICS:
        return py
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "detkit_torch.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", ULTRALYTICS], check=True)
    ready.write_text(ULTRALYTICS + "\n")
    return py


def one_thread_env() -> dict[str, str]:
    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    return dict(os.environ) | dict.fromkeys(keys, "1")


def peer_env(work: Path) -> dict[str, str]:
    offline = {"YOLO_OFFLINE": "True", "YOLO_AUTOINSTALL": "False"}
    return one_thread_env() | offline | {"YOLO_CONFIG_DIR": str(work / "config")}


def prepare_data(work: Path, num_train: int, num_val: int) -> tuple[Path, Path, Path]:
    """The hard set (COCO) and its YOLO copy; returns (coco root, val ann file, data.yaml)."""
    from detkit.data import CocoDataset, convert_dataset, ensure_shapes, shapes_split
    from detkit.data.shapes_hard import HARD

    root = ensure_shapes(None, num_train, num_val, 0, variant=HARD)
    out = work / f"yolo-{root.name}"
    # the copy links to the COCO images: rebuild it when they moved (a test's temporary home)
    train_dir = out / "images/train"
    first = next(train_dir.glob("*"), None) if train_dir.is_dir() else None
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
    """``argv`` pinned to ``core`` (modulo the cores) when taskset exists and there are two
    cores or more."""
    cores = os.cpu_count() or 1
    if shutil.which("taskset") and cores >= 2:
        return ["taskset", "-c", str(core % cores), *argv]
    return argv


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux ``/proc``), 0 when unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_side_by_side(
    jobs: dict[str, tuple[list[str], dict, Path]], epoch_files: dict | None = None
) -> dict:
    """Start every job at once; return per job its wall time, CPU seconds, peak RSS (MiB), exit
    code and, for jobs with an ``epoch_files(e)`` path function, the CPU seconds when each
    epoch's file appeared (polled every second)."""
    procs = {}
    for name, (argv, env, log) in jobs.items():
        f = open(log, "w")  # noqa: SIM115 - closed below
        procs[name] = (subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT), f)
    start, out = time.perf_counter(), {}
    epoch_files = epoch_files or {}
    epochs: dict[str, list[float]] = {name: [] for name in epoch_files}
    pending = {p.pid: name for name, (p, _) in procs.items()}
    while pending:
        for name, path_of in epoch_files.items():
            while path_of(len(epochs[name]) + 1).exists():
                epochs[name].append(cpu_seconds(procs[name][0].pid))
        pid, status, usage = os.wait4(-1, os.WNOHANG)
        if pid == 0:
            time.sleep(1.0)
            continue
        if pid not in pending:
            continue
        name = pending.pop(pid)
        procs[name][1].close()
        out[name] = {
            "wall_s": time.perf_counter() - start,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_mb": usage.ru_maxrss / 1024,
            "rc": os.waitstatus_to_exitcode(status),
            "epoch_cpu_s": epochs.get(name, []),
        }
    return out


def coco_scores(ann_file: Path, results: list[dict]) -> dict[str, float]:
    """COCO mAP50-95, mAP50 and AP_small of ``results`` (the one pycocotools call all use)."""
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
    from detkit.inference.predict import Detector

    det = Detector.from_checkpoint(weights, device="cpu", conf=0.001)
    out = []
    for i in range(0, len(images), 16):
        chunk = images[i : i + 16]
        for item, d in zip(chunk, det.predict([c["path"] for c in chunk]), strict=True):
            out += d.to_coco(item["id"])
    return out


def last_json(text: str) -> dict:
    """The last line of ``text`` that is a JSON object (a library may print after it)."""
    lines = [line for line in text.strip().splitlines() if line.startswith("{")]
    if not lines:
        raise ValueError(f"no JSON line in the output: {text[-2000:]}")
    return json.loads(lines[-1])


def detkit_latency(weights: Path, image: str, repeats: int) -> dict[str, float]:
    """Median batch-1 ``Detector.predict`` ms (wall and CPU) on one thread, in a subprocess
    pinned to core 0; ``weights`` a checkpoint (PyTorch eager) or an ``.onnx`` export (ONNX
    Runtime)."""
    threads = 1 if Path(weights).suffix == ".onnx" else 0
    code = (
        "import json,statistics,time,sys,cv2,torch;torch.set_num_threads(1);"
        f"sys.path.insert(0,{str(REPO)!r});from detkit.inference.predict import Detector;"
        # one intra-op thread for ONNX Runtime too, as bench/peer_yolo.py gives the peers (its
        # default pool sets its own thread affinities, so taskset alone does not hold it)
        f"d=Detector.from_checkpoint({str(weights)!r},device='cpu',threads={threads});"
        f"im=cv2.imread({image!r});"
        "[d.predict(im) for _ in range(5)];w=[];c=[]\n"
        f"for _ in range({repeats}):\n s=time.perf_counter();p=time.process_time();d.predict(im);"
        "w.append((time.perf_counter()-s)*1000);c.append((time.process_time()-p)*1000)\n"
        "print(json.dumps({'ms':statistics.median(w),'cpu_ms':statistics.median(c)}))"
    )
    r = subprocess.run(
        pinned(0, [sys.executable, "-c", code]), env=one_thread_env(), check=True,
        capture_output=True, text=True,
    )  # fmt: skip
    return last_json(r.stdout)


def first_reaching(curve: list[tuple[float, float]], target: float) -> float | None:
    """Elapsed seconds of the first (seconds, mAP) point at or above ``target``."""
    return next((t for t, m in curve if m >= target), None)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=15, help="45: the longer schedule")
    p.add_argument("--peers", nargs="+", choices=sorted(PEERS), default=list(PEERS))
    p.add_argument("--num-train", type=int, default=1000)
    p.add_argument("--num-val", type=int, default=250)
    p.add_argument("--img-size", type=int, default=320)
    p.add_argument("--batch", type=int, default=None, help="default: detkit's recipe batch")
    p.add_argument("--repeats", type=int, default=30, help="latency repeats")
    p.add_argument("--work", type=Path, default=REPO / "bench" / ".peer")
    p.add_argument("--detkit", nargs="*", default=[], help="extra detkit key=value args")
    p.add_argument("--reuse", action="store_true", help="score existing runs, do not train")
    return p.parse_args()


def detkit_args(args: argparse.Namespace, runs: Path) -> list[str]:
    """The detkit command line: the benchmark's set-up and nothing of the recipe (``--batch``
    only when given)."""
    return [
        f"model={DETKIT_MODEL}", "data=shapes_hard", f"num_train={args.num_train}",
        f"num_val={args.num_val}", f"epochs={args.epochs}", f"img_size={args.img_size}",
        "workers=0", "save_period=1", f"eval_every={args.epochs}", "plots=false",
        f"project={runs}", "name=detkit", *([f"batch={args.batch}"] if args.batch else []),
        *args.detkit,
    ]  # fmt: skip


def train_all(args, work: Path, runs: Path, py: Path, data_yaml: Path, batch: int) -> dict:
    """Every training at once; returns :func:`run_side_by_side`'s record."""
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    jobs = {"detkit": (
        pinned(0, [sys.executable, str(REPO / "tools" / "train.py"), *detkit_args(args, runs)]),
        one_thread_env(), runs / "detkit.log",
    )}  # fmt: skip
    for i, name in enumerate(args.peers, start=1):
        argv = [str(py), str(REPO / "bench" / "peer_yolo.py"), "train", PEERS[name],
                str(data_yaml), str(runs), name, str(args.epochs), str(args.img_size), str(batch)]  # fmt: skip
        jobs[name] = (pinned(i, argv), peer_env(work), runs / f"{name}.log")
    proc = run_side_by_side(jobs, {"detkit": lambda e: runs / "detkit" / f"epoch{e}.pt"})
    (runs / "processes.json").write_text(json.dumps(proc, indent=1))
    for name, r in proc.items():
        if r["rc"] != 0:
            raise SystemExit(f"{name} training failed (rc {r['rc']}); see {jobs[name][2]}")
    return proc


def csv_rows(path: Path) -> list[dict]:
    """The rows of a CSV file with a header (a run's ``metrics.csv``)."""
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def epoch_times(runs: Path, name: str, proc: dict) -> list[tuple[float, float]]:
    """(wall s, CPU s) at the end of each training epoch of one model."""
    if name == "detkit":
        walls = [float(r["time"]) for r in csv_rows(runs / "detkit" / "metrics.csv")]
        return list(zip(walls, proc["detkit"]["epoch_cpu_s"], strict=False))
    lines = (runs / name / "epochs.jsonl").read_text().splitlines()
    return [(row["wall"], row["cpu"]) for row in map(json.loads, lines)]


def score_all(args, work, runs, py, ann_file, images, names, proc) -> dict[str, list[dict]]:
    """Every epoch of every model scored by :func:`coco_scores`, printed as it goes."""
    images_json = work / "val_images.json"
    images_json.write_text(json.dumps(images))
    curves: dict[str, list[dict]] = {n: [] for n in names}
    times = {n: epoch_times(runs, n, proc) for n in names}
    for e in range(1, args.epochs + 1):
        for name in names:
            if name == "detkit":
                results = detkit_results(runs / "detkit" / f"epoch{e}.pt", images)
            else:
                # Ultralytics saves epoch e as epoch{e-1}.pt, and the last one only as last.pt
                last = e == args.epochs
                w = runs / name / "weights" / ("last.pt" if last else f"epoch{e - 1}.pt")
                out_json = runs / f"{name}-epoch{e}.json"
                subprocess.run(
                    [str(py), str(REPO / "bench" / "peer_yolo.py"), "predict", str(w),
                     str(images_json), str(out_json), str(args.img_size)],
                    env=peer_env(work), check=True, capture_output=True,
                )  # fmt: skip
                results = json.loads(out_json.read_text())
            wall, cpu = times[name][e - 1] if e <= len(times[name]) else (float("nan"),) * 2
            curves[name].append({"epoch": e, "time": wall, "cpu": cpu,
                                 **coco_scores(ann_file, results)})  # fmt: skip
        print(f"epoch {e:>2}: " + "   ".join(
            f"{n} {curves[n][-1]['mAP50-95']:.3f} ({curves[n][-1]['time']:.0f} s)" for n in names
        ), flush=True)  # fmt: skip
    return curves


def peer_call(py: Path, work: Path, *argv: str) -> dict:
    r = subprocess.run(
        [str(py), str(REPO / "bench" / "peer_yolo.py"), *argv], env=peer_env(work), check=True,
        capture_output=True, text=True,
    )  # fmt: skip
    return last_json(r.stdout)


def latencies(args, work, runs, py, image: str, names: list[str]) -> dict[str, dict]:
    """Batch-1 latency of every model, eager and ONNX Runtime, two alternating rounds, one
    thread pinned to core 0; the better round of each (its median wall and CPU ms)."""
    from detkit.inference.export import export_checkpoint

    final = runs / "detkit" / f"epoch{args.epochs}.pt"
    weights = {"detkit": final, "detkit onnx": export_checkpoint(final, runs / "detkit.onnx")}
    for name in names[1:]:
        pt = runs / name / "weights" / "last.pt"
        weights[name] = pt
        weights[f"{name} onnx"] = Path(peer_call(py, work, "export", str(pt), str(args.img_size))["onnx"])  # fmt: skip
    rounds: dict[str, list[dict]] = {k: [] for k in weights}
    for _ in range(2):  # alternate, so load drifts hit every model
        for key, w in weights.items():
            if key.startswith("detkit"):
                rounds[key].append(detkit_latency(w, image, args.repeats))
            else:
                argv = ["latency", str(w), image, str(args.img_size), str(args.repeats)]
                r = subprocess.run(pinned(0, [str(py), str(REPO / "bench" / "peer_yolo.py"), *argv]),
                                   env=peer_env(work), check=True, capture_output=True, text=True)  # fmt: skip
                rounds[key].append(last_json(r.stdout))
    return {k: min(v, key=lambda r: r["cpu_ms"]) for k, v in rounds.items()}


def main() -> None:
    args = parse_args()
    from detkit.config import load_config

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    runs = work / f"runs-e{args.epochs}-n{args.num_train}"
    batch = load_config(overrides=detkit_args(args, runs)).train.batch  # the recipe's, or --batch
    root, ann_file, data_yaml = prepare_data(work, args.num_train, args.num_val)
    py = peer_python(work)
    names = ["detkit", *args.peers]
    started = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "load": os.getloadavg()}  # fmt: skip
    if args.reuse:
        proc = json.loads((runs / "processes.json").read_text())
    else:
        proc = train_all(args, work, runs, py, data_yaml, batch)
    images = val_images(ann_file, root / "images" / "val")
    curves = score_all(args, work, runs, py, ann_file, images, names, proc)
    lat = latencies(args, work, runs, py, images[0]["path"], names)
    report(args, runs, proc, curves, lat, py, work, names, batch, started)


def model_info(args, runs: Path, py: Path, work: Path, names: list[str]) -> dict[str, dict]:
    from detkit.inference.predict import Detector
    from detkit.models.summary import summary

    net = Detector.from_checkpoint(runs / "detkit" / f"epoch{args.epochs}.pt", device="cpu").model
    out = {"detkit": {"params": sum(q.numel() for q in net.parameters()),
                      "gflops": summary(net, args.img_size).flops / 1e9}}  # fmt: skip
    for name in names[1:]:
        w = runs / name / "weights" / "last.pt"
        out[name] = peer_call(py, work, "info", str(w), str(args.img_size))
    return out


def report(args, runs, proc, curves, lat, py, work, names, batch, started) -> None:
    """Print the tables and write ``results.json`` into the runs folder."""
    import torch

    info = model_info(args, runs, py, work, names)
    peers = names[1:]
    best = max(peers, key=lambda n: curves[n][-1]["mAP50-95"])
    target, dk = curves[best][-1]["mAP50-95"], curves["detkit"]
    t_det = first_reaching([(c["time"], c["mAP50-95"]) for c in dk], target)
    load_now = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"\n{started['date']}; {platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {ULTRALYTICS}; load average {started['load'][0]:.1f} at the start, "
        f"{load_now} at the end; hard shapes {args.num_train} train / {args.num_val} val, "
        f"{args.img_size} px, {args.epochs} epochs, batch {batch} (detkit's recipe), one thread "
        f"each; detkit: model={DETKIT_MODEL} {' '.join(args.detkit)}"
    )
    head = " | ".join(f"{n} mAP50-95 | s" for n in names)
    print(f"\n| epoch | {head} |\n|---|" + "---|---|" * len(names))
    for e in range(args.epochs):
        cells = " | ".join(f"{curves[n][e]['mAP50-95']:.3f} | {curves[n][e]['time']:.0f}" for n in names)  # fmt: skip
        print(f"| {e + 1} | {cells} |")
    n_img = args.num_train * args.epochs
    reach = "never" if t_det is None else f"{t_det / curves[best][-1]['time']:.2f}x"
    rows = [
        (
            "final mAP50-95 / mAP50 / AP_small",
            lambda n: "{mAP50-95:.3f} / {mAP50:.3f} / {AP_small:.3f}".format(**curves[n][-1]),
        ),
        ("training images/s (wall)", lambda n: f"{n_img / curves[n][-1]['time']:.2f}"),
        ("training images per CPU s", lambda n: f"{n_img / curves[n][-1]['cpu']:.2f}"),
        ("batch-1 ms eager, wall / CPU", lambda n: "{ms:.1f} / {cpu_ms:.1f}".format(**lat[n])),
        (
            "batch-1 ms ONNX Runtime, wall / CPU",
            lambda n: "{ms:.1f} / {cpu_ms:.1f}".format(**lat[f"{n} onnx"]),
        ),
        ("params", lambda n: f"{info[n]['params']:,}"),
        (f"GFLOPs@{args.img_size}", lambda n: f"{info[n]['gflops']:.2f}"),
        ("peak training RSS MiB", lambda n: f"{proc[n]['peak_mb']:.0f}"),
    ]
    print(f"\n| measure | {' | '.join(names)} |\n|---|" + "---|" * len(names))
    for label, cell in rows:
        print(f"| {label} | {' | '.join(cell(n) for n in names)} |")
    print(f"\n| detkit against the peers | {' | '.join(peers)} |\n|---|" + "---|" * len(peers))
    ratio_rows = [
        (
            "final mAP50-95, detkit - peer",
            lambda n: f"{dk[-1]['mAP50-95'] - curves[n][-1]['mAP50-95']:+.3f}",
        ),
        (
            "training images/s (wall), detkit / peer",
            lambda n: f"{curves[n][-1]['time'] / dk[-1]['time']:.2f}x",
        ),
        (
            "training images per CPU s, detkit / peer",
            lambda n: f"{curves[n][-1]['cpu'] / dk[-1]['cpu']:.2f}x",
        ),
        (
            "batch-1 CPU ms eager, detkit / peer",
            lambda n: f"{lat['detkit']['cpu_ms'] / lat[n]['cpu_ms']:.2f}x",
        ),
        (
            "batch-1 CPU ms ONNX Runtime, detkit / peer",
            lambda n: f"{lat['detkit onnx']['cpu_ms'] / lat[f'{n} onnx']['cpu_ms']:.2f}x",
        ),
    ]
    for label, cell in ratio_rows:
        print(f"| {label} | {' | '.join(cell(n) for n in peers)} |")
    print(f"\nbest peer {best} (final mAP50-95 {target:.3f}); detkit reaches it in {reach} of "
          f"{best}'s training time")  # fmt: skip
    out = {"curves": curves, "latency_ms": lat, "info": info, "processes": proc, "batch": batch,
           "started": started, "args": {k: str(v) for k, v in vars(args).items()}}  # fmt: skip
    (runs / "results.json").write_text(json.dumps(out, indent=1))
    print(f"written: {runs / 'results.json'}; latency: median of {args.repeats}, best of 2 rounds")


if __name__ == "__main__":
    main()
