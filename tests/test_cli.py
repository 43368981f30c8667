"""cli.py: config composition, links, logger placement, --print_config, and one end-to-end `fit` subprocess."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import cli
from cli_resume import RUN_KEY
from datamodules import CIFAR10DataModule
from tests.conftest import REPO, TINY_WRN_ARGS
from tests.wandb_records import config_keys, config_values, logged_metrics, run_tags



class SevenClasses(CIFAR10DataModule):
    """A datamodule with another class count, to prove the net's output size comes from the data."""

    num_classes = 7


def parse(*args: str):
    return cli.main(["--config", "configs/cifar.yaml", *TINY_WRN_ARGS, "--trainer.enable_progress_bar", "false",
                     *args], run=False)


def test_num_classes_is_linked_from_the_datamodule(cifar_dir, tmp_path):
    run = parse("--data", "tests.test_cli.SevenClasses", "--data.data_dir", str(cifar_dir),
                "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path))
    assert run.model.net.head[-1].out_features == 7


def test_config_names_resolve_from_any_folder(tmp_path, monkeypatch):
    """`--config cifar.yaml --config=optim/amsgrad.yaml` from another folder, on the command line as users type
    it: both name files under configs/, and lr_find's fit line still gets the words as typed."""
    monkeypatch.chdir(tmp_path)
    typed = ["--config", "cifar.yaml", *TINY_WRN_ARGS, "--config=optim/amsgrad.yaml", "--trainer.logger", "false",
             "--trainer.default_root_dir", str(tmp_path)]
    monkeypatch.setattr("sys.argv", ["cli.py", *typed])
    run = cli.main(run=False)
    optimizer = run.model.optimizer_factory([__import__("torch").nn.Parameter(__import__("torch").zeros(1))])
    assert optimizer.defaults["amsgrad"] is True and run.model.net.head[-1].out_features == 10
    assert run.argv == typed


def test_unknown_config_name_lists_the_configs_there_are(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--config", "cifra.yaml"], run=False)
    err = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and "Traceback" not in err
    assert err.startswith("cli.py: error: --config cifra.yaml is neither a file nor a config in ")
    assert "cifar.yaml, cifar_cpu.yaml" in err and "optim/amsgrad.yaml" in err and "studies/" not in err


def test_optim_configs_compose_and_tag_the_wandb_run(tmp_path):
    run = parse("--config", "configs/optim/amsgrad.yaml", "--trainer.default_root_dir", str(tmp_path))
    optimizer = run.model.optimizer_factory([__import__("torch").nn.Parameter(__import__("torch").zeros(1))])
    assert type(optimizer).__name__ == "AdamW" and optimizer.defaults["amsgrad"] is True
    csv_logger, wandb_logger = run.trainer.loggers
    assert Path(csv_logger.save_dir) == tmp_path  # "." in the YAML means under default_root_dir
    assert set(wandb_logger._wandb_init["tags"]) >= {"cifar10", "adamw", "amsgrad", "decoupled-wd"}
    assert Path(wandb_logger.save_dir) == tmp_path


def test_adam_l2_run_is_tagged_l2():
    run = parse("--config", "configs/optim/adam_l2.yaml", "--trainer.default_root_dir", "/tmp/unused")
    tags = run.trainer.loggers[1]._wandb_init["tags"]
    assert "adam" in tags and "l2-wd" in tags and "decoupled-wd" not in tags


def test_print_config_shows_the_composed_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--config", "configs/cifar.yaml", "--config", "configs/optim/sgd.yaml", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["optimizer"]["class_path"] == "torch.optim.SGD"
    assert printed["seed_everything"] == 0
    assert printed["model"]["init_args"]["lr_scheduler"]["init_args"]["pct_start"] == 0.4625


def test_smoke_trainer_config_limits_the_run_and_keeps_the_1cycle_consistent(cifar_dir, tmp_path):
    run = parse("--config", "configs/trainer/smoke.yaml", "--data.data_dir", str(cifar_dir), "--data.batch_size", "8",
                "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path))
    run.trainer.fit(run.model, run.datamodule)
    assert run.trainer.global_step == 5
    assert run.trainer.lr_scheduler_configs[0].scheduler.total_steps == 5  # estimated_stepping_batches


def test_every_task_config_sets_seed_everything():
    for path in (REPO / "configs").glob("*.yaml"):
        config = yaml.safe_load(path.read_text())
        if "model" in config and "class_path" in config["model"]:  # complete task configs, not overrides
            assert isinstance(config.get("seed_everything"), int), f"{path} must set seed_everything"


@pytest.mark.slow
def test_two_fits_started_together_under_one_root_each_write_checkpoints_config_csv_and_wandb_of_their_own(
        cifar_dir, tmp_path):
    """The end-to-end `fit` as users run it, twice at the same moment under one `default_root_dir` (AdamW wd 0.1
    beside wd 0.3: the ordinary way to use a cluster). Each run gets its own claimed version folder holding its own
    config.yaml, metrics.csv and checkpoints (whose run record names that folder), and its own W&B run naming it.
    Before the claim both took version_0 and one run's rows and config were lost."""
    root = tmp_path / "run"
    command = [sys.executable, "cli.py", "fit", "--config", "configs/cifar.yaml", "--config", "configs/optim/adamw.yaml",
               *TINY_WRN_ARGS, "--data.data_dir", str(cifar_dir), "--data.download", "false",
               "--data.batch_size", "16",
               "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(root),
               "--trainer.log_every_n_steps", "1"]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}  # one core each: they run side by side
    runs = {wd: subprocess.Popen([*command, "--model.init_args.optimizer.init_args.weight_decay", wd], cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for wd in ("0.1", "0.3")}
    for run in runs.values():
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-3000:]

    folders = sorted((root / "csv").iterdir())
    assert [folder.name for folder in folders] == ["version_0", "version_1"]
    decays = set()
    for run_dir in folders:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())  # next to checkpoints/
        assert saved["model"]["init_args"]["optimizer"]["class_path"] == "torch.optim.AdamW"
        assert saved["trainer"]["default_root_dir"] == str(root)
        decay = saved["model"]["init_args"]["optimizer"]["init_args"]["weight_decay"]
        decays.add(decay)
        checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
        assert "last.ckpt" in checkpoints and any(name.startswith("epoch") for name in checkpoints)
        for checkpoint in (run_dir / "checkpoints").iterdir():  # written by this run only
            record = torch.load(checkpoint, weights_only=True)[RUN_KEY]
            assert record["csv_version"] == int(run_dir.name.removeprefix("version_"))
            assert yaml.safe_load(record["config"])["model"]["init_args"]["optimizer"]["init_args"][
                "weight_decay"] == decay

        with open(run_dir / "metrics.csv", newline="") as file:
            rows = list(csv.DictReader(file))
        for column in ["train/loss", "val/acc", "test/acc", "test/acc_tta", "lr-AdamW", "lr-AdamW-momentum",
                       "lr-AdamW-weight_decay"]:
            assert column in rows[0], f"{column} missing from metrics.csv"
        assert sum(bool(row["train/loss"]) for row in rows) == 10  # this run's 10 steps, no other run's
        assert {float(row["lr-AdamW-weight_decay"]) for row in rows if row["lr-AdamW-weight_decay"]} == {decay}
    assert decays == {0.1, 0.3}

    wandb_files = list(root.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(wandb_files) == 2
    named = set()
    for wandb_file in wandb_files:
        history = logged_metrics(wandb_file)
        assert len(history["train/loss"]) == 10  # 80 images / 16 per batch × 2 epochs, logged every step
        assert len(history["val/acc"]) == 2 and len(history["test/acc_tta"]) == 1
        assert history["lr-AdamW-momentum"][0] == pytest.approx(0.95, abs=0.02)
        assert {"model", "data", "trainer"} <= config_keys(wandb_file)
        assert {"cifar10", "adamw", "decoupled-wd"} <= set(run_tags(wandb_file))
        config = config_values(wandb_file)
        run_dir = Path(config["run"]["dir"])  # the W&B run names its own run folder, and that folder's config
        assert config["run"]["csv_version"] == int(run_dir.name.removeprefix("version_"))
        decay = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["init_args"]["optimizer"][
            "init_args"]["weight_decay"]
        assert history["lr-AdamW-weight_decay"][0] == decay
        named.add(run_dir)
    assert named == set(folders)
