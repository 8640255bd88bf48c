"""``detkit infer``: detect objects in images and videos; save annotated copies, JSON, txt, crops.

SOURCE is an image, a folder (its images and videos, not recursive), a glob (``**`` recurses), a
video file, or a ``.txt`` file listing paths one per line (relative ones are resolved against
the list's folder; ``#`` starts a comment). Outputs go to ``runs/infer/<name>/``:

- ``<stem>.<ext>`` annotated images, ``<stem>.mp4`` annotated videos (unless ``--no-save``);
- ``detections.json``: one record per input (``image`` or ``video`` path, output name, size and
  every detection: ``box`` xyxy original-image px, ``score``, ``class``, ``class_id`` (the
  contiguous label), ``category_id`` (the dataset's id));
- ``labels/<stem>.txt`` (``labels/<stem>_<frame>.txt`` for videos) with ``--save-txt``: YOLO
  lines ``class_id cx cy w h``, normalised, readable as training labels (``--save-conf`` appends
  the score, as Ultralytics' ``save_conf``);
- ``crops/<class>/<stem>_<k>.jpg`` with ``--save-crops``;
- ``skipped.json`` when inputs could not be read or failed (each with its reason; they are
  counted and skipped, and the run goes on); the exit status is 1 when no input could be read;
- ``detections.jsonl``: the same records as ``detections.json``, one line per input, written as
  each is done, so an interrupted run keeps its results (Ctrl-C also writes ``detections.json``).

Images go through the training decoder (:func:`detkit.data.images.read_image`): allowed formats
only, ``--max-pixels`` checked before decoding, the file's EXIF orientation applied.

Output stems are the inputs' base names reduced to ``[A-Za-z0-9._-]`` (so ``../../x.jpg``
writes ``x.jpg`` inside the run folder), made unique with ``_2``, ``_3``, ... when two inputs
share a name.
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from detkit.cli.common import pick_weights, unique_dir
from detkit.data.images import MAX_PIXELS, read_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv"}


def conf_value(text: str) -> float | str:
    """``--conf``: a number in [0, 1], or ``best``."""
    if text == "best":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'best', got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a score threshold lies in [0, 1], got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "infer", help="detect objects in an image, folder, glob, video or .txt list of paths"
    )
    p.add_argument("source", help="image, folder, glob pattern, video file or .txt list")
    p.add_argument(
        "--weights", default=None, help="checkpoint or .onnx (default: newest runs/train/*/best.pt)"
    )
    p.add_argument(
        "--conf",
        type=conf_value,
        default=0.25,
        help="score threshold on c·p, or 'best': the F1-optimal one `detkit eval` stored",
    )
    p.add_argument("--iou", type=float, default=None, help="NMS IoU threshold")
    p.add_argument("--classes", nargs="+", default=None, help="keep these classes (ids or names)")
    p.add_argument("--max-det", type=int, default=None, help="detections kept per image")
    p.add_argument("--img-size", type=int, default=None, help="network input size")
    p.add_argument("--device", default="", help="cpu, cuda or cuda:N (default: cuda if present)")
    p.add_argument("--save-txt", action="store_true", help="YOLO txt per image / frame")
    p.add_argument("--save-conf", action="store_true", help="append the score to --save-txt rows")
    p.add_argument("--agnostic", action="store_true", help="class-agnostic NMS: one label per box")
    p.add_argument("--save-crops", action="store_true", help="save each detection's crop")
    p.add_argument("--no-save", action="store_true", help="no annotated images or videos")
    p.add_argument(
        "--max-pixels", type=int, default=MAX_PIXELS, help="refuse larger images (width x height)"
    )
    p.add_argument("--name", default="", help="output folder name under --project")
    p.add_argument("--project", default="runs/infer", help="parent of the output folder")
    p.set_defaults(func=run)


def _kind(path: Path) -> str:
    return "video" if path.suffix.lower() in VIDEO_SUFFIXES else "image"


def _media(paths: list[Path]) -> list[Path]:
    return sorted(p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)


def list_sources(source: str) -> tuple[list[Path], list[dict[str, str]]]:
    """Inputs named by SOURCE, and the entries of a ``.txt`` list that do not exist.

    Raises:
        FileNotFoundError: nothing found at all.
    """
    path, missing = Path(source), []
    if path.is_dir():
        files = _media([p for p in path.iterdir() if p.is_file()])
    elif path.is_file() and path.suffix.lower() == ".txt":
        files = []
        for line in path.read_text(encoding="utf-8").splitlines():
            entry = line.split("#", 1)[0].strip()
            if not entry:
                continue
            p = Path(entry) if Path(entry).is_absolute() else path.parent / entry
            if p.is_file():
                files.append(p)
            else:
                missing.append({"source": str(p), "reason": "not found"})
    elif path.is_file():
        files = [path]
    else:
        files = _media([Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file()])
    if not files and not missing:
        raise FileNotFoundError(f"no images or videos found at {source!r}")
    return files, missing


def clean_part(text: str) -> str:
    """One path component that cannot leave its folder: letters, digits, ``._-``; no dot first.

    Example:
        >>> clean_part("a b/c"), clean_part(".."), clean_part(".env"), clean_part("照片")
        ('a_b_c', 'input', '_env', '照片')
    """
    text = re.sub(r"[^\w.-]+", "_", text)  # separators, spaces, control characters
    text = re.sub(r"^\.+", "_", text)[:100]  # no "..", no hidden files
    return text if text.strip("._") else "input"


def safe_stem(name: str) -> str:
    """The stem of an input's base name, cleaned (see :func:`clean_part`).

    Example:
        >>> safe_stem("../../x.jpg"), safe_stem("a b/ç?.png"), safe_stem(r"C:\\a\\..\\y.png")
        ('x', 'ç_', 'y')
    """
    return clean_part(Path(name.replace("\\", "/")).stem)


class UniqueStems:
    """Hands out distinct stems (case-insensitively): ``x``, then ``x_2``, ``x_3``, ..."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, path: Path) -> str:
        base = safe_stem(path.name)
        stem, n = base, 1
        while stem.lower() in self.used:
            n += 1
            stem = f"{base}_{n}"
        self.used.add(stem.lower())
        return stem


class Saver:
    """Writes the per-detection side outputs (YOLO txt, crops) of one run folder."""

    def __init__(
        self, out: Path, save_txt: bool, save_crops: bool, save_conf: bool = False
    ) -> None:
        self.out, self.save_txt, self.save_crops = out, save_txt, save_crops
        self.save_conf = save_conf

    def extras(self, d: Any, image: np.ndarray, stem: str) -> None:
        if self.save_txt:
            (self.out / "labels").mkdir(exist_ok=True)
            lines = d.to_yolo(with_scores=self.save_conf)
            (self.out / "labels" / f"{stem}.txt").write_text("".join(f"{x}\n" for x in lines))
        if self.save_crops:
            for k, (crop, name) in enumerate(zip(d.crops(image), d.names, strict=True)):
                folder = self.out / "crops" / clean_part(name)
                folder.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(folder / f"{stem}_{k}.jpg"), crop)


def _write_image(path: Path, image: np.ndarray) -> Path:
    """Write with the input's format, falling back to JPEG where OpenCV cannot encode it."""
    if cv2.imwrite(str(path), image):
        return path
    fallback = path.with_suffix(".jpg")
    cv2.imwrite(str(fallback), image)
    return fallback


def infer_image(
    det: Any, path: Path, stem: str, saver: Saver, save: bool, classes: Any, max_pixels: int
) -> dict:
    """Detect on one image file; returns its record (``ValueError`` when unreadable).

    The file goes through the one decoder (:func:`detkit.data.images.read_image`: allowed
    formats only, ``max_pixels`` checked before decoding, the file's EXIF tag applied, 16-bit
    scaled by 255/65535), as in training.
    """
    rgb = read_image(path, None, max_pixels)
    image = np.ascontiguousarray(rgb[..., ::-1])  # BGR for drawing and writing with OpenCV
    d = det.predict(rgb, classes=classes, rgb=True)
    out_name = None
    if save:
        suffix = path.suffix.lower() if path.suffix.lower() in IMAGE_SUFFIXES else ".jpg"
        out_name = _write_image(saver.out / f"{stem}{suffix}", d.draw(image)).name
    saver.extras(d, image, stem)
    h, w = image.shape[:2]
    record = {"image": str(path), "output": out_name, "width": w, "height": h}
    return record | {"detections": d.to_records()}


def _frames(cap: cv2.VideoCapture) -> Iterator[np.ndarray]:
    while True:
        ok, frame = cap.read()
        if not ok:
            return
        yield frame


def _video_writer(base: Path, fps: float, size: tuple[int, int]) -> tuple[cv2.VideoWriter, Path]:
    """An mp4 (mp4v) writer, or Motion-JPEG .avi where this OpenCV build lacks mp4v."""
    for fourcc, suffix in (("mp4v", ".mp4"), ("MJPG", ".avi")):
        path = base.with_suffix(suffix)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if writer.isOpened():
            return writer, path
        writer.release()
    raise ValueError("no video encoder available (mp4v or MJPG)")


def infer_video(
    det: Any, path: Path, stem: str, saver: Saver, save: bool, classes: Any, progress: bool
) -> dict:
    """Detect on every frame of a video; returns its record (``ValueError`` when unreadable)."""
    from tqdm import tqdm

    cap = cv2.VideoCapture(str(path))
    try:
        frames = _frames(cap) if cap.isOpened() else iter(())
        first = next(frames, None)
        if first is None:
            raise ValueError("cannot open or decode video")
        fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        h, w = first.shape[:2]
        writer, out_path = _video_writer(saver.out / stem, fps, (w, h)) if save else (None, None)
        records = []
        bar = tqdm(total=total, desc=path.name, unit="frame", leave=False, disable=not progress)
        for index, frame in enumerate(_chain(first, frames)):
            d = det.predict(frame, classes=classes)
            if writer is not None:
                writer.write(d.draw(frame))
            saver.extras(d, frame, f"{stem}_{index:06d}")
            records.append({"frame": index, "detections": d.to_records()})
            bar.update()
        bar.close()
        if writer is not None:
            writer.release()
    finally:
        cap.release()
    output = out_path.name if out_path is not None else None
    return {
        "video": str(path),
        "output": output,
        "width": w,
        "height": h,
        "fps": fps,
        "frames": records,
    }


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def run(args: argparse.Namespace) -> int:
    """Exit status: 0 when at least one input was read, 1 when none, 130 on Ctrl-C."""
    from detkit.predict import Detector, resolve_classes

    weights = pick_weights(args.weights)
    try:
        det = Detector.from_checkpoint(
            weights,
            device=args.device,
            conf=args.conf,
            iou=args.iou,
            max_det=args.max_det,
            img_size=args.img_size,
            agnostic=args.agnostic,
        )
    except ImportError as e:  # an .onnx without onnxruntime installed
        print(f"error: {e}", file=sys.stderr)
        return 2
    classes = resolve_classes(args.classes, det.class_names)
    files, skipped = list_sources(args.source)
    out = unique_dir(Path(args.project), args.name or "exp")
    results = Results(out, skipped)
    try:
        _infer_all(det, files, args, classes, results)
    except KeyboardInterrupt:
        results.close()
        print(f"interrupted: {results.summary()}", file=sys.stderr)
        return 130
    results.close()
    if results.skipped:
        listed = ", ".join(s["source"] for s in results.skipped[:5])
        print(f"skipped {len(results.skipped)} unreadable input(s): {listed} (see skipped.json)")
    print(results.summary())
    if not results.records:
        print("error: no input could be read", file=sys.stderr)
        return 1
    images = [r for r in results.records if "image" in r]
    if images and not any(r["detections"] for r in images):
        print(low_score_hint(det, Path(images[0]["image"]), det.conf))
    return 0


def _infer_all(det: Any, files: list[Path], args: argparse.Namespace, classes: Any,
               results: Results) -> None:  # fmt: skip
    """Every input in turn; one that fails (any error) is skipped with its reason."""
    from tqdm import tqdm

    saver = Saver(results.out, args.save_txt, args.save_crops, args.save_conf)
    stems = UniqueStems()
    save = not args.no_save
    for path in tqdm(files, desc="infer", unit="file", disable=len(files) < 2):
        stem = stems(path)
        try:
            if _kind(path) == "video":
                rec = infer_video(det, path, stem, saver, save, classes, len(files) < 2)
            else:
                rec = infer_image(det, path, stem, saver, save, classes, args.max_pixels)
        except Exception as e:  # one bad input never ends the run (cv2.error, MemoryError, ...)
            reason = str(e).replace(f"cannot decode image {path}: ", "")
            results.skip(
                path, reason if isinstance(e, ValueError | OSError) else f"{type(e).__name__}: {e}"
            )
            continue
        results.add(rec)
        if len(files) == 1 and "detections" in rec:
            print(f"{path}: {len(rec['detections'])} detections")


class Results:
    """The run's result files, written as it goes so that a crash or Ctrl-C keeps what was done.

    ``detections.jsonl`` gets one record per input as soon as it is done (flushed);
    ``skipped.json`` is rewritten at each skip; :meth:`close` writes ``detections.json`` (the
    list of every record).
    """

    def __init__(self, out: Path, skipped: list[dict[str, str]]) -> None:
        self.out, self.records, self.skipped = out, [], list(skipped)
        self._lines = open(out / "detections.jsonl", "w", encoding="utf-8")  # noqa: SIM115
        if self.skipped:
            self._write_skipped()

    def add(self, record: dict) -> None:
        self.records.append(record)
        self._lines.write(json.dumps(record) + "\n")
        self._lines.flush()

    def skip(self, path: Path, reason: str) -> None:
        self.skipped.append({"source": str(path), "reason": reason})
        self._write_skipped()

    def _write_skipped(self) -> None:
        (self.out / "skipped.json").write_text(json.dumps(self.skipped, indent=1))

    def close(self) -> None:
        self._lines.close()
        (self.out / "detections.json").write_text(json.dumps(self.records, indent=1))

    def summary(self) -> str:
        records = self.records
        images = [r for r in records if "image" in r]
        frames = sum(len(r["frames"]) for r in records if "video" in r)
        total = sum(len(r["detections"]) for r in images)
        total += sum(len(f["detections"]) for r in records if "video" in r for f in r["frames"])
        videos = len(records) - len(images)
        return (
            f"{total} detections in {len(images)} image(s) and {videos} video(s) ({frames} "
            f"frames), {len(self.skipped)} skipped; results in {self.out}"
        )


def low_score_hint(det: Any, path: Path, conf: float) -> str:
    """Why nothing was found: the best score on ``path`` below ``conf``, and what to try."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    try:
        scores = det.predict(image, conf=0.0).scores
    except ValueError:  # an NMS graph cannot go below its own threshold
        return f"no detections at conf {conf}"
    if not len(scores):
        return f"no detections at conf {conf} (no score above 0 on {path.name})"
    best = float(scores.max())
    return (
        f"no detections at conf {conf}: the highest score on {path.name} is {best:.3f}; "
        f"lower the threshold, e.g. conf={max(best * 0.8, 0.001):.3g}"
    )
