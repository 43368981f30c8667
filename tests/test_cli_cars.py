"""cli.py with configs/cars.yaml: links, optimizer choices, and one end-to-end two-stage `fit` + resume subprocess."""
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
from tests.conftest import REPO
from tests.lightning_modules.test_finetuning import reference_schedule
from tests.wandb_records import logged_metrics

TINY_STAGES = [{"epochs": 1, "lr": 0.01, "frozen_groups": 2},
               {"epochs": 2, "lr": 0.003, "lr_multipliers": [1 / 9, 1 / 3, 1.0]}]


def tiny_cars_config(path: Path, data_dir: Path, root: Path) -> Path:
    """An override file, as a user would write one: resnet18 from scratch, 32 px, 1 + 2 epochs."""
    path.write_text(yaml.safe_dump({
        "model": {"init_args": {"net": {"init_args": {"arch": "resnet18", "weights": None}}, "stages": TINY_STAGES}},
        "data": {"init_args": {"data_dir": str(data_dir), "batch_size": 4, "num_workers": 0, "image_size": 32}},
        "trainer": {"max_epochs": 3, "default_root_dir": str(root), "log_every_n_steps": 1,
                    "enable_progress_bar": False},
    }))
    return path


def test_cars_config_links_196_classes_and_builds_the_seed_recipe(cars_root, tmp_path):
    override = tiny_cars_config(tmp_path / "tiny.yaml", cars_root, tmp_path)
    run = cli.main(["--config", "configs/cars.yaml", "--config", str(override)], run=False)
    assert run.datamodule.num_classes == 196 and run.model.net.head[-1].out_features == 196
    seed = yaml.safe_load((REPO / "configs" / "cars.yaml").read_text())["model"]["init_args"]
    assert [s["epochs"] for s in seed["stages"]] == [20, 40] and [s["lr"] for s in seed["stages"]] == [1e-2, 3e-3]
    assert seed["stages"][1]["lr_multipliers"] == pytest.approx([1 / 9, 1 / 3, 1])
    assert seed["optimizer"]["init_args"]["weight_decay"] == 1e-3 and seed["optimizer"]["class_path"] == "torch.optim.Adam"
    assert "l2-wd" in run.trainer.loggers[1]._wandb_init["tags"]


@pytest.mark.parametrize("optim_config, name, amsgrad, tag", [
    ("configs/optim/cars_adamw.yaml", "AdamW", False, "decoupled-wd"),
    ("configs/optim/cars_amsgrad.yaml", "Adam", True, "l2-wd"),
])
def test_cars_optimizer_choices_compose(cars_root, tmp_path, optim_config, name, amsgrad, tag):
    override = tiny_cars_config(tmp_path / "tiny.yaml", cars_root, tmp_path)
    run = cli.main(["--config", "configs/cars.yaml", "--config", optim_config, "--config", str(override)], run=False)
    optimizer = run.model.optimizer_factory([torch.nn.Parameter(torch.zeros(1))])
    assert type(optimizer).__name__ == name and optimizer.defaults["amsgrad"] is amsgrad
    assert optimizer.defaults["weight_decay"] == 1e-3 and tag in run.trainer.loggers[1]._wandb_init["tags"]


def _lr_rows(metrics_csv: Path) -> dict[int, list[float]]:
    rows = csv.DictReader(metrics_csv.open())
    return {int(r["step"]): [float(r[f"lr-Adam/pg{i}"]) for i in (1, 2, 3)] for r in rows if r.get("lr-Adam/pg3")}


@pytest.mark.slow
def test_fit_runs_both_stages_and_resumes_mid_stage_two_from_last(cars_root, tmp_path):
    root = tmp_path / "run"
    override = tiny_cars_config(tmp_path / "tiny.yaml", cars_root, root)
    base = [sys.executable, "cli.py", "fit", "--config", "configs/cars.yaml", "--config", str(override)]
    env = {**os.environ, "WANDB_MODE": "offline"}
    # 10 training images / 4 per batch = 2 full batches per epoch: stage 1 = steps 0-1, stage 2 = steps 2-5.
    first = subprocess.run([*base, "--trainer.max_epochs", "2", "--test_after_fit", "false"], cwd=REPO,
                           capture_output=True, text=True, timeout=600, env=env)  # stops after stage 2's first epoch
    assert first.returncode == 0, first.stderr[-3000:]
    assert "stops before the end of model.stages" in first.stderr
    # The resume in this process (the fit above was the command line): the same run folder, the same W&B run.
    resumed = cli.main([*base[2:], "--ckpt_path", "last",
                        "--trainer.callbacks+=tests.lightning_modules.callbacks.test_preemption.StepsTaken"])
    steps = next(cb for cb in resumed.trainer.callbacks if type(cb).__name__ == "StepsTaken")
    assert (steps.first, steps.count) == (4, 2)  # continued after the first run's 4 steps, and took the last 2

    expected = [lrs for lrs, _ in reference_schedule([0.0, 0.0, 0.01], 2)]
    expected += [lrs for lrs, _ in reference_schedule([0.003 / 9, 0.003 / 3, 0.003], 4)]
    run_dir = resumed_dir = root / "csv" / "version_0"  # the resumed run continues its version and metrics.csv
    assert [p.name for p in (root / "csv").iterdir()] == ["version_0"]
    lrs_by_step = _lr_rows(run_dir / "metrics.csv")
    assert sorted(lrs_by_step) == list(range(6))  # steps 0-3 before the stop, 4-5 after it, each once
    for step, lrs in lrs_by_step.items():
        assert lrs == pytest.approx(expected[step], rel=1e-6, abs=1e-12), f"lrs at step {step}"

    stages = [float(r["train/stage"]) for r in csv.DictReader((run_dir / "metrics.csv").open()) if r["train/stage"]]
    assert stages == [1.0, 2.0, 2.0]
    header = (resumed_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"test/acc", "test/acc_tta", "val/acc", "train/stage"} <= set(header)
    state = torch.load(resumed_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["finetune_stage"] == 1 and state["global_step"] == 6
    assert state["state_dict"]["net.head.8.weight"].shape == (196, 512)
    from lightning_modules import ImageClassifier

    reloaded = ImageClassifier.load_from_checkpoint(resumed_dir / "checkpoints" / "last.ckpt")  # no config needed
    assert reloaded.active_stage == 1 and [s.epochs for s in reloaded.stages] == [1, 2]

    wandb_runs = sorted(root.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(wandb_runs) == 1  # one W&B run: the first half's history replayed into the resumed one
    history = logged_metrics(wandb_runs[0])
    assert history["train/stage"] == [1.0, 2.0, 2.0] and len(history["lr-Adam/pg1"]) == 6
