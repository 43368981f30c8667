"""ElapsedTime logs the fitting wall time per epoch, keeps counting across a resume, and feeds time-to-accuracy."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from datamodules import CIFAR10DataModule
from lightning_modules import ImageClassifier
from lightning_modules.callbacks import ElapsedTime, elapsed_time
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
    resumed = study_report.per_epoch(rows, "time/elapsed_s")
    resumed_epoch_s = study_report.per_epoch(rows, "time/epoch_s")
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


@pytest.mark.parametrize("task", ["cifar", "cars", "wikitext2_lstm", "wikitext2_qrnn"])
def test_every_task_config_logs_elapsed_time_and_only_cifar_points_to_its_demo(task):
    callbacks = yaml.safe_load((REPO / "configs" / f"{task}.yaml").read_text())["trainer"]["callbacks"]
    [elapsed] = [c for c in callbacks if c["class_path"] == "lightning_modules.callbacks.ElapsedTime"]
    hint = elapsed.get("init_args", {}).get("cpu_hint", ElapsedTime().cpu_hint)
    assert (hint is not None and "`make demo`" in hint) is (task == "cifar")


DEMO_HINT = "No GPU is in use: `make demo` trains a CPU-sized CIFAR-10 run."


class FakeClock:
    """perf_counter advancing `step_s` seconds at every read, however fast the machine is."""

    def __init__(self, step_s: float) -> None:
        self.now, self.step_s = 0.0, step_s

    def __call__(self) -> float:
        self.now += self.step_s
        return self.now


@pytest.mark.parametrize("seconds_per_read, cpu_hint, demo_hint",
                         [(1.0, DEMO_HINT, False), (800.0, DEMO_HINT, True), (800.0, None, False)])
def test_the_run_time_is_estimated_once_early_and_a_cpu_run_that_is_long_points_to_make_demo(
        cifar_dir, tmp_path, monkeypatch, seconds_per_read, cpu_hint, demo_hint):
    monkeypatch.setattr(elapsed_time.time, "perf_counter", FakeClock(seconds_per_read))
    callback = ElapsedTime(cpu_hint=cpu_hint)
    net = WideResNet(num_groups=2, blocks_per_group=1, widen_factor=1)
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         callbacks=[callback], enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(ImageClassifier(net, tta=0), CIFAR10DataModule(str(cifar_dir), batch_size=16))  # 5 steps per epoch
    # one estimate, after step 10: steps 3-10 measured, 15 - 10 steps left; slow on a CPU → the demo is suggested
    per_step = float(callback.estimate.split("ElapsedTime: ")[1].split(" s per training step")[0])
    assert per_step > 0 and callback.estimate.count("ElapsedTime") == 1
    assert f"(steps 3-10 of this process); the remaining 5 steps take about {elapsed_time.duration(5 * per_step)}" \
        in callback.estimate
    assert ("`make demo`" in callback.estimate) is demo_hint
