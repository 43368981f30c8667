"""cli.py killed with SIGKILL in the middle of an epoch, restarted with `--ckpt_path last`: the resumed run logs the
same lr, beta1 and weight decay at every step as an uninterrupted run and ends at the same global step.

SIGKILL cannot be caught, so nothing is saved when it lands: the run resumes from the newest `last.ckpt` written
before it. The kill is sent by the process to itself at a chosen step (`SigkillAt`), so "the middle of an epoch"
is exact rather than a race with a fast tiny net. Two cases:
- the configs as shipped (last.ckpt at every epoch end): the resume restarts the interrupted epoch from its
  beginning;
- with the documented opt-in for long epochs, a second ModelCheckpoint writing last.ckpt every N steps: the resume
  continues mid-epoch, at the saved loader position (datamodules/resumable_loader.py).
Both end with bit-identical weights (RNGStateCheckpoint being in the config).
"""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import Callback

import cli
from lightning_modules.callbacks import AtomicCheckpointIO
from tests.conftest import REPO
from tests.test_cli_reliability import tiny_cifar_args

EPOCHS, STEPS_PER_EPOCH = 3, 10  # the fixture's 80 training images in batches of 8
KILL_AT = 15  # the middle of epoch 1
# The README's opt-in for long epochs: last.ckpt also every N optimizer steps (the epoch-end save stays).
MID_EPOCH_SAVES = ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.filename", "last",
                   "--trainer.callbacks.enable_version_counter", "false",
                   "--trainer.callbacks.every_n_train_steps", "4"]


class SigkillAt(Callback):
    """Kills this very process with SIGKILL right after optimizer step `step` (no handler runs, nothing is saved)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def run_args(cifar_dir: Path, root: Path, override: Path, extra: list[str]) -> list[str]:
    return ["fit", *tiny_cifar_args(cifar_dir, root), "--config", str(override), "--test_after_fit", "false",
            *extra]


def csv_only_override(path: Path) -> Path:
    """Only the CSV logger (no W&B process), and the LearningRateMonitor's values at every step."""
    path.write_text(yaml.safe_dump({"trainer": {
        "max_epochs": EPOCHS, "log_every_n_steps": 1,
        "logger": [{"class_path": "pytorch_lightning.loggers.CSVLogger",
                    "init_args": {"save_dir": ".", "name": "csv"}}],
    }}))
    return path


def schedule(metrics_csv: Path) -> dict[int, dict[str, float]]:
    """{step: {LearningRateMonitor column: value}} from a CSVLogger metrics.csv."""
    rows: dict[int, dict[str, float]] = {}
    for row in csv.DictReader(metrics_csv.open()):
        values = {key: float(value) for key, value in row.items() if key.startswith("lr-") and value}
        if values:
            rows.setdefault(int(row["step"]), {}).update(values)
    return rows


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pl.Trainer]:
    """The same config run to the end in this process, once for both cases (its data folder is shared with them)."""
    from tests.conftest import make_cifar_folder

    tmp = tmp_path_factory.mktemp("uninterrupted")
    cifar_dir, root = make_cifar_folder(tmp / "cifar"), tmp / "run"
    run = cli.main(run_args(cifar_dir, root, csv_only_override(tmp / "csv.yaml"), []))
    return cifar_dir, run.trainer


@pytest.mark.slow
@pytest.mark.parametrize("mid_epoch_saves", [False, True], ids=["epoch-end last.ckpt", "plus every 4 steps"])
def test_sigkill_mid_epoch_then_resume_last_follows_the_uninterrupted_schedule(uninterrupted, tmp_path,
                                                                              mid_epoch_saves):
    cifar_dir, reference = uninterrupted
    root, override = tmp_path / "run", csv_only_override(tmp_path / "csv.yaml")
    extra = MID_EPOCH_SAVES if mid_epoch_saves else []
    killed = subprocess.run(
        [sys.executable, "cli.py", *run_args(cifar_dir, root, override, extra),
         f"--trainer.callbacks+={__name__}.SigkillAt", "--trainer.callbacks.step", str(KILL_AT)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    checkpoints = root / "csv" / "version_0" / "checkpoints"
    saved_step = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    assert saved_step == (12 if mid_epoch_saves else STEPS_PER_EPOCH)  # the newest save before the kill at 15
    assert sorted(p.name for p in checkpoints.iterdir() if not p.name.startswith("epoch")) == ["last.ckpt"]

    resumed = cli.main(run_args(cifar_dir, root, override, [*extra, "--ckpt_path", "last"])).trainer
    assert resumed.ckpt_path == str(checkpoints / "last.ckpt")
    assert isinstance(resumed.strategy.checkpoint_io, AtomicCheckpointIO)  # the configs' plugin
    assert resumed.global_step == reference.global_step == EPOCHS * STEPS_PER_EPOCH

    expected = schedule(Path(reference.logger.log_dir) / "metrics.csv")
    logged = schedule(root / "csv" / "version_1" / "metrics.csv")
    assert sorted(logged) == list(range(saved_step, EPOCHS * STEPS_PER_EPOCH))  # every remaining step, once
    assert {"lr-AdamW", "lr-AdamW-momentum", "lr-AdamW-weight_decay"} <= set(logged[saved_step])
    for step, values in logged.items():
        assert values == expected[step], f"step {step}"
    # RNG states and (mid-epoch) the loader's position restored: the very same weights
    for name, weight in reference.lightning_module.state_dict().items():
        assert torch.equal(resumed.lightning_module.state_dict()[name], weight), name
