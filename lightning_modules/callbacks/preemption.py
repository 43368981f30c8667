"""PreemptionCheckpoint: on SIGTERM or SIGUSR1, write `last.ckpt` at a safe point, then exit with status 143.

What Lightning 2.6 does alone (trainer/connectors/signal_connector.py, loops/): during `fit` it installs a SIGTERM
handler that only sets `trainer.received_sigterm`; the loops then raise `SIGTERMException` (a `SystemExit` with no
code, so the process exits with status 0) after the current optimizer step and its scheduler step, or between
validation batches. Nothing is saved unless a callback does it in `on_exception`. SIGUSR1 is handled only under
SLURM with auto-requeue (it saves `hpc_ckpt_*.ckpt` and requeues); anywhere else its default action kills the
process on the spot. `ModelCheckpoint(save_on_exception=True)` would save on *every* exception, a diverged
(NaN) state included, which would overwrite the last good `last.ckpt` (see NaNGuard).

So this callback, for Kubernetes, `kill`, `timeout`, a scheduler's grace signal or plain SLURM `--signal`:
- SIGUSR1, when no one else handles it (SLURM auto-requeue does), is treated as SIGTERM (forwarded to Lightning's
  handler), so both stop at the same safe point;
- on the `SIGTERMException` during `fit`, it saves the full training state (weights, optimizer, scheduler, loop
  progress, callbacks) to every `last.ckpt` the trainer's ModelCheckpoints write (`filename: last` in our configs,
  or `save_last`), which `cli.py --ckpt_path last` resumes from; with none it writes
  `<default_root_dir>/checkpoints/last.ckpt`. The file is written beside and renamed into place, so a kill during
  the save leaves the previous `last.ckpt` whole;
- it keeps the loggers' step continuous across the stop: Lightning's restart adds one to the logging step
  (`_batches_that_stepped`) when the checkpoint was not written where Lightning itself writes them, which a stop
  at an epoch's end is not, so the first resumed step would be logged one step late and its own step left empty.
  The checkpoint records how far the logging step runs ahead of `global_step` (0 with one optimizer), and the
  first resumed batch sets it back to that;
- it sets the exit status to 128 + SIGTERM = 143, the shell's convention, so a Kubernetes Job or a retry loop sees an
  interrupted run, not a finished one (Lightning's 0 would mark it done).
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_info

EXIT_STATUS = 128 + signal.SIGTERM  # 143


def last_checkpoint_paths(trainer: pl.Trainer) -> list[str]:
    """Where this trainer keeps its `last.ckpt` (one per ModelCheckpoint that writes one), else a default place."""
    paths = [os.path.join(cb.dirpath, cb.CHECKPOINT_NAME_LAST + cb.FILE_EXTENSION)
             for cb in trainer.checkpoint_callbacks
             if isinstance(cb, ModelCheckpoint) and cb.dirpath
             and (cb.save_last or cb.filename == cb.CHECKPOINT_NAME_LAST)]
    return list(dict.fromkeys(paths)) or [os.path.join(trainer.default_root_dir, "checkpoints", "last.ckpt")]


class PreemptionCheckpoint(pl.Callback):
    """Saves `last.ckpt` when fitting is stopped by SIGTERM (or SIGUSR1), so `--ckpt_path last` resumes there."""

    def __init__(self) -> None:
        self._previous_sigusr1: Any = None
        self.saved: list[str] = []
        self._step_offset = 0  # the logging step minus global_step, as of the latest batch
        self._saving = False
        self._offset_to_restore: int | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The first fresh epoch after resuming: set before any callback logs in it (LearningRateMonitor does at
        # batch start). Not while Lightning is still replaying the interrupted epoch: it sets the step itself then.
        if self._offset_to_restore is not None and not trainer.fit_loop.epoch_loop.restarting:
            trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step + self._offset_to_restore

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        loop = trainer.fit_loop.epoch_loop
        if self._offset_to_restore is not None:  # the first batch after resuming from a preemption checkpoint
            loop._batches_that_stepped = trainer.global_step + self._offset_to_restore
            self._offset_to_restore = None
        self._step_offset = loop._batches_that_stepped - trainer.global_step

    def state_dict(self) -> dict[str, Any]:
        return {"logging_step_offset": self._step_offset} if self._saving else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._offset_to_restore = state_dict.get("logging_step_offset")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning registers its handlers just before this hook, SLURM's SIGUSR1 requeue handler included: keep it.
        if (hasattr(signal, "SIGUSR1") and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None)):
            self._previous_sigusr1 = signal.getsignal(signal.SIGUSR1)
            signal.signal(signal.SIGUSR1, self._forward_to_sigterm_handler)

    @staticmethod
    def _forward_to_sigterm_handler(signum: int, frame: FrameType | None) -> None:
        handler = signal.getsignal(signal.SIGTERM)
        if callable(handler):
            handler(signum, frame)  # Lightning's: sets trainer.received_sigterm, the loops stop at a safe point

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._previous_sigusr1 is not None and signal.getsignal(signal.SIGUSR1) == self._forward_to_sigterm_handler:
            signal.signal(signal.SIGUSR1, self._previous_sigusr1)
        self._previous_sigusr1 = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return  # a crash or a NaN: the state is not one to resume from
        exception.code = EXIT_STATUS
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return  # nothing trained yet in this stage (or not fitting): the existing last.ckpt stays as it is
        for path in last_checkpoint_paths(trainer):
            partial = f"{path}.partial"
            self._saving = True
            try:
                trainer.save_checkpoint(partial, weights_only=False)  # the full state (and no "not set" notice)
            finally:
                self._saving = False
            if trainer.is_global_zero:
                Path(partial).replace(path)
            self.saved.append(path)
            rank_zero_info(f"PreemptionCheckpoint: stopped by a signal at global step {trainer.global_step}; saved "
                           f"{path} — resume with `--ckpt_path last` (cli.py) or `--ckpt_path {path}`.")
