"""The peer's side of ``bench/bench_peer.py``: run *inside the throw-away Ultralytics venv only*.

Sub-commands (each prints one JSON line on its last line of stdout):
  train   DATA_YAML OUT EPOCHS IMGSZ BATCH  -> trains YOLOv8n from scratch, weights every epoch
          (Ultralytics names them epoch0.pt ... for epochs 1 ...; the last one is last.pt) and
          its results.csv, whose "time" column is the training time at each epoch's end
  predict WEIGHTS IMAGES_JSON OUT_JSON IMGSZ -> COCO results (category id = class + 1)
  latency WEIGHTS IMAGE IMGSZ REPEATS        -> median batch-1 predict time in ms
  info    WEIGHTS IMGSZ                      -> parameters and GFLOPs at IMGSZ

Offline and quiet by construction: YOLO_OFFLINE=True, plots=False, amp=False, the settings folder
inside the venv's parent (set by the caller through YOLO_CONFIG_DIR). detkit never imports this.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path


def train(data_yaml: str, out: str, epochs: int, imgsz: int, batch: int) -> None:
    import numpy as np

    if not hasattr(np, "trapz"):  # this Ultralytics release calls np.trapz, gone in numpy 2.4
        np.trapz = np.trapezoid
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml")
    model.train(
        data=data_yaml, epochs=epochs, imgsz=imgsz, batch=batch, nbs=batch, workers=0,
        device="cpu", amp=False, plots=False, val=False, save_period=1, project=out,
        name="yolov8n", exist_ok=True, seed=0, deterministic=True, pretrained=False,
        verbose=False,
    )  # fmt: skip
    print(json.dumps({"weights": str(Path(out) / "yolov8n" / "weights")}))


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


def latency(weights: str, image: str, imgsz: int, repeats: int) -> None:
    import cv2
    from ultralytics import YOLO

    model = YOLO(weights)
    im = cv2.imread(image)
    for _ in range(5):
        model.predict(im, imgsz=imgsz, device="cpu", verbose=False)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.predict(im, imgsz=imgsz, device="cpu", verbose=False)
        times.append((time.perf_counter() - t) * 1000)
    print(json.dumps({"ms": statistics.median(times)}))


def info(weights: str, imgsz: int) -> None:
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops

    net = YOLO(weights).model
    params = sum(p.numel() for p in net.parameters())
    print(json.dumps({"params": params, "gflops": get_flops(net, imgsz)}))


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    cmd, *args = sys.argv[1:]
    if cmd == "train":
        train(args[0], args[1], int(args[2]), int(args[3]), int(args[4]))
    elif cmd == "predict":
        predict(args[0], args[1], args[2], int(args[3]))
    elif cmd == "latency":
        latency(args[0], args[1], int(args[2]), int(args[3]))
    elif cmd == "info":
        info(args[0], int(args[1]))
    else:
        raise SystemExit(f"unknown command {cmd}")
