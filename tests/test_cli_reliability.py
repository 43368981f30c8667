"""cli.py under trouble: W&B unreachable → offline with a warning; SIGTERM → last.ckpt, exit 143, resume goes on."""
from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pytorch_lightning.loggers import WandbLogger

import cli
import cli_loggers
from cli_resume import RUN_KEY
from tests.conftest import REPO, TINY_WRN_ARGS
from tests.lightning_modules.callbacks.test_preemption import StepsTaken
from tests.wandb_records import logged_metrics


def tiny_cifar_args(cifar_dir: Path, root: Path) -> list[str]:
    return ["--config", "configs/cifar.yaml", *TINY_WRN_ARGS, "--data.data_dir", str(cifar_dir),
            "--data.download", "false", "--data.batch_size", "8", "--trainer.default_root_dir", str(root),
            "--trainer.enable_progress_bar", "false"]


def test_wandb_falls_back_to_offline_when_its_host_is_unreachable(cifar_dir, tmp_path, monkeypatch):
    import wandb

    monkeypatch.delenv("WANDB_MODE", raising=False)  # conftest's offline default, lifted for this test only
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: connection refused
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef" * 2 + "01234567")  # 40 characters, like a real key
    monkeypatch.setenv("WANDB_HTTP_TIMEOUT", "3")  # cap the one verification request
    wandb.teardown()  # wandb reads the environment once per process (its singleton): make it read this one
    started = time.monotonic()
    with pytest.warns(UserWarning, match=r"WandbLogger: online logging cannot start \(.*127\.0\.0\.1:9.*"
                                         r"logs offline under .*/wandb instead"):
        run = cli.main([*tiny_cifar_args(cifar_dir, tmp_path), "--config", "configs/trainer/smoke.yaml",
                        "--trainer.logger.init_args.offline", "false"], run=False)
    checked_in = time.monotonic() - started
    wandb_logger = run.trainer.loggers[1]
    try:
        run.trainer.fit(run.model, run.datamodule)
        assert run.trainer.global_step == 5  # trained normally
    finally:
        wandb.finish()
        wandb.teardown()  # and forget it again, so later tests see their own WANDB_MODE
    assert checked_in < 30, f"the W&B check took {checked_in:.0f} s"
    assert isinstance(wandb_logger, WandbLogger)
    run_files = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    assert len(logged_metrics(run_files[0])["train/loss"]) == 5


def test_wandb_check_is_skipped_when_offline_is_asked_for(monkeypatch):
    from jsonargparse import Namespace

    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert cli_loggers.wandb_offline_reason(Namespace(offline=True)) is None
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert cli_loggers.wandb_offline_reason(Namespace(offline=False)) is None


def metric_steps(metrics_csv: Path) -> dict[str, list[int]]:
    """{metric: the steps it was logged at, in file order} from a CSV logger's metrics.csv."""
    steps: dict[str, list[int]] = {}
    with metrics_csv.open() as file:
        for row in csv.DictReader(file):
            for key, value in row.items():
                if value and key not in ("step", "epoch"):
                    steps.setdefault(key, []).append(int(row["step"]))
    return steps


@pytest.mark.slow
def test_sigterm_saves_last_ckpt_and_the_resumed_run_continues_its_csv_file_and_wandb_run(cifar_dir, tmp_path):
    root = tmp_path / "run"
    logged_every_step = ["--trainer.log_every_n_steps", "1"]
    # The signal comes as epoch 1's validation ends (the process sends it to itself, so the moment is always the
    # same): a checkpoint Lightning's restart does not expect, where the logging step used to slip by one.
    command = [sys.executable, "cli.py", "fit", *tiny_cifar_args(cifar_dir, root), "--trainer.max_epochs", "1000",
               *logged_every_step,
               "--trainer.callbacks+=tests.lightning_modules.callbacks.test_preemption.SignalAtEpochEnd"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        checkpoint = root / "csv" / "version_0" / "checkpoints" / "last.ckpt"
        stdout, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 143, stderr[-3000:]  # 128 + SIGTERM: interrupted, not finished
    assert "PreemptionCheckpoint: stopped by a signal at global step" in stderr
    for noise in ("litlogger", "anonymous setting", "git root", "LeafSpec", "`weights_only` was not set"):
        assert noise not in stdout + stderr, noise  # startup and preemption notices that say nothing useful
    step = int(stderr.split("stopped by a signal at global step ")[1].split(";")[0])
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["global_step"] == step == 20  # the end of epoch 1 (10 batches each), saved on the signal
    assert not list(checkpoint.parent.glob("*.partial"))

    resumed = cli.main(["fit", *tiny_cifar_args(cifar_dir, root), "--trainer.max_epochs", "1000", *logged_every_step,
                        "--trainer.max_steps", str(step + 2), "--test_after_fit", "false", "--ckpt_path", "last",
                        "--trainer.callbacks+=tests.lightning_modules.callbacks.test_preemption.StepsTaken"])
    steps = next(cb for cb in resumed.trainer.callbacks if isinstance(cb, StepsTaken))
    assert resumed.trainer.ckpt_path == str(checkpoint)
    assert (steps.first, steps.count, resumed.trainer.global_step) == (step, 2, step + 2)  # continued from the signal
    # One run for the loggers: the same CSV version, and one W&B offline folder holding both halves.
    assert [p.name for p in (root / "csv").iterdir()] == ["version_0"]
    logged = metric_steps(root / "csv" / "version_0" / "metrics.csv")
    assert logged["train/loss"] == list(range(step + 2))  # every step once, across the stop
    assert {name: at for name, at in logged.items() if len(set(at)) != len(at)} == {}  # none twice at one step
    folders = list((root / "wandb").glob("offline-run-*"))
    assert len(folders) == 1 and folders[0].name.endswith(saved[RUN_KEY]["id"])
    history = logged_metrics(next(folders[0].glob("run-*.wandb")))
    assert sorted(history["trainer/global_step"])[0] == 0 and max(history["trainer/global_step"]) == step + 1
    assert len(history["train/loss"]) == step + 2
