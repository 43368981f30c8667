"""W&B for cluster users, tested as a user runs it: a CLI run with `configs/trainer/offline_node.yaml` leaves a
wandb-osh sync request naming its own offline W&B folder after each validation; the real `wandb-osh` command
syncs that folder with `wandb sync` (a stand-in `wandb` on PATH: no network); and every panel of the project's
dashboard (`scripts/wandb_dashboard.py`) shows a metric that real offline runs of ours contain.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pytorch_lightning import Callback

import cli
from lightning_modules import metric_names as names
from lightning_modules.callbacks import WandbSyncRequest
from lightning_modules.loggers.resumable import read_wandb_records, wandb_history
from scripts import wandb_dashboard
from tests.conftest import REPO, TINY_WRN_ARGS, make_cifar_folder
from tests.datamodules.test_wikitext2 import write_corpus
from tests.test_cli_cars import tiny_cars_config
from tests.test_cli_wikitext2 import tiny_config as tiny_wikitext_config

EPOCHS = 2


class RequestRecorder(Callback):
    """Runs after `WandbSyncRequest` (it is appended after it): writes down, at each validation end, the requests
    waiting in the communication folder, then takes them away as wandb-osh would — except the last, which the
    `wandb-osh` test consumes."""

    def __init__(self, communication_dir: str, out: str):
        self.communication_dir, self.out = Path(communication_dir), Path(out)

    def on_validation_end(self, trainer, pl_module) -> None:
        requests = sorted(self.communication_dir.glob("*.command"))
        with self.out.open("a") as f:
            f.write(json.dumps({"sanity": trainer.sanity_checking, "epoch": trainer.current_epoch,
                                "requests": [path.read_text() for path in requests]}) + "\n")
        if trainer.current_epoch < trainer.max_epochs - 1:
            for path in requests:
                path.unlink()


def fit(task_args: list[str], root: Path, *extra: str) -> Path:
    """`cli.py fit` (then its test) with the default loggers, W&B offline; the run's offline W&B file."""
    cli.main(["fit", *task_args, "--trainer.default_root_dir", str(root), "--trainer.max_epochs", str(EPOCHS),
              "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false", *extra])
    return next(root.glob("wandb/offline-run-*/run-*.wandb"))


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory) -> dict:
    """A CIFAR run as a cluster user starts it: the task config + offline_node.yaml (its folder given)."""
    tmp = tmp_path_factory.mktemp("cifar_offline_node")
    communication, log = tmp / "wandb_osh_commands", tmp / "requests.jsonl"
    recorder = tmp / "recorder.yaml"
    recorder.write_text(yaml.safe_dump({"trainer": {"callbacks+": [{
        "class_path": "tests.test_cli_wandb_cluster.RequestRecorder",
        "init_args": {"communication_dir": str(communication), "out": str(log)}}]}}))
    data = make_cifar_folder(tmp / "cifar")
    run_file = fit(["--config", "configs/cifar.yaml", *TINY_WRN_ARGS, "--data.data_dir", str(data),
                    "--data.download", "false", "--data.batch_size", "16", "--trainer.limit_train_batches", "2",
                    "--config", "configs/trainer/offline_node.yaml",
                    "--trainer.callbacks.init_args.communication_dir", str(communication), "--config", str(recorder)],
                   tmp / "run")
    return {"file": run_file, "communication": communication,
            "log": [json.loads(line) for line in log.read_text().splitlines()]}


def test_a_request_names_the_runs_offline_folder_after_each_validation_and_none_for_the_sanity_check(cifar_run):
    folder = cifar_run["file"].parent
    assert folder.name.startswith("offline-run-") and folder.parent.name == "wandb"
    assert [(entry["sanity"], entry["requests"]) for entry in cifar_run["log"]] == [
        (True, []), *[(False, [str(folder.resolve())])] * EPOCHS]


def test_wandb_osh_on_the_login_node_runs_wandb_sync_in_that_folder(cifar_run, tmp_path):
    stand_in = tmp_path / "bin" / "wandb"
    stand_in.parent.mkdir()
    calls = tmp_path / "wandb_calls.txt"
    stand_in.write_text(f'#!/bin/sh\necho "$PWD|$*" >> {calls}\n')
    stand_in.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if key != "PYTEST_CURRENT_TEST"}  # else it only pretends
    env["PATH"] = f"{stand_in.parent}{os.pathsep}{env['PATH']}"
    command = shutil.which("wandb-osh", path=str(Path(sys.executable).parent)) or "wandb-osh"
    process = subprocess.Popen([command, "--command-dir", str(cifar_run["communication"]), "--wait", "0.2"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while not calls.is_file() and time.time() < deadline and process.poll() is None:
            time.sleep(0.2)
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert calls.is_file(), f"wandb-osh never called wandb: {output[-2000:]}"
    assert calls.read_text().splitlines() == [f"{cifar_run['file'].parent.resolve()}|sync ."], output[-2000:]


def test_without_a_wandb_logger_it_stops_in_one_sentence(tmp_path, cifar_dir):
    run = cli.main(["--config", "configs/cifar.yaml", "--config", "configs/trainer/csv_only.yaml", "--config",
                    "configs/trainer/offline_node.yaml", *TINY_WRN_ARGS, "--data.data_dir", str(cifar_dir),
                    "--data.download", "false", "--trainer.default_root_dir", str(tmp_path)], run=False)
    callback = next(c for c in run.trainer.callbacks if isinstance(c, WandbSyncRequest))
    with pytest.raises(ValueError, match=r"has no W&B logger: drop offline_node.yaml, or .*csv_only.yaml"):
        callback.setup(run.trainer, run.model, "fit")


def test_other_ranks_write_nothing(tmp_path):
    class Rank1:
        is_global_zero, sanity_checking = False, False

    callback = WandbSyncRequest(str(tmp_path / "commands"))
    callback.setup(Rank1(), None, "fit")
    callback.on_validation_end(Rank1(), None)
    assert not (tmp_path / "commands").exists()


# --- the dashboard ------------------------------------------------------------------------------------------------
def run_contents(run_file: Path) -> dict:
    """What an offline run holds: its history keys, its config (nested, as logged) and its group."""
    history = set().union(*(row.keys() for row in wandb_history(run_file)))
    config, group = {}, None
    for record in read_wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        items = record.run.config.update if kind == "run" else record.config.update if kind == "config" else []
        config.update({item.key: json.loads(item.value_json) for item in items if item.key})
        group = record.run.run_group if kind == "run" else group
    return {"history": history, "config": config, "group": group}


def config_has(config: dict, dotted: str) -> bool:
    value = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return False
        value = value[part]
    return True


@pytest.fixture(scope="module")
def runs(cifar_run, tmp_path_factory, request) -> dict:
    """One real offline run per task section, as the CLI writes them."""
    tmp = tmp_path_factory.mktemp("dashboard_runs")
    corpus = write_corpus(tmp / "wikitext")
    wikitext_config = tiny_wikitext_config(tmp / "wikitext.yaml", corpus, tmp / "wikitext_run")
    wikitext = fit(["--config", "configs/wikitext2_lstm.yaml", "--config", str(wikitext_config)], tmp / "wikitext_run")
    cars_root = request.getfixturevalue("cars_root")  # skips, saying why, without the real devkit
    cars = fit(["--config", "configs/cars.yaml", "--config",
                str(tiny_cars_config(tmp / "cars.yaml", cars_root, tmp / "cars_run"))], tmp / "cars_run",
               "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1")
    return {"CIFAR-10": run_contents(cifar_run["file"]), "Stanford Cars": run_contents(cars),
            "WikiText-2": run_contents(wikitext)}


def test_every_panel_shows_a_metric_our_runs_log(runs):
    workspace = wandb_dashboard.build("someone", "superconvergence")
    rows = wandb_dashboard.panel_metrics(workspace)
    assert {row["section"] for row in rows} == {*wandb_dashboard.TASKS, "Schedules", "Sweeps"}
    for row in rows:
        where = [runs[row["section"]]] if row["section"] in runs else list(runs.values())
        if row["section"] == "Sweeps":
            where = [runs["CIFAR-10"]]  # both sweeps are CIFAR-10 runs
        for run in where:
            if row["kind"] in ("history", "summary"):
                assert row["name"] in run["history"], row
            elif row["kind"] == "history_regex":
                assert any(re.search(row["name"], key) for key in run["history"]), row
            else:
                assert config_has(run["config"], row["name"]), row
    # the task metrics come from the project's list, and the schedules show every parameter group
    assert {row["name"] for row in rows} >= {*names.IMAGE_TESTS, *names.LANGUAGE_TESTS, names.TRAIN_STAGE}
    assert sum(bool(re.search(names.SCHEDULES["learning rate"], key)) for key in runs["Stanford Cars"]["history"]) == 3
    # grouped by the optimizer's tag (a config entry of every run) and the W&B group
    assert [key.name for key in workspace.runset_settings.groupby] == [names.OPTIMIZER_TAG, "Group"]
    assert {run["config"][names.OPTIMIZER_TAG] for run in runs.values()} == {"adamw", "adam"}
    assert {run["group"] for run in runs.values()} == {"cifar10", "stanford-cars", "wikitext2"}


def test_dry_run_prints_the_workspace_and_saving_without_a_key_says_what_to_do(capsys, monkeypatch, tmp_path):
    wandb_dashboard.main(["--entity", "someone", "--dry-run"])
    printed = capsys.readouterr().out
    assert printed.startswith("workspace 'superconvergence' for someone/superconvergence, runs grouped by "
                              "Config('optimizer_tag'), Metric('Group')")
    assert "BarPlot 'CIFAR-10: test': summary:test/acc, summary:test/acc_tta" in printed
    assert "ParallelCoordinatesPlot 'sweep cifar_optimizers'" in printed
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no settings: no key
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.raises(SystemExit, match=r"run `wandb login` \(or set WANDB_API_KEY\) first, or pass --dry-run"):
        wandb_dashboard.main(["--entity", "someone"])
