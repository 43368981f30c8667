"""PreemptionCheckpoint: a SIGUSR1 (outside SLURM) stops fitting at a safe point and writes a resumable last.ckpt.

In-process: the signal is sent to this very process from a callback, so the test needs no subprocess; the SIGTERM
path through `cli.py` is covered by tests/test_cli_reliability.py::
test_sigterm_saves_last_ckpt_and_the_resumed_run_continues_its_csv_file_and_wandb_run.
"""
from __future__ import annotations

import os
import signal

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from lightning_modules.callbacks import NaNGuard, PreemptionCheckpoint
from lightning_modules.callbacks.preemption import EXIT_STATUS, last_checkpoint_paths
from tests.lightning_modules.callbacks.test_nan_guard import STEPS_PER_EPOCH, Diverging


class SignalAt(pl.Callback):
    """Sends `signum` to this process at the end of batch `step` (as a scheduler would, from outside)."""

    def __init__(self, signum: int, step: int) -> None:
        self.signum, self.step = signum, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class StepsTaken(pl.Callback):
    """The global step of the first batch this process trains, and how many it trains."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.count = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.first = trainer.global_step if self.first is None else self.first
        self.count += 1


def trainer_for(tmp_path, *callbacks: pl.Callback, max_epochs: int = 3) -> pl.Trainer:
    last = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="last", enable_version_counter=False)
    return pl.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[last, NaNGuard(), *callbacks])


def test_sigusr1_saves_mid_epoch_state_and_resume_continues_there(tmp_path):
    before = signal.getsignal(signal.SIGUSR1)
    torch.manual_seed(0)
    model = Diverging()
    with pytest.raises(SIGTERMException) as stop:
        trainer_for(tmp_path, PreemptionCheckpoint(), SignalAt(signal.SIGUSR1, step=11)).fit(model)
    assert stop.value.code == EXIT_STATUS  # 143: an interrupted run, not a finished one
    assert signal.getsignal(signal.SIGUSR1) == before  # the handler is gone after fit

    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["global_step"] == 11 and saved["epoch"] == 1  # mid-epoch 1, not the epoch-0 file (step 8)
    assert saved["lr_schedulers"][0]["last_epoch"] == 11  # the scheduler stepped with the optimizer: in sync
    assert torch.equal(saved["state_dict"]["head.weight"], model.head.weight.detach())
    assert not list(checkpoint.parent.glob("*.partial"))

    steps = StepsTaken()
    resumed = trainer_for(tmp_path / "resumed", steps, max_epochs=2)
    resumed.fit(Diverging(), ckpt_path=str(checkpoint))
    assert steps.first == 11 and steps.count == 2 * STEPS_PER_EPOCH - 11  # continued at step 11: the rest of epoch 1
    assert resumed.global_step == 2 * STEPS_PER_EPOCH


def test_an_ordinary_crash_saves_nothing(tmp_path):
    class Crash(pl.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step == 3:
                raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        trainer_for(tmp_path, PreemptionCheckpoint(), Crash()).fit(Diverging())
    assert not (tmp_path / "checkpoints").exists()


def test_without_a_last_checkpoint_callback_it_writes_under_default_root_dir(tmp_path):
    trainer = pl.Trainer(default_root_dir=tmp_path, logger=False, enable_checkpointing=False)
    assert last_checkpoint_paths(trainer) == [os.path.join(tmp_path, "checkpoints", "last.ckpt")]


class SignalAtEpochEnd(pl.Callback):
    """SIGTERM to this process as epoch 1's validation finishes: the longest pause between optimizer steps, where a
    scheduler's signal often lands (used by tests/test_cli_reliability.py through `--trainer.callbacks+=`)."""

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 1 and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGTERM)
