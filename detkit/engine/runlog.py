"""What a run leaves for people (rank 0): the epoch bar, metrics.csv, results.png, a summary
table, and the evaluation of its best.pt."""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detkit.core.io import write_text
from detkit.core.logs import progress
from detkit.models.losses.base import PARTS

if TYPE_CHECKING:
    from detkit.eval.runner import EvalResult

log = logging.getLogger(__name__)


class EpochBar:
    """The per-epoch bar: loss parts, learning rate, images/s (``images_per_batch``: over all
    ranks) and ETA; ``initial``: batches done before (a resumed epoch)."""

    def __init__(
        self, total: int, initial: int, desc: str, images_per_batch: int, disable: bool
    ) -> None:
        self.bar = progress(
            total=total, initial=initial, desc=desc, disable=disable, unit="batch",
            dynamic_ncols=True,
        )  # fmt: skip
        self.images_per_batch = images_per_batch
        self.start, self.batches = time.perf_counter(), 0

    def show(self, batches: int, sums: dict[str, float], count: int, lr: float) -> None:
        """``batches`` more done; the epoch's mean loss parts (``sums`` / ``count``) and ``lr``."""
        self.bar.update(batches)
        self.batches += batches
        speed = self.batches * self.images_per_batch / max(time.perf_counter() - self.start, 1e-9)
        means = {k: f"{v / max(count, 1):.3f}" for k, v in sums.items()}
        self.bar.set_postfix(means | {"lr": f"{lr:.2e}", "img/s": f"{speed:.0f}"})

    def close(self) -> None:
        self.bar.close()


def write_best_report(
    result: EvalResult, run_dir: Path, best_epoch: int, plots: bool, say: Callable[..., None]
) -> dict[str, Path]:
    """Log ``best.pt``'s per-class table, P / R / mAP and errors through ``say``; write
    ``best_metrics.json``, the plots and ``best.thresholds.json`` into ``run_dir``: name -> path."""
    from detkit.eval import write_report
    from detkit.models.checkpoint import write_thresholds

    meta = {"weights": "best.pt", "epoch": best_epoch, "split": "val"}
    files = write_report(result, run_dir, meta, plots=plots, predictions=False,
                         summary_name="best_metrics.json")  # fmt: skip
    stats, point = result.stats, result.operating_point()
    say("best.pt (epoch %d) on the val split:\n%s\nP %.3f  R %.3f  mAP50 %.4f  mAP50-95 %.4f",
        best_epoch, result.table(), point["precision"], point["recall"], stats["mAP50"],
        stats["mAP50-95"])  # fmt: skip
    if result.errors is not None:
        say("errors at IoU %g (type, count, mAP50 gained if that type alone were fixed):\n  %s",
            result.errors.iou_thresholds[0], "\n  ".join(result.errors.lines()))  # fmt: skip
    best = result.thresholds.best.get("all") if result.thresholds is not None else None
    if best is not None:
        record = result.thresholds.to_dict()["best_f1"] | {"annotations": "the val split"}
        files["thresholds"] = write_thresholds(run_dir / "best.pt", record)
        say("best F1 %.3f at conf %.3f (%s: `--conf best` uses it)", best.f1, best.conf,
            files["thresholds"].name)  # fmt: skip
    say("evaluation of best.pt written to %s: %s", run_dir,
        ", ".join(p.name for p in files.values()))  # fmt: skip
    return files


def write_csv(history: list[dict[str, Any]], path: Path) -> None:
    """One row per epoch, floats to 6 significant digits, written atomically."""
    if not history:
        return
    text = io.StringIO(newline="")
    # union of keys: a run resumed from an older checkpoint gains columns later
    fields = list(dict.fromkeys(k for row in history for k in row))
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path, text.getvalue())


def results_figure(history: list[dict[str, Any]]) -> Any:
    """Train and val loss parts, P / R / mAP and lr by epoch (a missing value is a gap), as a
    ``Figure`` with its own canvas (no pyplot)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]

    def series(key: str) -> list[float]:
        return [row.get(key, math.nan) for row in history]

    fig = Figure(figsize=(16, 3.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, 4, sharex=True)  # an all-NaN panel (no validation) keeps the epochs
    for ax, prefix, title in ((axes[0], "", "train loss"), (axes[1], "val_", "val loss")):
        for part in PARTS:
            ax.plot(epochs, series(prefix + part), ".-", label=part)
        ax.set_title(title)
    for key in ("precision", "recall", "mAP50", "mAP50-95"):
        axes[2].plot(epochs, series(key), ".-", label=key)
    axes[2].set_title("validation (EMA weights)")
    axes[3].plot(epochs, series("lr"), ".-", color="tab:purple", label="lr")
    axes[3].set_title("learning rate (epoch end)")
    axes[3].ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def plot_results(history: list[dict[str, Any]], path: Path) -> Path:
    from detkit.core.visualize import save_figure

    return save_figure(results_figure(history), path)


def summary_table(history: list[dict[str, Any]], best_epoch: int) -> str:
    """The best and the last epoch side by side, as a fixed-width text table.

    Example:
        >>> rows = [{"epoch": 1, "box": 1.0, "obj": 2.0, "cls": 0.5, "val_box": 1.1,
        ...          "val_obj": 2.1, "val_cls": 0.6, "precision": 0.5, "recall": 0.25,
        ...          "mAP50": 0.4, "mAP50-95": 0.2}]
        >>> print(summary_table(rows, 1))
                 epoch   train loss     val loss        P        R      mAP50   mAP50-95
        best         1        3.500        3.800    0.500    0.250     0.4000     0.2000
        last         1        3.500        3.800    0.500    0.250     0.4000     0.2000
    """

    def total(row: dict[str, Any], prefix: str) -> float:
        return sum(row.get(prefix + p, math.nan) for p in PARTS)

    header = (f"{'':8}{'epoch':>6}{'train loss':>13}{'val loss':>13}{'P':>9}{'R':>9}"
              f"{'mAP50':>11}{'mAP50-95':>11}")  # fmt: skip
    lines = [header]
    by_epoch = {row["epoch"]: row for row in history}
    for label, epoch in (("best", best_epoch), ("last", history[-1]["epoch"])):
        row = by_epoch.get(epoch)
        if row is None:
            continue
        lines.append(
            f"{label:8}{epoch:>6}{total(row, ''):>13.3f}{total(row, 'val_'):>13.3f}"
            f"{row.get('precision', math.nan):>9.3f}{row.get('recall', math.nan):>9.3f}"
            f"{row.get('mAP50', math.nan):>11.4f}{row.get('mAP50-95', math.nan):>11.4f}"
        )
    return "\n".join(lines)
