"""Resuming through cli.py: the right run is found, a run length its 1cycle cannot cover stops before anything is
written, `init_weights` starts a fresh 1cycle from trained weights, and a full disk stops the run in one sentence.

Two real runs share one run folder, as in an ordinary comparison: AdamW (wd 0.1) first, then SGD, the newest.
Before runs were recorded in their checkpoints, `--ckpt_path last` with the AdamW config picked the SGD run's
last.ckpt and crashed inside Lightning's restore; a longer resume crashed with "Tried to step N times" after
creating a new version folder. (Continuing the same CSV file and W&B run is tested through a real SIGTERM in
tests/test_cli_reliability.py.)
"""
from __future__ import annotations

import errno
import shutil
import subprocess
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

import cli
from cli_resume import RUN_KEY
from tests.conftest import TINY_WRN_ARGS, make_cifar_folder

RUNS = {"adamw": [], "sgd": ["--config", "configs/optim/sgd.yaml"]}  # trained in this order: sgd is the newest


def fit_args(root: Path, data: Path, *extra: str) -> list[str]:
    """A 1-epoch tiny-WRN CIFAR run (80 images, 16 per batch: 5 steps), CSV logs only."""
    return ["fit", "--config", "configs/cifar.yaml", "--config", "configs/trainer/csv_only.yaml", *TINY_WRN_ARGS,
            "--data.data_dir", str(data), "--data.download", "false", "--data.batch_size", "16",
            "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--test_after_fit", "false", "--trainer.max_epochs", "1",
            *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run folder holding both runs, data folder); read-only for the tests (`fresh` gives a copy to write to)."""
    base = tmp_path_factory.mktemp("two_runs")
    data, root = make_cifar_folder(base / "data"), base / "runs"
    for extra in RUNS.values():
        cli.main(fit_args(root, data, *extra))
    return root, data


@pytest.fixture
def fresh(trained, tmp_path) -> tuple[Path, Path]:
    root, data = trained
    copy = tmp_path / "runs"
    shutil.copytree(root, copy)  # copy2 keeps the files' times: sgd stays the newest
    return copy, data


def last(root: Path, version: int) -> Path:
    return root / "csv" / f"version_{version}" / "checkpoints" / "last.ckpt"


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def stopped(capsys, argv: list[str]) -> str:
    """cli.py's one-sentence stop (exit status 2) for `argv`."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("cli.py: error: ") and "Traceback" not in error
    return error


@pytest.mark.parametrize("name, version", [("adamw", 0), ("sgd", 1)])
def test_last_resumes_the_run_of_this_config_and_continues_its_csv_version(fresh, name, version):
    root, data = fresh
    resumed = cli.main([*fit_args(root, data, *RUNS[name]), "--ckpt_path", "last"])  # 1 epoch done: 0 steps left
    assert resumed.trainer.ckpt_path == str(last(root, version))
    assert resumed.trainer.logger.version == version and not (root / "csv" / "version_2").exists()
    run_record = torch.load(last(root, version), weights_only=True)[RUN_KEY]
    assert resumed.run["id"] == run_record["id"]


def test_last_without_a_run_of_this_config_names_the_candidates_and_writes_nothing(fresh, capsys):
    root, data = fresh
    before = files(root)
    error = stopped(capsys, [*fit_args(root, data, "--model.init_args.optimizer.init_args.weight_decay", "0.5"),
                             "--ckpt_path", "last"])
    assert "none of the 2 last.ckpt" in error and str(last(root, 0)) in error and str(last(root, 1)) in error
    assert "weight_decay 0.1 → 0.5" in error and "--ckpt_path PATH" in error
    assert files(root) == before


def test_last_with_two_runs_of_this_config_asks_which(fresh, capsys):
    root, data = fresh
    twin = last(root, 7)  # the AdamW config trained a second time from scratch: another run id
    twin.parent.mkdir(parents=True)
    checkpoint = torch.load(last(root, 0), weights_only=True)
    checkpoint[RUN_KEY]["id"] = "another1"
    torch.save(checkpoint, twin)
    error = stopped(capsys, [*fit_args(root, data), "--ckpt_path", "last"])
    assert "2 runs under" in error and str(twin) in error and "choose one with --ckpt_path PATH" in error


@pytest.mark.parametrize("change, said", [
    (["--trainer.max_epochs", "3"], "trainer.max_epochs 1 → 3"),  # "train 10 more epochs": Tried to step N times
    (["--data.batch_size", "8"], "data.init_args.batch_size 16 → 8"),  # other steps per epoch
])
def test_a_run_length_the_1cycle_cannot_cover_stops_before_anything_is_written(fresh, capsys, change, said):
    root, data = fresh
    before = files(root)
    error = stopped(capsys, [*fit_args(root, data), *change, "--ckpt_path", str(last(root, 0))])
    assert "its 1cycle covers 5 steps" in error and said in error
    assert f"--model.init_args.init_weights {last(root, 0)}" in error
    assert files(root) == before


class AtTrainStart(pl.Callback):
    """What the optimizer and the net hold when training starts."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.weights = {name: tensor.clone() for name, tensor in pl_module.net.state_dict().items()}
        group = trainer.optimizers[0].param_groups[0]
        self.lr, self.beta1, self.step = group["lr"], group["betas"][0], trainer.global_step


def test_init_weights_starts_a_fresh_1cycle_from_the_checkpoints_net_and_names_its_parent(trained, tmp_path):
    root, data = trained
    parent = last(root, 0)
    run = cli.main([*fit_args(tmp_path / "new", data), "--trainer.max_epochs", "3",  # longer than the parent
                    "--model.init_args.init_weights", str(parent),
                    "--trainer.callbacks+=tests.test_cli_resume.AtTrainStart"])
    start = next(cb for cb in run.trainer.callbacks if isinstance(cb, AtTrainStart))
    saved = torch.load(parent, weights_only=True)
    for name, tensor in start.weights.items():
        assert torch.equal(tensor, saved["state_dict"][f"net.{name}"]), name
    assert start.step == 0 and start.lr == pytest.approx(3e-3 / 10) and start.beta1 == pytest.approx(0.95)
    assert run.trainer.global_step == 15 and run.trainer.lr_scheduler_configs[0].scheduler.total_steps == 15
    record = torch.load(last(tmp_path / "new", 0), weights_only=True)[RUN_KEY]
    assert record["parent"] == {"checkpoint": str(parent.resolve()), "run_id": saved[RUN_KEY]["id"],
                                "global_step": 5}
    assert record["id"] != saved[RUN_KEY]["id"]
    logged = yaml.safe_load((tmp_path / "new" / "csv" / "version_0" / "hparams.yaml").read_text())
    assert logged["run"]["parent"]["run_id"] == saved[RUN_KEY]["id"]  # what W&B's config shows as well
    assert logged["model"]["init_args"]["init_weights"] == str(parent)


def test_init_weights_of_another_net_is_refused(trained, tmp_path, capsys):
    root, data = trained
    error = stopped(capsys, [*fit_args(tmp_path / "new", data), "--model.init_args.net.init_args.widen_factor", "2",
                             "--model.init_args.init_weights", str(last(root, 0))])
    assert error.startswith(f"cli.py: error: model.init_args.init_weights {last(root, 0)} does not fit")


def test_an_explicit_checkpoint_of_another_config_resumes_with_a_warning_that_says_what_wins(fresh):
    root, data = fresh
    with pytest.warns(UserWarning, match=r"was trained with another config \(model\.init_args\.optimizer\.init_args"
                                         r"\.weight_decay 0\.1 → 0\.3\); resuming restores its model settings"):
        cli.main([*fit_args(root, data, "--model.init_args.optimizer.init_args.weight_decay", "0.3"),
                  "--ckpt_path", str(last(root, 0))])


class FillDisk(pl.Callback):
    """Fills the run's filesystem once the first epoch's checkpoints are written (at the second epoch's start)."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 1:
            with open(Path(trainer.default_root_dir) / "filler", "wb") as filler:
                try:
                    while True:
                        filler.write(b"\0" * (1 << 16))
                        filler.flush()
                except OSError as error:
                    assert error.errno == errno.ENOSPC


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MiB filesystem (tmpfs), mounted for the test; skipped where mounting is not allowed."""
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip()}); needs root")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_stops_the_run_in_one_sentence_and_keeps_the_previous_last_ckpt(trained, small_disk, capsys):
    _, data = trained
    root = small_disk / "run"
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*fit_args(root, data), "--trainer.max_epochs", "2",
                  "--trainer.callbacks+=tests.test_cli_resume.FillDisk"])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert error.startswith(f"cli.py: error: the disk holding {root / 'csv' / 'version_0' / 'checkpoints'} is full")
    assert "MiB are free" in error and "intact" in error and "--ckpt_path last" in error
    checkpoints = root / "csv" / "version_0" / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 5  # epoch 1's, whole
    assert not list(checkpoints.glob("*.tmp"))
