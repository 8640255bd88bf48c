"""The training loop: :func:`train_one_epoch` (the step, a function of explicit objects) and
:class:`Trainer`, the shell around it (epochs, validation, checkpoints, signals, DDP, logging).
The state moves only at optimiser updates, so a checkpoint always sits on an update boundary.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import logging
import math
import signal
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

import detkit
from detkit.core.deploy import Deploy
from detkit.core.io import WriteError
from detkit.core.protocols import DetectionModel, DetectionSplit
from detkit.data import data_report, ground_truth, images_to_float, set_loader_epoch
from detkit.data.loader import Batch, Loader
from detkit.engine import distributed as ddp
from detkit.engine.callbacks import Callbacks, RunInfo
from detkit.engine.device import autocast, cudnn_benchmark
from detkit.engine.feed import EpochSpeed, multiscale_size, resize_batch, speeds_line, until_signal
from detkit.engine.optim import ModelEMA, group_size, restore_optimization, schedule_position
from detkit.engine.resume import world_history
from detkit.engine.runlog import EpochBar, plot_results, summary_table, write_best_report, write_csv
from detkit.engine.safety import LoaderWorkerError, NonFiniteError, StopSignals, TrainingInterrupted
from detkit.engine.state import TrainOptions, TrainState
from detkit.engine.validate import evaluate_split, validate_split
from detkit.inference.predict import Detector
from detkit.models.checkpoint import (
    load_checkpoint,
    load_scaler,
    load_weights,
    nonfinite_entries,
    rng_state,
    save_checkpoint,
    set_rng_state,
    slim_in_place,
)
from detkit.models.losses.base import PARTS, Criterion

log = logging.getLogger(__name__)

__all__ = ["TrainOptions", "TrainState", "Trainer", "Updater", "train_one_epoch"]

VAL_METRICS = ("precision", "recall", "mAP50", "mAP50-95")
"""metrics.csv's validation columns besides the loss parts (P and R at the F1-optimal threshold)."""

Pending = list[tuple[torch.Tensor, list[str]]]
"""An accumulation group's ``([3] detached loss parts, image paths)``, not its (pinned) batches."""


def train_one_epoch(
    net: nn.Module, model: DetectionModel, criterion: Criterion, batches: Iterable[Batch],
    n: int, updater: Updater, state: TrainState, opts: TrainOptions, ctx: ddp.DistContext,
    device: torch.device, signals: StopSignals,
) -> Iterator[int]:  # fmt: skip
    """Forward, backward and one optimiser update per accumulation group over ``batches``, the
    epoch's from ``state.batch_in_epoch`` on (``n`` in all); yields after each update the stop
    signal any rank received (0: none). ``net``: ``model`` DDP-wrapped and/or compiled;
    ``batches``: ``uint8 [B, 3, S, S]`` images, ``[M, 6]`` targets (xyxy input px). Under DDP
    every rank runs it in step (each batch all-reduces its positives, each update its flags).
    """
    pending: Pending = []
    priors: dict[int, torch.Tensor] = {}  # per input size
    for batch in batches:
        index = state.batch_in_epoch + len(pending)
        group = group_size(index, n, opts.accumulate)
        size = multiscale_size(opts.seed, state.epoch, index, opts.img_size, opts.multi_scale, opts.stride)  # fmt: skip
        layout = torch.channels_last if opts.channels_last else torch.contiguous_format
        images = images_to_float(batch.images.to(device, non_blocking=True), layout)
        images, targets = resize_batch(images, batch.targets.to(device, non_blocking=True), size)
        images = images.contiguous(memory_format=layout)
        sync = len(pending) + 1 == group or not ctx.enabled  # DDP all-reduces at a group's end
        with contextlib.nullcontext() if sync else net.no_sync():
            with autocast(device, opts.amp):
                raw = net(images)
            if size not in priors:
                priors[size] = model.priors(size, size, device=device)
            sums, num_pos = criterion.sums(raw, targets, priors[size], model.feature_sizes(size, size))  # fmt: skip
            parts = sums / ddp.mean_over_ranks(num_pos, ctx).clamp(min=1.0)  # all ranks' positives
            updater.scaler.scale(parts.sum() / group).backward()
        pending.append((parts.detach(), list(batch.paths)))
        if len(pending) == group:
            yield updater.step(pending, state, signals.received or 0)  # the state moves here
            pending = []


class Updater:
    """The optimiser half of a step: unscale, clip (``grad_clip`` 0: no), the non-finite check,
    optimiser, EMA and schedule steps, the :class:`TrainState` counters. ``model``: the bare
    model; ``max_nonfinite`` skipped updates in a row end training (0: never), each logged at
    warning level when ``warn`` (rank 0; the ranks skip together)."""

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: LRScheduler,
        scaler: torch.amp.GradScaler, ema: ModelEMA, grad_clip: float, max_nonfinite: int,
        warn: bool, ctx: ddp.DistContext,
    ) -> None:  # fmt: skip
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.scaler, self.ema, self.grad_clip, self.ctx = scaler, ema, grad_clip, ctx
        self.max_nonfinite, self.warn = max_nonfinite, warn
        self.in_a_row = 0  # skipped updates in a row

    def step(self, pending: Pending, state: TrainState, signum: int) -> int:
        """Apply the group's summed gradients, or skip a non-finite update (:meth:`_skip`, which
        raises NonFiniteError); return the stop signal any rank received (0: none). One host
        sync; under DDP one all-reduce (max) of the flags and signal: the ranks act together."""
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.grad_clip > 0:
            norm = nn.utils.clip_grad_norm_(params, self.grad_clip)
        else:
            norm = nn.utils.get_total_norm([p.grad for p in params])
        parts = torch.stack([p for p, _ in pending]).double()  # [G, 3]
        # torch.full, not torch.tensor: a copy from the host would wait for the GPU as well
        flags = torch.stack([(~torch.isfinite(parts).all()).double(),
                             (~torch.isfinite(norm)).double(), torch.full_like(parts[0, 0], signum)])  # fmt: skip
        host = torch.cat([ddp.max_over_ranks_(flags, self.ctx), parts.flatten()]).tolist()
        bad_loss, bad_grad = bool(host[0]), bool(host[1])
        # an fp16 overflow of a finite loss is how the GradScaler finds its scale (skipped, not
        # a failure) until the scale is below 1: the gradients then overflow unscaled
        overflow = bad_grad and not bad_loss and self.scaler.is_enabled() and self.scaler.get_scale() >= 1.0  # fmt: skip
        bad = (bad_loss or bad_grad) and not overflow
        if not (bad or overflow):
            self.scaler.step(self.optimizer)
            self.ema.update(self.model)
        if self.scaler.is_enabled():
            self.scaler.update()  # lowers the scale after an overflow
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # the schedule moves per update, stepped or skipped
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            self.scheduler.step()
        state.batch_in_epoch, state.step = state.batch_in_epoch + len(pending), state.step + len(pending)  # fmt: skip
        state.overflows += overflow
        if bad:
            self._skip(pending, state)
        else:
            for i in range(3, len(host), 3):  # the group's loss parts, into the epoch sums
                for k, v in zip(PARTS, host[i : i + 3], strict=True):
                    state.epoch_sums[k] += v
            state.epoch_batches += len(pending)
            self.in_a_row = self.in_a_row if overflow else 0
        return int(host[2])

    def _skip(self, pending: Pending, state: TrainState) -> None:
        """Count and name a skipped update; take BN statistics its forward made non-finite back
        from the EMA, which saw no bad step.

        Raises:
            NonFiniteError: ``max_nonfinite`` updates in a row were skipped (message: where).
        """
        state.skipped, self.in_a_row = state.skipped + 1, self.in_a_row + 1
        ema = dict(self.ema.module.named_buffers())
        with torch.no_grad():
            for name, buf in self.model.named_buffers():
                if buf.is_floating_point() and not bool(torch.isfinite(buf).all()):
                    buf.copy_(ema[name])
        where = f"epoch {state.epoch + 1} batch {state.batch_in_epoch} (step {state.step})"
        images = [path for _, group in pending for path in group]
        shown = ", ".join(images[:8]) + (f" (+{len(images) - 8} more)" if len(images) > 8 else "")
        (log.warning if self.warn else log.debug)(
            "non-finite loss or gradient at %s: update skipped (%d in a row, %d in total); "
            "images: %s", where, self.in_a_row, state.skipped, shown,
        )  # fmt: skip
        if 0 < self.max_nonfinite <= self.in_a_row:
            raise NonFiniteError(where)


class Trainer:
    """The shell around :func:`train_one_epoch`: epochs, validation, checkpoints, stop signals,
    DDP and logging; :meth:`fit` is the loop. The loaders hold this rank's share; ``model`` is
    on ``device``, ready for DDP; ``config`` (plain data) is saved for resuming; ``run_dir``
    and ``callbacks`` (:mod:`detkit.engine.callbacks`) serve rank 0 alone."""

    def __init__(
        self, *, ctx: ddp.DistContext, device: torch.device, train_set: DetectionSplit,
        val_set: DetectionSplit, train_loader: Loader, val_loader: Loader, model: nn.Module,
        criterion: Criterion, optimizer: torch.optim.Optimizer, scheduler: LRScheduler,
        deploy: Deploy, config: dict[str, Any], opts: TrainOptions, run_dir: Path | None,
        callbacks: Iterable[object] = (),
    ) -> None:  # fmt: skip
        self.ctx, self.device, self.opts = ctx, device, opts
        self.config, self.deploy = config, deploy
        self.train_set, self.val_set = train_set, val_set
        self.train_loader, self.val_loader = train_loader, val_loader
        self.model, self.criterion = model, criterion
        self.optimizer, self.scheduler = optimizer, scheduler
        self.ema = ModelEMA(model, opts.ema_decay)
        self.net = self._training_module()
        scaler = torch.amp.GradScaler("cuda", enabled=opts.amp == torch.float16)
        self.updater = Updater(model, optimizer, scheduler, scaler, self.ema, opts.grad_clip,
                               opts.max_nonfinite, ctx.is_main, ctx)  # fmt: skip
        self.state = TrainState()
        self.load_failures = 0  # images that failed to decode mid-epoch (replaced, counted)
        self.signals = StopSignals()
        self.run_dir = run_dir if ctx.is_main else None
        self.callbacks = Callbacks(callbacks if ctx.is_main else ())  # rank 0 alone
        self._say = log.debug if opts.quiet or not ctx.is_main else log.info
        self._signalled = 0  # the stop signal agreed over ranks, 0 for none
        self._val_gt: Path | dict | None = None  # the val split's ground truth (rank 0)
        self.speed = EpochSpeed()  # this rank's pace in the current epoch
        self._validated = False  # a validation ran in this process (best.pt may exist)

    def fit(self) -> Path | None:
        """Train to the last epoch, early stop, ``max_steps`` or a stop signal; return the run
        folder (None on ranks other than 0).

        Raises:
            TrainingInterrupted: SIGINT/SIGTERM, after ``last.pt`` was written.
            NonFiniteError: ``max_nonfinite`` updates in a row were skipped.
        """
        t, s = self.opts, self.state
        self._start()
        fixed_size = self.device.type == "cuda" and t.multi_scale == 0
        with self.signals, self._closing(), cudnn_benchmark(fixed_size):
            self.callbacks.fire("on_train_start", self.run_info())
            while (s.epoch < t.epochs or s.val_pending is not None) and not s.stop_reason:
                if s.val_pending is None:  # else resumed between an epoch and its validation
                    self.epoch()
                    if s.stop_reason:  # interrupted or max_steps mid-epoch: last.pt written
                        break
                    self._close_epoch()
                metrics = self.validate() if self._eval_due() else {}
                if metrics is None:  # a stop signal during validation: last.pt holds the epoch
                    s.stop_reason = "interrupted"
                    break
                means, s.val_pending = s.val_pending, None
                self._validated = self._validated or self._eval_due()
                self.end_epoch(means, metrics)  # metrics.csv, last.pt, best.pt, early stop
                if s.epoch < t.epochs:  # a signal during the last epoch: nothing left to stop
                    s.stop_reason = s.stop_reason or self._stop_reason()
            if s.stop_reason in ("", "early_stop"):  # finished: nothing left to resume
                if self.run_dir is not None:
                    self._slim_checkpoints()
                if self._validated and not self._signalled_now():
                    self._evaluate_best()  # the detailed evaluation of best.pt as written
                if self._signalled and self.run_dir is not None:  # the run itself is complete
                    self._say("a stop signal came: no evaluation of best.pt was written; "
                              "`detkit eval --weights %s` gives it", self.run_dir / "best.pt")  # fmt: skip
        return self._finish()

    def _close_epoch(self) -> None:
        """Log every rank's speed, count the epoch, keep its training-loss means; when a
        validation follows, write ``last.pt`` first (torchrun sends SIGKILL 30 s after SIGTERM,
        a long validation must lose no training; a resume runs the validation first)."""
        mine = self.speed.summary()
        log.debug("rank %d: %.1f images/s, data wait %.0f%%", self.ctx.rank, mine[0], 100 * mine[1])
        rows = ddp.gather_to_main(mine, self.ctx)  # a collective
        if rows is not None:
            self._say(speeds_line(rows))
        sums = self._sums_over_ranks()
        n = sums[-1]  # batches
        means = {k: v / n if n else math.nan for k, v in zip(PARTS, sums, strict=False)}
        self.state.next_epoch()
        self.state.val_pending = means | {"time": time.perf_counter() - self._t0}
        if self._eval_due():
            self.save("last.pt")

    def epoch(self) -> None:
        """The epoch from ``batch_in_epoch`` on, saving and stopping at update boundaries."""
        s, n, t = self.state, len(self.train_loader), self.opts
        set_loader_epoch(self.train_loader, s.epoch, s.batch_in_epoch)
        self.net.train()
        bar = EpochBar(n, s.batch_in_epoch, f"epoch {s.epoch + 1}/{t.epochs}", t.batch,
                       disable=t.quiet or not self.ctx.is_main)  # fmt: skip
        self.speed = EpochSpeed()
        batches = until_signal(self.train_loader, self.signals, self.speed)
        steps = train_one_epoch(self.net, self.model, self.criterion, batches, n, self.updater,
                                s, t, self.ctx, self.device, self.signals)  # fmt: skip
        try:
            before = s.step
            for self._signalled in steps:
                bar.show(
                    s.step - before, s.epoch_sums, s.epoch_batches, self.scheduler.get_last_lr()[0]
                )
                if s.batch_in_epoch < n:  # at the epoch's end, fit() checks after end_epoch
                    s.stop_reason = self._stop_reason()
                    every = t.save_every
                    if s.stop_reason or (every > 0 and s.step // every > before // every):
                        self.save("last.pt")
                    if s.stop_reason:
                        break
                before = s.step
        except NonFiniteError as e:
            raise NonFiniteError(self._diverged_message(str(e))) from None
        except LoaderWorkerError:  # raised between two batches: the state is consistent
            bar.close()
            if s.batch_in_epoch and not self.ctx.enabled:
                self.save("last.pt")  # keep this epoch's updates for --resume
            raise
        bar.close()
        self.load_failures += self.speed.failed
        if self.load_failures:
            log.warning("%d images failed to load this run and were replaced by the next "
                           "(see the warnings above)", self.load_failures)  # fmt: skip
        if self.signals.received and s.batch_in_epoch < n and not self.ctx.enabled:
            s.stop_reason = "interrupted"  # the loader's workers died of the same Ctrl-C
            self.save("last.pt")

    def step(self, batch: Batch) -> None:
        """One update on ``batch`` alone, outside any epoch (for benchmarks)."""
        self.state.batch_in_epoch = 0
        for _ in train_one_epoch(self.net, self.model, self.criterion, [batch], 1, self.updater,
                                 self.state, self.opts, self.ctx, self.device, self.signals):  # fmt: skip
            pass

    def validate(self) -> dict[str, float] | None:
        """:func:`validate_split` of the EMA weights: metrics on rank 0, ``{}`` on the others,
        None on every rank when a stop signal came."""
        ddp.broadcast_module(self.ema.module, self.ctx, buffers_only=True)  # rank 0's EMA BN
        return validate_split(
            self.detector(), self.criterion, self.val_loader, self._val_ground_truth(), self.ctx,
            progress=not self.opts.quiet, stop=self._signalled_now,
        )  # fmt: skip

    def _val_ground_truth(self) -> Path | dict | None:
        """The val split's ground truth, built once, in memory, on rank 0 (which scores)."""
        if self._val_gt is None and self.ctx.is_main:
            self._val_gt = ground_truth(self.val_set)
        return self._val_gt

    def detector(self, conf: float | None = None, model: nn.Module | None = None) -> Detector:
        """The EMA model (or ``model``) as a :class:`Detector` (default: validation's ``conf``)."""
        d = self.deploy
        return Detector(
            self.ema.module if model is None else model, d.class_names, d.img_size,
            conf=self.opts.val_conf if conf is None else conf, iou=d.iou, max_det=d.max_det,
            cat_ids=d.cat_ids, amp=self.opts.amp,
        )  # fmt: skip

    def end_epoch(self, means: dict[str, float], metrics: dict[str, float]) -> None:
        """Record the epoch, save last.pt (and best.pt when mAP50-95 improved), early stop."""
        t, s = self.opts, self.state
        row = {"epoch": s.epoch, "step": s.step, "lr": self.scheduler.get_last_lr()[0], **means}
        row |= {f"val_{k}": metrics.get(f"val_{k}", math.nan) for k in PARTS}
        row |= {k: metrics.get(k, math.nan) for k in VAL_METRICS} | {"skipped": s.skipped}
        s.history.append(row)
        improved = bool(metrics) and metrics["mAP50-95"] > s.best_map
        if improved:
            s.best_map, s.best_epoch = metrics["mAP50-95"], s.epoch
        stale = bool(metrics) and t.patience > 0 and s.epoch - s.best_epoch >= t.patience
        if ddp.on_main(lambda: stale, self.ctx):  # rank 0 alone has the metrics
            s.stop_reason = "early_stop"
        kept = [f"epoch{s.epoch}.pt"] if t.save_period and s.epoch % t.save_period == 0 else []
        self.save("last.pt", *(["best.pt"] if improved else []), *kept)
        if self.run_dir is not None:  # rewritten whole: a resumed run's file is whole too
            write_csv(s.history, self.run_dir / "metrics.csv")
        if metrics:
            val_loss = sum(row[f"val_{k}"] for k in PARTS)
            self._say(
                "epoch %d/%d: P %.3f  R %.3f  mAP50 %.4f  mAP50-95 %.4f  val loss %.3f  "
                "(best mAP50-95 %.4f, epoch %d)", s.epoch, t.epochs, row["precision"],
                row["recall"], row["mAP50"], row["mAP50-95"], val_loss, s.best_map, s.best_epoch,
            )  # fmt: skip
        self.callbacks.fire("on_epoch_end", dict(row))  # after last.pt: a callback may stop it

    def save(self, *names: str) -> None:
        """Sum the epoch's losses over ranks, then rank 0 writes (:meth:`write`); every rank
        calls, and a failure to write is raised on every rank (none waits in a collective)."""
        sums = self._sums_over_ranks()
        ddp.on_main(lambda: self.write(names, sums), self.ctx)

    def _sums_over_ranks(self) -> list[float]:
        """The epoch's loss-part sums, then its batch count, over every rank."""
        s = self.state
        return ddp.sum_over_ranks([*s.epoch_sums.values(), s.epoch_batches], self.ctx, self.device)

    def write(self, names: tuple[str, ...], sums: list[float]) -> None:
        """Rank 0: write :meth:`checkpoint` to ``names`` in the run folder (no collective).

        Raises:
            NonFiniteError: the weights hold NaN/inf; nothing is written, the old files stay.
            WriteError: the run folder is gone, or a file cannot be written (disk full,
                read-only): one message naming the file and what was kept.
        """
        s = self.state
        if not self.run_dir.is_dir():  # the writer would make a new, bare folder: say so
            raise WriteError(
                f"the run folder {self.run_dir} was deleted during training: stopped at epoch "
                f"{s.epoch} (step {s.step}) with nothing saved; start again, or resume a copy "
                "of an earlier last.pt", errno.ENOENT,
            )  # fmt: skip
        ckpt = self.checkpoint(sums)
        bad = nonfinite_entries(ckpt["model"]) + nonfinite_entries(ckpt["ema"])
        if bad:
            raise NonFiniteError(
                f"refusing to save non-finite weights ({', '.join(bad[:5])}) over "
                f"{self.run_dir / names[0]}; the previous file is intact"
            )
        for name in names:
            save_checkpoint(ckpt, self.run_dir / name)

    def checkpoint(self, sums: list[float] | None = None) -> dict[str, Any]:
        """Everything to resume or deploy, as plain data; ``sums``: over all ranks."""
        s = self.state
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict(),
            "ema_updates": self.ema.updates,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.updater.scaler.state_dict(),
            **s.to_dict(sums),
            "rng": rng_state(self.device),
            # the data pipeline's randomness is a pure function of these and the batch number
            "data": {
                "seed": self.opts.seed,
                "epoch": s.epoch,
                "start_batch": s.batch_in_epoch,
                "batches": len(self.train_loader),  # per epoch, at this number of processes
            },
            "world_size": self.ctx.world_size,
            "config": self.config,
            "deploy": self.deploy.to_dict(),
            "class_names": list(self.deploy.class_names),
            "cat_ids": self.deploy.cat_ids,
            "version": detkit.__version__,
        }

    def load(self, ckpt: dict[str, Any]) -> None:
        """Restore a :meth:`checkpoint` (the caller checked that it fits this config)."""
        load_weights(self.model, ckpt["model"], "the checkpoint's model")
        load_weights(self.ema.module, ckpt["ema"], "the checkpoint's EMA")
        self.ema.updates = int(ckpt["ema_updates"])
        self.state = TrainState.from_checkpoint(ckpt, keep_sums=self.ctx.is_main)
        per_epoch = math.ceil(len(self.train_loader) / self.opts.accumulate)
        position = schedule_position(self.state.epoch, self.state.batch_in_epoch, per_epoch,
                                     self.opts.accumulate)  # fmt: skip
        restore_optimization(self.optimizer, self.scheduler, ckpt.get("optimizer"),
                             ckpt["scheduler"], position)  # fmt: skip
        if "optimizer" not in ckpt and self.ctx.is_main:  # a finished run's slim checkpoint
            log.info("extending a finished run: its checkpoint keeps no optimiser state "
                     "(dropped when the run ended), so the optimiser restarts from the EMA "
                     "weights at the schedule's learning rate")  # fmt: skip
        load_scaler(self.updater.scaler, ckpt.get("scaler"))
        set_rng_state(ckpt["rng"], self.device)
        self.state.world, note = world_history(
            ckpt, self.ctx.world_size, self.opts.batch, self.opts.accumulate, len(self.train_loader)
        )
        if note and self.ctx.is_main:
            log.warning(note)

    def _training_module(self) -> nn.Module:
        """The module the loop calls: DDP-wrapped under torchrun, compiled when asked."""
        self.ddp_module = ddp.wrap_ddp(self.model, self.ctx, self.device)
        if not self.opts.compile:
            return self.ddp_module
        try:  # torch.compile fails lazily, at the first forward: run one here, in the guard
            compiled = torch.compile(self.ddp_module)
            self._warm_up(compiled)
            return compiled
        except Exception as e:  # e.g. no C++ compiler or Triton, an unsupported platform
            log.warning("compile=true failed (%s: %s); training uncompiled", type(e).__name__, e)
            return self.ddp_module

    def _warm_up(self, module: nn.Module) -> None:
        """A blank batch's forward and backward, so that compilation fails inside the fallback."""
        size, batch = self.opts.img_size, max(self.opts.batch // self.ctx.world_size, 1)
        x = torch.zeros(batch, 3, size, size, device=self.device)
        if self.opts.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        buffers = {name: b.clone() for name, b in self.model.named_buffers()}
        was_training = module.training
        module.train()
        try:
            with autocast(self.device, self.opts.amp):
                raw = module(x)
            raw.float().mean().backward()
        finally:
            module.train(was_training)
            self.model.zero_grad(set_to_none=True)
            with torch.no_grad():
                for name, b in self.model.named_buffers():
                    b.copy_(buffers[name])

    def _stop_reason(self) -> str:
        """Why the run stops at this update boundary, or "" (the same on every rank)."""
        if self.state.batch_in_epoch == 0:  # at an epoch's end: gather the signal flags afresh
            self._signalled_now()
        if self._signalled:
            return "interrupted"
        return "max_steps" if 0 < self.opts.max_steps <= self.state.step else ""

    def _signalled_now(self) -> bool:
        """Whether any rank received a stop signal (kept for the exit status)."""
        signum = torch.tensor([float(self.signals.received or 0)], device=self.device)
        self._signalled = int(ddp.max_over_ranks_(signum, self.ctx).item())
        return bool(self._signalled)

    def _eval_due(self) -> bool:
        t, e = self.opts, self.state.epoch
        return e == t.epochs or (t.val and e % t.eval_every == 0)

    def _diverged_message(self, where: str) -> str:
        last = self.run_dir / "last.pt" if self.run_dir else None
        kept = f"{last} is intact" if last and last.exists() else "no checkpoint was written yet"
        return (
            f"training stopped: {self.updater.in_a_row} updates in a row had a non-finite loss or "
            f"gradient (up to {where}; the warnings name the images)."
            f" Skipped updates never change the weights; {kept}. Try a lower lr, a longer "
            "warmup_epochs or amp=false, and check those images"
        )

    def _start(self) -> None:
        # metrics.csv "time" is training wall time, carried on over resumes
        last = self.state.val_pending or (self.state.history[-1] if self.state.history else {})
        self._t0 = time.perf_counter() - last.get("time", 0.0)
        if not self.state.world:  # a new run; a resumed one brings its history
            self.state.world = [[self.state.step, self.ctx.world_size]]
        if not self.ctx.is_main:
            return
        splits = {"train": self.train_set, "val": self.val_set}
        data_report(splits, self.run_dir, log=not self.opts.quiet)
        if self.opts.plots and not (self.run_dir / "labels.png").exists():  # once per run
            from detkit.data.stats import dataset_statistics, plot_labels  # no image decoded

            stats = dataset_statistics(self.train_set)
            plot_labels(stats, "training labels", self.run_dir / "labels.png")
        for stale in self.run_dir.glob(".*.pt.*.tmp"):  # left by a process killed mid-save
            stale.unlink(missing_ok=True)
        t, ranks = self.opts, f" x {self.ctx.world_size} processes" if self.ctx.enabled else ""
        self._say(
            "training on %s%s: %d train / %d val images, %d classes, batch %d (%d per update), "
            "%d loader workers, run folder %s",
            self.device, ranks, len(self.train_set), len(self.val_set), len(self.deploy.class_names),
            t.batch, t.batch * self.opts.accumulate, self.train_loader.num_workers, self.run_dir,
        )  # fmt: skip
        if t.recipe:
            self._say(t.recipe)

    def _evaluate_best(self) -> None:
        """Score ``best.pt`` (every rank predicts its share) and write its report."""
        best = self.run_dir / "best.pt" if self.run_dir is not None else None
        if not ddp.on_main(lambda: best is not None and best.is_file(), self.ctx):
            return  # no validation ever scored above -1
        model = copy.deepcopy(self.ema.module)  # the same network; the EMA stays as it is
        if best is not None:
            load_weights(model, load_checkpoint(best)["ema"], best)
        ddp.broadcast_module(model, self.ctx)
        o = self.opts
        result = evaluate_split(
            self.detector(model=model), self.val_loader, self._val_ground_truth(), self.ctx,
            progress=not o.quiet, stop=self._signalled_now, cm_conf=o.cm_conf, cm_iou=o.cm_iou,
            error_ious=o.error_ious,
        )  # fmt: skip
        if result is not None and self.run_dir is not None:
            write_best_report(result, self.run_dir, self.state.best_epoch, o.plots, self._say)

    def _slim_checkpoints(self) -> None:
        """Float16 EMA weights and no optimiser state in ``best.pt`` and ``last.pt``."""
        for name in ("best.pt", "last.pt"):
            if (self.run_dir / name).is_file():
                slim_in_place(self.run_dir / name)

    @contextlib.contextmanager
    def _closing(self) -> Iterator[None]:
        """However training ends: loaders closed, results.png drawn, callbacks told how."""
        failure: BaseException | None = None
        try:
            yield
        except BaseException as e:
            failure = e
            raise
        finally:
            self.train_loader.close()
            self.val_loader.close()
            if self.run_dir is not None and self.opts.plots and self.state.history:
                plot_results(self.state.history, self.run_dir / "results.png")
            reason = self.state.stop_reason
            if failure is not None:
                reason = "interrupted" if isinstance(failure, KeyboardInterrupt) else "error"
            try:
                if self.callbacks:
                    self.callbacks.fire("on_train_end", self.run_info(reason))
            except Exception:  # a run already failing: the first error goes on
                if failure is None:
                    raise
                log.exception("a callback failed in on_train_end after the run failed")

    def run_info(self, stop_reason: str | None = None) -> RunInfo:
        """What callbacks are told; ``stop_reason`` given: at the end, with the files."""
        s, files = self.state, {}
        if stop_reason is not None and self.run_dir is not None:
            files = {p.name: p for p in sorted(self.run_dir.iterdir())
                     if p.is_file() and not p.name.startswith(".")}  # fmt: skip
        return RunInfo(
            self.run_dir or Path(), self.config, list(self.deploy.class_names), s.epoch,
            self.opts.epochs, s.best_epoch, s.best_map,
            stop_reason if stop_reason is not None else "", files,
        )  # fmt: skip

    def _finish(self) -> Path | None:
        # No rank may exit before rank 0 has written last.pt: torchrun stops every rank as
        # soon as one exits with an error status (143 after a signal).
        ddp.barrier(self.ctx)
        s, last = self.state, self.run_dir / "last.pt" if self.run_dir else None
        if self.run_dir is not None and s.history:
            minutes = (time.perf_counter() - self._t0) / 60
            self._say(
                "%s\n%d epochs in %.1f min, %d skipped updates; weights in %s",
                summary_table(s.history, s.best_epoch), s.epoch, minutes, s.skipped, self.run_dir,
            )  # fmt: skip
        if s.overflows and self.run_dir is not None:
            self._say("%d fp16 steps were skipped by the GradScaler (overflows while it adjusts "
                      "its scale: normal, the weights were not changed)", s.overflows)  # fmt: skip
        if s.stop_reason == "max_steps":
            self._say("stopped at max_steps: continue with --resume %s max_steps=0", last)
        elif s.stop_reason == "early_stop":
            self._say("no better mAP50-95 in %d epochs: stopped early", self.opts.patience)
        elif s.stop_reason == "interrupted":
            signum = self._signalled or self.signals.received or signal.SIGINT
            raise TrainingInterrupted(signum, str(last or ""))
        return self.run_dir
