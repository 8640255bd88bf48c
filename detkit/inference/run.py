"""``detkit.infer``: a source into a run folder (docs/inference_export.md lists its files).
Records (:meth:`Detections.to_records`, boxes xyxy orig px) go to ``detections.jsonl`` as each
input is done and to ``detections.json`` at the end; output stems are the inputs' base names,
cleaned (:func:`detkit.core.io.safe_stem`) and made unique."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from detkit.core.io import WriteError, clean_part, next_run_dir, safe_stem, write_json, write_text
from detkit.core.visualize import save_image
from detkit.inference.detections import Detections
from detkit.inference.inputs import IMAGE_SUFFIXES, VIDEO_SUFFIXES, Item, list_sources
from detkit.inference.predict import Detector, Setting


class UniqueStems:
    """Hands out distinct stems (case-insensitively): ``x``, then ``x_2``, ``x_3``, ..."""

    def __init__(self, used: set[str] | None = None) -> None:
        self.used = used or set()

    def __call__(self, path: Path) -> str:
        base = safe_stem(path.name)
        stem, n = base, 1
        while stem.lower() in self.used:
            n += 1
            stem = f"{base}_{n}"
        self.used.add(stem.lower())
        return stem


class Results:
    """The run folder's files, written as it goes so that a crash or Ctrl-C keeps what was done:
    each jsonl record is one write (a kill leaves at most a torn last line, which a resume
    drops), every other file is written atomically; a write failure stops the run with one
    :class:`~detkit.core.io.WriteError` saying how many records the jsonl kept. ``resume``:
    append to ``out/detections.jsonl``'s records, clear of the names written."""

    def __init__(
        self, out: Path, save: bool = True, save_txt: bool = False, save_conf: bool = False,
        save_crops: bool = False, resume: bool = False,
    ) -> None:  # fmt: skip
        self.out, self.save, self.save_txt = out, save, save_txt
        self.save_conf, self.save_crops = save_conf, save_crops
        self.jsonl = out / "detections.jsonl"
        self.records: list[dict] = read_records(self.jsonl) if resume else []
        self.resumed = len(self.records)
        self.skipped: list[dict[str, str]] = []
        self.hint: str | None = None  # why no image had a detection (see low_score_hint)
        self._video: dict[str, Any] | None = None  # the video being written
        # a resumed run's outputs keep their names
        self._stem = UniqueStems(
            {Path(r["output"]).stem.lower() for r in self.records if r.get("output")}
        )
        self._lines = open(self.jsonl, "ab" if resume else "wb", buffering=0)  # noqa: SIM115

    def add(self, item: Item) -> None:
        """Record one image or video frame (a video's record is written after its last frame)."""
        if self._video is not None and (item.frame in (None, 0) or item.path != self._video["p"]):
            self._end_video()
        if item.error:
            self.skip(item.path, item.error)
        elif item.frame is None:
            self._image(item)
        else:
            self._frame(item)

    def skip(self, path: Path, reason: str) -> None:
        self.skipped.append({"source": str(path), "reason": reason})
        write_json(self.out / "skipped.json", self.skipped, indent=1)

    def _record(self, record: dict) -> None:
        data = (json.dumps(record) + "\n").encode()
        start = self._lines.tell()
        try:
            while data:
                data = data[self._lines.write(data) :]
        except OSError as e:
            with contextlib.suppress(OSError):
                self._lines.truncate(start)  # no torn line
            raise WriteError(
                f"cannot write {self.jsonl}: {e.strerror or e}; kept: {len(self.records)} "
                "complete records in it", e.errno,
            ) from None  # fmt: skip
        self.records.append(record)

    def _image(self, item: Item) -> None:
        d, path = item.detections, item.path
        stem, image = self._stem(path), np.ascontiguousarray(item.image[..., ::-1])  # BGR
        out_name = None
        if self.save:
            suffix = path.suffix.lower() if path.suffix.lower() in IMAGE_SUFFIXES else ".jpg"
            out_name = _write_image(self.out / f"{stem}{suffix}", d.draw(image)).name
        self._extras(d, image, stem)
        h, w = image.shape[:2]
        record = {"image": str(path), "output": out_name, "width": w, "height": h}
        self._record(record | {"detections": d.to_records()})

    def _frame(self, item: Item) -> None:
        frame = np.ascontiguousarray(item.image[..., ::-1])  # BGR for OpenCV
        h, w = frame.shape[:2]
        if self._video is None:
            stem = self._stem(item.path)
            writer, path = _video_writer(self.out / stem, item.fps, (w, h)) if self.save else (None, None)  # fmt: skip
            self._video = {
                "p": item.path, "stem": stem, "writer": writer,
                "record": {"video": str(item.path), "output": path.name if path else None,
                           "width": w, "height": h, "fps": item.fps, "frames": []},
            }  # fmt: skip
        v, d = self._video, item.detections
        if v["writer"] is not None:
            v["writer"].write(d.draw(frame))
        self._extras(d, frame, f"{v['stem']}_{item.frame:06d}")
        v["record"]["frames"].append({"frame": item.frame, "detections": d.to_records()})

    def _end_video(self) -> None:
        v, self._video = self._video, None
        if v["writer"] is not None:
            v["writer"].release()
        self._record(v["record"])

    def _extras(self, d: Detections, image: np.ndarray, stem: str) -> None:
        """YOLO rows and crops of one image's detections (``image``: BGR)."""
        if self.save_txt:
            lines = d.to_yolo(with_scores=self.save_conf)
            write_text(self.out / "labels" / f"{stem}.txt", "".join(f"{x}\n" for x in lines))
        if self.save_crops:
            for k, (crop, name) in enumerate(zip(d.crops(image), d.names, strict=True)):
                folder = self.out / "crops" / clean_part(name)
                folder.mkdir(parents=True, exist_ok=True)
                save_image(folder / f"{stem}_{k}.jpg", crop, bgr=True)

    def consume(
        self, stream: Iterator[Item], files: list[Path], progress: bool = True,
        on_record: Callable[[dict], None] | None = None,
    ) -> None:  # fmt: skip
        """Write every item of ``stream`` (read from ``files``, for the progress bar), then
        :meth:`close`; closed on Ctrl-C and errors too. ``on_record`` gets each finished record."""
        from detkit.core.logs import progress as progress_bar

        frames = len(files) == 1 and Path(files[0]).suffix.lower() in VIDEO_SUFFIXES
        bar = progress_bar(desc=Path(files[0]).name if frames else "infer", total=None if frames else len(files),
                   unit="frame" if frames else "file", disable=not progress or (len(files) < 2 and not frames))  # fmt: skip
        done, failed = 0, True
        try:
            for item in stream:
                if frames or item.frame in (None, 0):
                    bar.update()
                try:
                    self.add(item)
                except WriteError:  # the disk or the folder: nothing more can be kept
                    raise
                except Exception as e:  # writing one output failed (cv2.error, ...)
                    self.skip(item.path, f"{type(e).__name__}: {e}")
                while on_record is not None and done < len(self.records):
                    on_record(self.records[done])
                    done += 1
            failed = False
        finally:
            bar.close()
            if failed:  # the error in flight says what happened; a second one would hide it
                with contextlib.suppress(WriteError):
                    self.close()
            else:
                self.close()

    def close(self) -> None:
        """Finish the open video and write ``detections.json``; safe to call twice."""
        try:
            if self._video is not None:
                self._end_video()
        finally:
            if not self._lines.closed:
                self._lines.close()
                try:
                    write_json(self.out / "detections.json", self.records, indent=1)
                except WriteError as e:
                    raise WriteError(
                        f"{e}; kept: {len(self.records)} records in {self.jsonl.name}", e.errno
                    ) from None

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


def read_records(path: Path) -> list[dict]:
    """The complete records of a ``detections.jsonl``; a torn last line is cut from the file."""
    data = path.read_bytes()
    records, end = [], 0
    for line in data.split(b"\n")[:-1]:  # a complete record ends with its newline
        try:
            records.append(json.loads(line))
        except ValueError:
            break
        end += len(line) + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    return records


def _write_image(path: Path, image: np.ndarray) -> Path:
    """Write with the input's format, falling back to JPEG where OpenCV cannot encode it."""
    try:
        return save_image(path, image, bgr=True)
    except ValueError:  # a suffix OpenCV has no encoder for
        return save_image(path.with_suffix(".jpg"), image, bgr=True)


def _video_writer(base: Path, fps: float, size: tuple[int, int]) -> tuple[cv2.VideoWriter, Path]:
    """An mp4 (mp4v) writer, or Motion-JPEG .avi where this OpenCV build lacks mp4v."""
    for fourcc, suffix in (("mp4v", ".mp4"), ("MJPG", ".avi")):
        path = base.with_suffix(suffix)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if writer.isOpened():
            return writer, path
        writer.release()
    raise ValueError("no video encoder available (mp4v or MJPG)")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`infer`, raised after the run folder was closed; ``results`` holds it."""

    def __init__(self, results: Results) -> None:
        super().__init__()
        self.results = results


def infer(
    source: str | Path | list,
    weights: str | Path | Detector,
    out: str | Path | None = None,
    *,
    save: bool = True,
    save_txt: bool = False,
    save_conf: bool = False,
    save_crops: bool = False,
    classes: Sequence[int | str] | None = None,
    max_pixels: int | None = None,
    progress: bool = True,
    batch: int = 0,
    resume: bool = False,
    on_record: Callable[[dict], None] | None = None,
    **detector_options: Setting,
) -> Results:
    """Detect on every image and video of ``source`` (:meth:`detkit.Detector.predict_source`)
    with ``weights`` (a checkpoint or export, or a :class:`detkit.Detector`) and write the run
    folder ``out`` (default a new ``runs/infer/exp``, ``exp2``, ...): annotated copies
    (``save``), YOLO rows (``save_txt``, with scores ``save_conf``), crops (``save_crops``).
    ``batch``: images per forward (0: 16 on a GPU, 1 on a CPU); ``resume``: inputs
    ``out/detections.jsonl`` holds are not read again; ``on_record``: called with each record
    as soon as it is written; ``detector_options``: for :meth:`detkit.Detector.from_checkpoint`.

    Returns:
        :class:`Results` (closed): ``out``, ``records``, ``skipped``, ``summary()``,
        ``resumed``, and ``hint`` when no image had a detection.

    Raises:
        Interrupted: Ctrl-C (a :class:`KeyboardInterrupt`), once ``detections.json`` is written.
        FileNotFoundError: the source names nothing, or ``resume`` without a
            ``detections.jsonl`` in ``out``.
        ValueError: an unknown class, or settings an NMS graph cannot honour.
        WriteError: the run folder cannot be written (one message, saying what was kept).
    """
    det = weights if isinstance(weights, Detector) else Detector.from_checkpoint(weights, **detector_options)  # fmt: skip
    files = (
        [Path(p) for p in source] if isinstance(source, list | tuple) else list_sources(source)[0]
    )
    if resume:
        check_resumable_run(out)
    out = Path(out) if out is not None else next_run_dir("runs/infer", "exp")
    out.mkdir(parents=True, exist_ok=True)
    results = Results(out, save, save_txt, save_conf, save_crops, resume=resume)
    done = {r.get("image") or r.get("video") for r in results.records}
    todo = [f for f in files if str(f) not in done]
    if not todo:
        results.close()
    else:
        stream = det.predict_source(
            todo if resume else source, classes=classes, max_pixels=max_pixels,
            batch=batch or (16 if det.device.type == "cuda" else 1),  # a GPU idles on one
        )  # fmt: skip
        try:
            results.consume(stream, todo, progress, on_record)
        except KeyboardInterrupt as e:  # consume() closed the folder
            raise Interrupted(results) from e
    images = [r for r in results.records if "image" in r]
    if images and not any(r["detections"] for r in images):
        results.hint = low_score_hint(det, Path(images[0]["image"]), det.conf)
    return results


def check_resumable_run(out: str | Path | None) -> Path:
    """The infer run folder to continue; ``FileNotFoundError`` when none is given or it holds no
    ``detections.jsonl``."""
    if out is None or not (Path(out) / "detections.jsonl").is_file():
        raise FileNotFoundError(
            f"cannot resume {out}: no detections.jsonl there (name the folder of an infer run)"
        )
    return Path(out)


def low_score_hint(det: Detector, path: Path, conf: float) -> str:
    """Why nothing was found: the best score on ``path`` below ``conf``, and what to try."""
    try:
        scores = det.predict(path, conf=0.0).scores
    except ValueError:  # an NMS graph cannot go below its own threshold
        return f"no detections at conf {conf}"
    if not len(scores):
        return f"no detections at conf {conf} (no score above 0 on {path.name})"
    best = float(scores.max())
    return (
        f"no detections at conf {conf}: the highest score on {path.name} is {best:.3f}; "
        f"lower the threshold, e.g. conf={max(best * 0.8, 0.001):.3g}"
    )
