"""The peers' side of ``bench/bench_peer.py``: run *inside the throw-away Ultralytics venv only*.

Sub-commands (each prints one JSON line on its last line of stdout):
  train   MODEL_YAML DATA_YAML OUT NAME EPOCHS IMGSZ BATCH -> trains MODEL_YAML (yolov8n.yaml,
          yolo11n.yaml, yolo26n.yaml) from scratch, weights every epoch (Ultralytics names them
          epoch0.pt ... for epochs 1 ...; the last one is last.pt) and OUT/NAME/epochs.jsonl,
          one line per epoch: the wall and process CPU seconds since training started
  predict WEIGHTS IMAGES_JSON OUT_JSON IMGSZ -> COCO results (category id = class + 1)
  export  WEIGHTS IMGSZ                      -> an ONNX file beside WEIGHTS
  latency WEIGHTS IMAGE IMGSZ REPEATS        -> median batch-1 predict time in ms, wall and CPU
          (a .pt in PyTorch eager, an .onnx in ONNX Runtime on one intra-op thread)
  info    WEIGHTS IMGSZ                      -> parameters and GFLOPs at IMGSZ
  step    MODEL_YAML IMGSZ BATCH STEPS       -> median training-mode forward + backward ms per
          image of a fresh MODEL_YAML (5 classes) on random images, wall and CPU, after a warm-up
  blocks  MODEL_YAML IMGSZ BATCH REPEATS     -> the same per layer (``bench_models.time_blocks``)

Offline and quiet by construction: YOLO_OFFLINE=True, YOLO_AUTOINSTALL=False, plots=False,
amp=False, the settings folder inside the venv's parent (set by the caller through
YOLO_CONFIG_DIR). detkit never imports this.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path


def train(model_yaml: str, data_yaml: str, out: str, name: str, epochs: int, imgsz: int,
          batch: int) -> None:  # fmt: skip
    from ultralytics import YOLO

    model = YOLO(model_yaml)
    log = Path(out) / name / "epochs.jsonl"
    start = {"wall": time.perf_counter(), "cpu": time.process_time()}

    def on_train_epoch_end(trainer) -> None:  # before Ultralytics' own validation (val=False)
        log.parent.mkdir(parents=True, exist_ok=True)
        row = {"epoch": trainer.epoch + 1, "wall": time.perf_counter() - start["wall"],
               "cpu": time.process_time() - start["cpu"]}  # fmt: skip
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    model.add_callback("on_train_epoch_end", on_train_epoch_end)
    model.train(
        data=data_yaml, epochs=epochs, imgsz=imgsz, batch=batch, nbs=batch, workers=0,
        device="cpu", amp=False, plots=False, val=False, save_period=1, project=out,
        name=name, exist_ok=True, seed=0, deterministic=True, pretrained=False,
        verbose=False,
    )  # fmt: skip
    print(json.dumps({"weights": str(Path(out) / name / "weights")}))


def predict(weights: str, images_json: str, out_json: str, imgsz: int) -> None:
    from ultralytics import YOLO

    model = YOLO(weights)
    results = []
    for item in json.loads(Path(images_json).read_text()):
        r = model.predict(
            item["path"], imgsz=imgsz, conf=0.001, iou=0.7, max_det=300, device="cpu",
            verbose=False,
        )[0]  # fmt: skip
        b = r.boxes
        for (x1, y1, x2, y2), s, c in zip(
            b.xyxy.tolist(), b.conf.tolist(), b.cls.tolist(), strict=True
        ):
            results.append(
                {
                    "image_id": item["id"],
                    "category_id": int(c) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": s,
                }
            )
    Path(out_json).write_text(json.dumps(results))
    print(json.dumps({"detections": len(results)}))


def export(weights: str, imgsz: int) -> None:
    from ultralytics import YOLO

    path = YOLO(weights).export(format="onnx", imgsz=imgsz, simplify=False, device="cpu")
    print(json.dumps({"onnx": str(path)}))


def _one_thread_onnxruntime() -> None:
    """Ultralytics opens its ONNX Runtime session with the default thread pool (one thread per
    core); pinned to one core, that pool's threads would fight. Give it one intra-op thread, as
    detkit's side gets."""
    import onnxruntime as ort

    base = ort.InferenceSession

    class OneThread(base):
        def __init__(self, path, sess_options=None, *args, **kwargs):
            options = sess_options or ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            super().__init__(path, options, *args, **kwargs)

    ort.InferenceSession = OneThread


def latency(weights: str, image: str, imgsz: int, repeats: int) -> None:
    import cv2
    from ultralytics import YOLO

    if weights.endswith(".onnx"):
        _one_thread_onnxruntime()
    model = YOLO(weights, task="detect")
    im = cv2.imread(image)
    for _ in range(5):
        model.predict(im, imgsz=imgsz, device="cpu", verbose=False)
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        model.predict(im, imgsz=imgsz, device="cpu", verbose=False)
        wall.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    print(json.dumps({"ms": statistics.median(wall), "cpu_ms": statistics.median(cpu)}))


def info(weights: str, imgsz: int) -> None:
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops

    net = YOLO(weights).model
    params = sum(p.numel() for p in net.parameters())
    print(json.dumps({"params": params, "gflops": get_flops(net, imgsz)}))


def _net(model_yaml: str):
    """A fresh Ultralytics detection network of MODEL_YAML with 5 classes, in training mode."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    return DetectionModel(model_yaml, nc=5, verbose=False).train()


def step(model_yaml: str, imgsz: int, batch: int, steps: int) -> None:
    import torch
    from bench_models import train_step

    net = _net(model_yaml)
    x = torch.rand(batch, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    train_step(net, x)  # warm-up
    took = [train_step(net, x) for _ in range(steps)]
    wall = [w / batch * 1000 for w, _ in took]
    cpu = [c / batch * 1000 for _, c in took]
    print(json.dumps({"ms": statistics.median(wall), "cpu_ms": statistics.median(cpu)}))


def blocks(model_yaml: str, imgsz: int, batch: int, repeats: int) -> None:
    import torch
    from bench_models import block_flops, time_blocks, train_step

    net = _net(model_yaml)
    x = torch.rand(batch, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    rows = time_blocks(net, x, repeats, block_flops(net, imgsz))
    whole = statistics.median(train_step(net, x)[1] for _ in range(repeats))
    print(json.dumps({"rows": rows, "whole": whole}))


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    cmd, *args = sys.argv[1:]
    if cmd == "train":
        train(args[0], args[1], args[2], args[3], int(args[4]), int(args[5]), int(args[6]))
    elif cmd == "predict":
        predict(args[0], args[1], args[2], int(args[3]))
    elif cmd == "export":
        export(args[0], int(args[1]))
    elif cmd == "latency":
        latency(args[0], args[1], int(args[2]), int(args[3]))
    elif cmd == "info":
        info(args[0], int(args[1]))
    elif cmd == "step":
        step(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif cmd == "blocks":
        blocks(args[0], int(args[1]), int(args[2]), int(args[3]))
    else:
        raise SystemExit(f"unknown command {cmd}")
