"""ElapsedTime logs the fitting wall time per epoch, keeps counting across a resume, and feeds time-to-accuracy."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from datamodules import CIFAR10DataModule
from lightning_modules import ElapsedTime, ImageClassifier
from lightning_modules.nets import WideResNet
from scripts import study_report, time_to_accuracy
from tests.conftest import REPO


def fit(cifar_dir, root, max_epochs: int, ckpt_path=None) -> None:
    torch.manual_seed(0)
    net = WideResNet(num_groups=3, blocks_per_group=1, widen_factor=1)
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=CSVLogger(root, name="csv"),
                         callbacks=[ElapsedTime(), ModelCheckpoint(filename="{epoch}", save_top_k=-1)],
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(ImageClassifier(net, tta=0), CIFAR10DataModule(str(cifar_dir), batch_size=16), ckpt_path=ckpt_path)


def test_elapsed_time_grows_per_epoch_and_continues_after_resume(cifar_dir, tmp_path):
    fit(cifar_dir, tmp_path, max_epochs=2)
    rows = study_report.read_metrics(tmp_path)
    elapsed, epoch_s = study_report.per_epoch(rows, "time/elapsed_s"), study_report.per_epoch(rows, "time/epoch_s")
    assert len(elapsed) == len(epoch_s) == 2
    assert 0 < elapsed[0] < elapsed[1] and all(s > 0 for s in epoch_s)
    assert elapsed[1] - elapsed[0] == pytest.approx(epoch_s[1], rel=0.5)  # the clock runs during the epoch

    checkpoint = next(tmp_path.glob("csv/version_0/checkpoints/epoch=0.ckpt"))
    fit(cifar_dir, tmp_path, max_epochs=2, ckpt_path=str(checkpoint))  # epoch 1 again, in a new process state
    rows = study_report.read_metrics(tmp_path)
    resumed, resumed_epoch_s = study_report.per_epoch(rows, "time/elapsed_s"), study_report.per_epoch(rows, "time/epoch_s")
    assert len(resumed) == 2 and resumed[0] == elapsed[0]
    # continued from the checkpoint's clock (≈ elapsed[0] + the epoch), not restarted at 0 (≈ the epoch alone)
    assert resumed[1] >= elapsed[0] + 0.5 * resumed_epoch_s[1]

    summary = time_to_accuracy.summarize(tmp_path, target=0.0)
    assert (summary["epochs"], summary["epoch_reached"]) == (2, 1)
    assert summary["seconds_to_target"] == pytest.approx(elapsed[0]) and summary["total_seconds"] == resumed[1]
    never = time_to_accuracy.summarize(tmp_path, target=1.01)
    assert never["epoch_reached"] is None and never["seconds_to_target"] is None
    text = time_to_accuracy.markdown([summary, never], "T")
    assert text.startswith("# T") and text.count(f"`{tmp_path}`") == 2 and "| — |" in text


def test_cifar_config_logs_elapsed_time():
    callbacks = yaml.safe_load((REPO / "configs" / "cifar.yaml").read_text())["trainer"]["callbacks"]
    assert "lightning_modules.ElapsedTime" in [c["class_path"] for c in callbacks]
