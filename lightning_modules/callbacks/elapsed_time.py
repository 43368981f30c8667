"""ElapsedTime: log the training wall time at every epoch end, so "time to 94%" is read off the metrics, and say
early how long the whole run will take.

Why a callback of our own: Lightning's `Timer` measures time but never logs it, and a time-to-accuracy claim
(airbench's measure of speed) needs the wall time next to each epoch's `val/acc` in metrics.csv and on W&B.
The clock covers everything a user waits for from the first training batch on — training, validation,
checkpointing — but not process start-up, data loading or compilation before `on_train_start`. It is saved in
checkpoints, so a resumed run continues its clock instead of restarting it at zero. (Lightning's `Timer` keeps
its time across a resume too, but logs nothing.)

The estimate: the seed's CIFAR run is minutes on a GPU and about a day on 2 CPU cores, and Lightning's first
progress update comes only after `refresh_rate` steps. So once `ESTIMATE_AFTER` steps of this process have run
(the first `WARMUP_STEPS` left out: compilation, allocator warm-up), one line gives the measured seconds per step
and the time the remaining steps will take; on a machine without a GPU a long run adds the config's `cpu_hint`
(configs/cifar.yaml points to `make demo`; the callback itself knows no task).
"""
from __future__ import annotations

import math
import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from lightning_modules import metric_names as names


WARMUP_STEPS, ESTIMATE_AFTER = 2, 10
DEMO_HINT_AFTER_S = 1800  # a CPU run estimated longer than this gets `cpu_hint`


def duration(seconds: float) -> str:
    """1 h 05 min, 12 min, 40 s."""
    minutes = round(seconds / 60)
    if minutes >= 60:
        return f"{minutes // 60} h {minutes % 60:02d} min"
    return f"{minutes} min" if minutes else f"{seconds:.0f} s"


class ElapsedTime(pl.Callback):
    """Logs `time/elapsed_s` (wall seconds of fitting so far) and `time/epoch_s` at each training epoch end, and
    prints one estimate of the run's length early in the fit (see the module docstring)."""

    def __init__(self, cpu_hint: str | None = None) -> None:
        self.cpu_hint = cpu_hint
        self.elapsed_before = 0.0  # seconds accumulated by earlier processes (restored from a checkpoint)
        self.started: float | None = None
        self.epoch_started: float | None = None
        self.steps_seen = 0  # training batches of this process
        self.warm: float | None = None  # time when the warm-up steps were done
        self.estimate: str | None = None  # the line printed, kept for tests and callers

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.steps_seen += 1
        if self.steps_seen == WARMUP_STEPS:
            self.warm = self._now(trainer)
        elif self.steps_seen == ESTIMATE_AFTER and self.warm is not None:
            per_step = (self._now(trainer) - self.warm) / (ESTIMATE_AFTER - WARMUP_STEPS)
            remaining = trainer.estimated_stepping_batches - trainer.global_step
            if not math.isfinite(remaining):
                return
            remaining, total = int(remaining), per_step * remaining
            self.estimate = (f"ElapsedTime: {per_step:.3g} s per training step (steps {WARMUP_STEPS + 1}-"
                             f"{ESTIMATE_AFTER} of this process); the remaining {remaining:,} steps take about "
                             f"{duration(total)}, plus validation.")
            if self.cpu_hint and trainer.strategy.root_device.type == "cpu" and total > DEMO_HINT_AFTER_S:
                self.estimate += " " + self.cpu_hint
            bar = trainer.progress_bar_callback  # prints above the bar instead of into it
            if bar is not None and trainer.is_global_zero:
                bar.print(self.estimate)
            else:
                rank_zero_info(self.estimate)

    def _now(self, trainer: pl.Trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)  # count queued GPU work, not just its launch
        return time.perf_counter()

    def _total(self, now: float) -> float:
        return self.elapsed_before + (now - self.started if self.started is not None else 0.0)

    def elapsed(self, trainer: pl.Trainer) -> float:
        return self._total(self._now(trainer))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = self._now(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_started = self._now(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning runs the epoch's validation before this hook, so the time includes it.
        now = self._now(trainer)
        pl_module.log(names.ELAPSED_S, self.elapsed(trainer), on_epoch=True, sync_dist=False)
        pl_module.log(names.EPOCH_S, now - (self.epoch_started or now), on_epoch=True, sync_dist=False)

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed_s": self._total(time.perf_counter())}  # no trainer here to synchronise a GPU with

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.elapsed_before = float(state_dict.get("elapsed_s", 0.0))
