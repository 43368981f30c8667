"""ElapsedTime: log the training wall time at every epoch end, so "time to 94%" is read off the metrics.

Why a callback of our own: Lightning's `Timer` measures time but never logs it, and a time-to-accuracy claim
(airbench's measure of speed) needs the wall time next to each epoch's `val/acc` in metrics.csv and on W&B.
The clock covers everything a user waits for from the first training batch on — training, validation,
checkpointing — but not process start-up, data loading or compilation before `on_train_start`. It is saved in
checkpoints, so a resumed run continues its clock instead of restarting it at zero.
"""
from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch


class ElapsedTime(pl.Callback):
    """Logs `time/elapsed_s` (wall seconds of fitting so far) and `time/epoch_s` at each training epoch end."""

    def __init__(self) -> None:
        self.elapsed_before = 0.0  # seconds accumulated by earlier processes (restored from a checkpoint)
        self.started: float | None = None
        self.epoch_started: float | None = None

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
        pl_module.log("time/elapsed_s", self.elapsed(trainer), on_epoch=True, sync_dist=False)
        pl_module.log("time/epoch_s", now - (self.epoch_started or now), on_epoch=True, sync_dist=False)

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed_s": self._total(time.perf_counter())}  # no trainer here to synchronise a GPU with

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.elapsed_before = float(state_dict.get("elapsed_s", 0.0))
