"""Fine-tuning a trained detector on new classes against training from scratch (issue 19).

Run from the repository root: ``python bench/bench_finetune.py [--pre-epochs 8] [--epochs 15]``.

1. The hard shapes set with ``num_train + num_ft`` train images (the first ``num_train`` are the
   benchmark's usual ones; the last ``num_ft`` are new images) and its val split, as COCO files:
   ``pre``: the first ``num_train`` images with only 3 of the 5 classes' boxes (circle, square,
   triangle; stars and crosses left unlabelled), ``ft``: the new images with all 5 classes,
   ``val``: the 250 val images with all 5 classes.
2. Trains ``yolo_n`` on ``pre`` (from scratch, ``mosaic=1.0``, ``close_mosaic=epochs // 3``).
3. Trains, at the same time and each pinned to its own core with one thread: ``weights=`` the
   3-class model on ``ft`` with the fine-tuning recipe (``configs/recipes/finetune.yaml``, which
   ``weights=`` brings; ``--recipe`` adds overrides), and ``yolo_n`` from scratch on ``ft`` with
   the from-scratch recipe, for the same epochs; every epoch's weights are kept and
   scored on ``val`` (pycocotools, conf 0.001), with the training time at each epoch's end.
4. Prints both curves, the mAP50-95 difference after the same epochs, the time the fine-tuned
   run needs to reach the from-scratch run's final mAP50-95 as a fraction of the latter's time,
   what loading, freezing and the report add to the start of training, and the training
   images/s of ``yolo_n`` with torchvision backbones (weights loaded with ``backbone_weights=``
   from a file saved from torchvision's constructor: nothing is downloaded) against ``yolo_n``,
   side by side.

Budgets are arguments (``--pre-epochs 1 --epochs 1 --num-train 16 --num-ft 8 --num-val 4
--img-size 64`` is a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run without installing detkit
sys.path.insert(0, str(REPO / "bench"))

from bench_peer import (  # noqa: E402
    coco_scores,
    csv_rows,
    detkit_results,
    first_reaching,
    one_thread_env,
    pinned,
    run_side_by_side,
    val_images,
)

PRE_CLASSES = ("circle", "square", "triangle")
# weights= brings configs/recipes/finetune.yaml; the first screen's fine-tune (BENCHMARKS.md
# "Fine-tuning") was --recipe lr=0.001 warmup_epochs=0.2 mosaic=1.0 close_mosaic={half}
FINETUNE_RECIPE: list[str] = []
SCRATCH_RECIPE = ["model=yolo_n", "mosaic=1.0", "close_mosaic={third}"]  # yolo.yaml's at 15


def write_splits(work: Path, num_train: int, num_ft: int, num_val: int) -> dict[str, Path]:
    """The hard set and the three COCO files of the benchmark (see the module docstring)."""
    from detkit.data import ensure_shapes
    from detkit.data.shapes_hard import HARD

    root = ensure_shapes(None, num_train + num_ft, num_val, 0, variant=HARD)
    train = json.loads((root / "annotations/instances_train.json").read_text())
    val = json.loads((root / "annotations/instances_val.json").read_text())
    images = sorted(train["images"], key=lambda im: im["id"])
    keep = {c["id"] for c in train["categories"] if c["name"] in PRE_CLASSES}

    def subset(doc: dict, ims: list[dict], cats: set[int] | None) -> dict:
        ids = {im["id"] for im in ims}
        anns = [a for a in doc["annotations"] if a["image_id"] in ids
                and (cats is None or a["category_id"] in cats)]  # fmt: skip
        categories = [c for c in doc["categories"] if cats is None or c["id"] in cats]
        return {**doc, "images": ims, "annotations": anns, "categories": categories}

    files = {
        "pre": subset(train, images[:num_train], keep),
        "ft": subset(train, images[num_train:], None),
        "val": val,
        "val3": subset(val, val["images"], keep),
    }
    out = {"root": root}
    for name, doc in files.items():
        out[name] = work / f"{name}.json"
        out[name].write_text(json.dumps(doc))
    return out


def train_args(files: dict[str, Path], ann: str, val: str, args, name: str) -> list[str]:
    """``tools/train.py`` overrides of one run of this benchmark."""
    return [
        "format=coco", f"root={files['root']}", f"train_ann={files[ann]}", f"val_ann={files[val]}",
        "train_images=images/train", "val_images=images/val", f"img_size={args.img_size}",
        f"batch={args.batch}", "workers=0", "plots=false", f"project={args.work / 'runs'}",
        f"name={name}",
    ]  # fmt: skip


def recipe(items: list[str], epochs: int) -> list[str]:
    fill = {"half": max(1, epochs // 2), "third": max(1, epochs // 3)}
    return [item.format(**fill) for item in items]


def score_epochs(run: Path, epochs: int, ann: Path, images: list[dict]) -> list[dict]:
    """mAP of every epoch's weights of a run, with the training time at that epoch's end
    (kept in ``scores.json`` in the run folder, so ``--reuse`` does not score again)."""
    cache = run / "scores.json"
    if cache.is_file() and cache.stat().st_mtime >= (run / "metrics.csv").stat().st_mtime:
        return json.loads(cache.read_text())
    times = [float(r["time"]) for r in csv_rows(run / "metrics.csv")]
    scores = [
        {"epoch": e, "time": times[e - 1],
         **coco_scores(ann, detkit_results(run / f"epoch{e}.pt", images))}
        for e in range(1, epochs + 1)
    ]  # fmt: skip
    cache.write_text(json.dumps(scores))
    return scores


def start_cost(files: dict[str, Path], weights: Path, args, repeats: int = 5) -> dict[str, float]:
    """Median seconds of what ``weights=`` adds before training: reading the checkpoint and its
    model section (:func:`detkit.api.train_config`), loading the weights into the new model,
    freezing and the report, against building the same config and model without them; for
    ``weights`` as written and for its slim copy (what a finished run leaves)."""
    import torch

    from detkit.api import train_config
    from detkit.config.build import build_model, initial_weights
    from detkit.models.checkpoint import load_checkpoint, save_checkpoint, slim_checkpoint

    torch.set_num_threads(1)
    base = train_args(files, "ft", "val", args, "cost")
    names = json.loads(files["ft"].read_text())["categories"]
    names = [c["name"] for c in sorted(names, key=lambda c: c["id"])]

    def once(extra: list[str]) -> float:
        start = time.perf_counter()
        cfg, ckpt = train_config(None, [*base, *extra], {})
        model = build_model(cfg.model, len(names), load_weights=not cfg.train.weights)
        initial_weights(model, cfg.train, names, ckpt=ckpt)
        return time.perf_counter() - start

    slim = args.work / "pre-slim.pt"
    save_checkpoint(slim_checkpoint(load_checkpoint(weights)), slim)
    out = {"without": statistics.median([once(["model=yolo_n"]) for _ in range(repeats)])}
    for name, path in (("with", weights), ("with slim", slim)):
        out[name] = statistics.median(
            [once([f"weights={path}", "freeze=backbone"]) for _ in range(repeats)]
        )
        out[f"{name} MB"] = path.stat().st_size / 2**20
    return out


def backbone_speed(files: dict[str, Path], args, backbone: str) -> dict[str, float]:
    """Training images/s of yolo_n and of yolo_n with a torchvision ``backbone`` whose weights
    come from a local file (saved from the constructor), one epoch each, side by side."""
    import torch
    from torchvision.models import get_model

    weights = args.work / f"{backbone}-constructor.pth"
    if not weights.is_file():
        torch.save(get_model(backbone, weights=None).state_dict(), weights)
    runs = {
        "yolo_n": ["model=yolo_n"],
        backbone: ["model=yolo_n", f"backbone={backbone}", f"backbone_weights={weights}"],
    }
    jobs, out = {}, {}
    for core, (name, extra) in enumerate(runs.items()):
        run = f"speed-{backbone}-{name}"
        shutil.rmtree(args.work / "runs" / run, ignore_errors=True)
        argv = [
            sys.executable,
            str(REPO / "tools/train.py"),
            *train_args(files, "ft", "val", args, run),
            "epochs=1",
            "eval_every=2",
            *extra,
        ]
        jobs[name] = (pinned(core, argv), one_thread_env(), args.work / f"{run}.log")  # fmt: skip
    done = run_side_by_side(jobs)
    for name in runs:
        if done[name]["rc"] != 0:
            raise SystemExit(f"{name} training failed; see {jobs[name][2]}")
        run = args.work / "runs" / f"speed-{backbone}-{name}"
        seconds = float(csv_rows(run / "metrics.csv")[-1]["time"])
        out[name] = args.num_ft / seconds
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pre-epochs", type=int, default=8)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--num-train", type=int, default=1000)
    p.add_argument("--num-ft", type=int, default=200)
    p.add_argument("--num-val", type=int, default=250)
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--recipe", nargs="*", default=FINETUNE_RECIPE, help="fine-tuning overrides")
    p.add_argument("--scratch", nargs="*", default=SCRATCH_RECIPE, help="from-scratch overrides")
    p.add_argument(
        "--labels",
        nargs=2,
        default=["fine-tuned", "from scratch"],
        help="the two runs' names in the tables (a recipe screen pairs two fine-tunes)",
    )
    p.add_argument("--backbones", nargs="*", default=["resnet18", "mobilenet_v3_large"])
    p.add_argument("--work", type=Path, default=REPO / "bench" / ".finetune")
    p.add_argument("--tag", default="", help="name of this fine-tune/scratch pair")
    p.add_argument("--reuse", action="store_true", help="score existing runs, do not train")
    args = p.parse_args()
    args.work = args.work.resolve()
    (args.work / "runs").mkdir(parents=True, exist_ok=True)
    files = write_splits(args.work, args.num_train, args.num_ft, args.num_val)
    runs = args.work / "runs"
    pre = runs / f"pre-e{args.pre_epochs}"
    if not (pre / "last.pt").is_file():  # the 3-class model, trained once and kept
        shutil.rmtree(pre, ignore_errors=True)
        argv = [sys.executable, str(REPO / "tools/train.py"),
                *train_args(files, "pre", "val3", args, pre.name),
                f"epochs={args.pre_epochs}", f"eval_every={args.pre_epochs}",
                *recipe(SCRATCH_RECIPE, args.pre_epochs)]  # fmt: skip
        done = run_side_by_side({"pre": (pinned(0, argv), one_thread_env(), runs / "pre.log")})
        if done["pre"]["rc"] != 0:
            raise SystemExit(f"pre-training failed; see {runs / 'pre.log'}")
    pre_map = float(csv_rows(pre / "metrics.csv")[-1]["mAP50-95"])
    weights = pre / "last.pt"

    tag = args.tag or f"e{args.epochs}"
    pair = {"finetune": [f"weights={weights}", *recipe(args.recipe, args.epochs)],
            "scratch": recipe(args.scratch, args.epochs)}  # fmt: skip
    if not args.reuse:
        jobs = {}
        for core, (name, extra) in enumerate(pair.items()):
            run = f"{tag}-{name}"
            shutil.rmtree(runs / run, ignore_errors=True)
            argv = [sys.executable, str(REPO / "tools/train.py"),
                    *train_args(files, "ft", "val", args, run), f"epochs={args.epochs}",
                    "save_period=1", f"eval_every={args.epochs}", *extra]  # fmt: skip
            jobs[name] = (pinned(core, argv), one_thread_env(), runs / f"{run}.log")
        for name, r in run_side_by_side(jobs).items():
            if r["rc"] != 0:
                raise SystemExit(f"{name} training failed (rc {r['rc']}); see {jobs[name][2]}")
    images = val_images(files["val"], files["root"] / "images" / "val")
    curves = {n: score_epochs(runs / f"{tag}-{n}", args.epochs, files["val"], images) for n in pair}
    cost = start_cost(files, weights, args)
    speeds = {b: backbone_speed(files, args, b) for b in args.backbones}
    report(args, pair, curves, pre_map, cost, speeds)


def report(args, pair, curves, pre_map, cost, speeds) -> None:
    import torch

    ft, sc = curves["finetune"], curves["scratch"]
    print(
        f"\n{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, load average "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}; hard shapes at {args.img_size} px, "
        f"batch {args.batch}, one core and one thread per run\n"
        f"3-class yolo_n: {args.num_train} images, {args.pre_epochs} epochs, mAP50-95 "
        f"{pre_map:.3f} on the 3-class val; fine-tuning split: {args.num_ft} new images, 5 "
        f"classes, {args.epochs} epochs, scored on {args.num_val} val images\n"
        f"{args.labels[0]}: {' '.join(pair['finetune'])} (and configs/recipes/finetune.yaml)\n"
        f"{args.labels[1]}: {' '.join(pair['scratch'])}"
    )
    a, b = args.labels
    print(f"\n| epoch | {a} mAP50-95 | s | {b} mAP50-95 | s |")
    print("|---|---|---|---|---|")
    for f, s in zip(ft, sc, strict=True):  # not a, b: the labels are used below
        print(f"| {f['epoch']} | {f['mAP50-95']:.3f} | {f['time']:.0f} | {s['mAP50-95']:.3f} | "
              f"{s['time']:.0f} |")  # fmt: skip
    target = sc[-1]["mAP50-95"]
    reach = first_reaching([(c["time"], c["mAP50-95"]) for c in ft], target)
    rows = [
        (f"final mAP50-95 ({a} - {b})",
         f"{ft[-1]['mAP50-95']:.3f} - {target:.3f} = {ft[-1]['mAP50-95'] - target:+.3f}"),
        (f"final mAP50 ({a} / {b})", f"{ft[-1]['mAP50']:.3f} / {sc[-1]['mAP50']:.3f}"),
        (f"time to {b}'s final mAP50-95 ({a} / {b})",
         "never" if reach is None else f"{reach:.0f} / {sc[-1]['time']:.0f} s = "
                                       f"{reach / sc[-1]['time']:.2f}x"),
    ]  # fmt: skip
    for name, kind in (("with", "as written"), ("with slim", "slim copy")):
        rows.append((f"start of training, median of 5 (weights= the {cost[f'{name} MB']:.0f} MB "
                     f"checkpoint {kind} and freeze=backbone / without)",
                     f"{cost[name]:.2f} / {cost['without']:.2f} s = "
                     f"+{cost[name] - cost['without']:.2f} s"))  # fmt: skip
    for backbone, s in speeds.items():
        rows.append((f"training images/s (yolo_n {backbone}, weights from a file / yolo_n)",
                     f"{s[backbone]:.2f} / {s['yolo_n']:.2f} = "
                     f"{s[backbone] / s['yolo_n']:.2f}x"))  # fmt: skip
    print("\n| measure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    out = args.work / "runs" / f"{args.tag or f'e{args.epochs}'}-results.json"
    out.write_text(json.dumps({"curves": curves, "cost": cost, "speeds": speeds,
                               "pre_map": pre_map}, indent=1))  # fmt: skip
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
