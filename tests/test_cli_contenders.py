"""The 2026 contenders through the CLI, as users run them: configs/optim/{schedule_free_adamw,muon,nadamw}.yaml and
configs/schedule/{one_cycle,cosine,wsd}.yaml composed with a task config."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

import cli
from lightning_modules.schedule_free import TRAIN_POINT_KEY
from optim import MuonWithAuxAdamW, OneCycleLR, WarmupCosineLR, WarmupStableDecayLR
from scripts.export import export
from tests.conftest import TINY_WRN_ARGS
from tests.wandb_records import config_values

OPTIMIZERS = {"adamw": ("AdamW", "adamw"), "nadamw": ("NAdam", "nadamw"), "muon": ("MuonWithAuxAdamW", "muon")}
SCHEDULES = {"one_cycle": (OneCycleLR, "one-cycle"), "cosine": (WarmupCosineLR, "cosine"),
             "wsd": (WarmupStableDecayLR, "wsd")}


def cifar_args(cifar_dir: Path, root: Path, *args: str) -> list[str]:
    return ["--config", "configs/cifar.yaml", *TINY_WRN_ARGS, "--data.data_dir", str(cifar_dir), "--data.batch_size",
            "8", "--model.init_args.tta", "0", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(root), *args]


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_each_schedule_config_composes_with_each_optimizer_config(optimizer, schedule, tmp_path, monkeypatch):
    run = cli.main(["--config", "configs/cifar.yaml", *TINY_WRN_ARGS, "--config", f"configs/optim/{optimizer}.yaml",
                    "--config", f"configs/schedule/{schedule}.yaml", "--trainer.default_root_dir", str(tmp_path)],
                   run=False)
    class_name, tag = OPTIMIZERS[optimizer]
    scheduler_class, schedule_tag = SCHEDULES[schedule]
    assert {tag, schedule_tag} <= set(run.trainer.loggers[1]._wandb_init["tags"])
    run.trainer.loggers = []  # Muon logs its split: no W&B run may be started here and left open for later tests
    monkeypatch.setattr(type(run.trainer), "estimated_stepping_batches", property(lambda self: 40))
    run.model.trainer = run.trainer
    configured = run.model.configure_optimizers()
    optimizer_built, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert type(optimizer_built).__name__ == class_name and type(scheduler) is scheduler_class
    lrs = []
    for _ in range(40):  # the whole schedule runs on this optimizer: warm-up below the peak, the end decayed
        lrs.append(optimizer_built.param_groups[0]["lr"])
        optimizer_built.step()
        scheduler.step()
    peak = max(lrs)
    assert lrs[0] < peak and lrs[-1] < peak / 5


def test_schedule_free_replaces_the_schedule_and_refuses_a_decaying_one(tmp_path, capsys):
    run = cli.main(["--config", "configs/cifar.yaml", "--config", "configs/optim/schedule_free_adamw.yaml",
                    "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert "constant" in run.trainer.loggers[1]._wandb_init["tags"]
    assert "schedule-free-adamw" in run.trainer.loggers[1]._wandb_init["tags"]
    with pytest.raises(SystemExit) as stopped:
        cli.main(["fit", "--config", "configs/cifar.yaml", "--config", "configs/optim/schedule_free_adamw.yaml",
                  "--config", "configs/schedule/cosine.yaml", "--trainer.default_root_dir", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and "Traceback" not in err and not (tmp_path / "x").exists()
    assert err == ("cli.py: error: model.init_args.lr_scheduler is WarmupCosineLR, which decays the lr, but "
                   "AdamWScheduleFree is schedule-free (it averages its iterates instead): compose "
                   "configs/optim/schedule_free_adamw.yaml after the schedule config, or drop the schedule config.")


def test_muon_with_fine_tuning_stages_is_refused_in_one_sentence(cars_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["fit", "--config", "configs/cars.yaml", "--config", "configs/optim/muon.yaml", "--data.data_dir",
                  str(cars_root), "--model.init_args.net.init_args.weights", "null", "--trainer.default_root_dir",
                  str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and "Traceback" not in err
    assert "MuonWithAuxAdamW does not combine with model.stages" in err and err.count("\n") == 0


def last_checkpoint(root: Path) -> Path:
    return max(root.glob("**/last.ckpt"), key=lambda path: path.stat().st_mtime)


def test_schedule_free_fit_then_test_equals_cli_test_of_its_last_checkpoint(cifar_dir, tmp_path):
    """`fit` ends at the averaged point x with x's BatchNorm statistics, which is what last.ckpt holds (and what
    export writes); the training point y travels beside it, for resuming."""
    fit = cli.main(["fit", *cifar_args(cifar_dir, tmp_path, "--config", "configs/optim/schedule_free_adamw.yaml",
                                       "--trainer.max_epochs", "2", "--trainer.logger", "false")])
    fitted = {k: float(v) for k, v in fit.trainer.callback_metrics.items() if k.startswith("test/")}
    checkpoint_path = last_checkpoint(tmp_path)
    saved = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    train_point = saved[TRAIN_POINT_KEY]
    x = {k.removeprefix("net."): v for k, v in saved["state_dict"].items() if k.startswith("net.")}
    assert set(train_point) == set(x)
    assert not torch.equal(x["features.0.weight"], train_point["features.0.weight"])  # x is not y
    live = fit.model.net.state_dict()
    assert all(torch.equal(live[k], x[k]) for k in x)  # the fitted model is at x, BatchNorm statistics included

    export(checkpoint_path, tmp_path / "export")  # what export writes is x too
    exported = torch.load(tmp_path / "export" / "weights.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(exported[k], x[k]) for k in x)

    tested = cli.main(["test", *cifar_args(cifar_dir, tmp_path, "--config", "configs/optim/schedule_free_adamw.yaml",
                                           "--trainer.max_epochs", "2", "--trainer.logger", "false",
                                           "--ckpt_path", "last")])
    assert tested.trainer.ckpt_path == str(checkpoint_path)
    assert {k: float(v) for k, v in tested.trainer.callback_metrics.items() if k.startswith("test/")} == fitted


def test_muon_says_once_what_each_side_takes_logs_it_to_wandb_and_runs_lr_find(cifar_dir, tmp_path, capfd, caplog):
    fit = cli.main(["fit", *cifar_args(cifar_dir, tmp_path, "--config", "configs/optim/muon.yaml", "--config",
                                       "configs/schedule/wsd.yaml", "--trainer.max_epochs", "2")])
    assert isinstance(fit.trainer.optimizers[0], MuonWithAuxAdamW)
    out = capfd.readouterr()
    lines = [line for line in (out.out + out.err + caplog.text).splitlines() if "Muon split:" in line]
    lines = [line[line.index("Muon split:"):] for line in lines]
    assert len(lines) == 1 and "features.*.conv1.weight" in lines[0] and "head.*.weight" in lines[0]
    run_file = next(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert config_values(run_file)["optimizer_split"] == lines[0].split("Muon split: ", 1)[1]
    found = cli.main(["lr_find", *cifar_args(cifar_dir, tmp_path / "lr", "--config", "configs/optim/muon.yaml",
                                             "--trainer.logger", "false", "--num_training", "12")])
    assert found.trainer.callback_metrics is not None and list((tmp_path / "lr").glob("**/lr_find/*.png"))


class SaveWeightsPerRank(Callback):
    def __init__(self, folder: Path):
        self.folder = folder

    def on_train_end(self, trainer, pl_module):
        torch.save({k: v.detach().clone() for k, v in pl_module.net.state_dict().items()  # BatchNorm statistics
                    if "running" not in k and "num_batches" not in k},  # are each rank's own: no SyncBatchNorm
                   self.folder / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_muon_under_ddp_keeps_both_ranks_on_the_same_weights(cifar_dir, tmp_path):
    from functools import partial

    from datamodules import CIFAR10DataModule
    from lightning_modules import ImageClassifier
    from lightning_modules.nets import WideResNet

    pl.seed_everything(0, verbose=False)
    net = WideResNet(num_classes=10, num_groups=3, blocks_per_group=1, widen_factor=1)
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    model = ImageClassifier(net, optimizer=partial(MuonWithAuxAdamW, lr=0.02, adamw_lr=3e-3),
                            lr_scheduler=partial(WarmupStableDecayLR), tta=0)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp_fork", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=[SaveWeightsPerRank(tmp_path)])
    trainer.fit(model, CIFAR10DataModule(str(cifar_dir), batch_size=8))
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    conv, classifier = "features.1.conv1.weight", "head.4.weight"  # a Muon weight and an AdamW weight
    assert not torch.equal(rank0[conv], initial[conv]) and not torch.equal(rank0[classifier], initial[classifier])
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"ranks differ in {name}"


def test_schedule_free_through_fine_tuning_stages_keeps_frozen_statistics_and_ends_at_x(cars_root, tmp_path):
    """Each stage builds a fresh schedule-free optimizer; the frozen body's BatchNorm keeps its statistics (only the
    layers that train are recomputed at x), and the run ends at x, as its last checkpoint holds."""
    import schedulefree
    from pytorch_lightning.callbacks import ModelCheckpoint

    from optim import FinetuneStage
    from tests.lightning_modules.test_finetuning import cars_data, cars_model

    model = cars_model([FinetuneStage(epochs=1, lr=1e-2, frozen_groups=2), FinetuneStage(epochs=1, lr=3e-3)])
    model.optimizer_factory = partial(schedulefree.AdamWScheduleFree, lr=1.0)
    model.scheduler_factory = partial(WarmupStableDecayLR, decay_fraction=0.0)
    seen = []

    class FrozenStatistics(Callback):
        def on_validation_end(self, trainer, pl_module):
            seen.append(pl_module.net.body[1].running_mean.clone())  # the stem's BatchNorm: frozen in stage 1

    initial = model.net.body[1].running_mean.clone()
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[ModelCheckpoint(dirpath=tmp_path, filename="last"), FrozenStatistics()])
    trainer.fit(model, cars_data(cars_root))
    assert torch.equal(seen[0], initial) and torch.equal(seen[1], initial)  # sanity check, stage 1: untouched
    assert not torch.equal(seen[-1], initial)  # stage 2 trains the body: recomputed at x
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    live = model.state_dict()
    assert TRAIN_POINT_KEY in saved and all(torch.equal(live[k], v) for k, v in saved["state_dict"].items())


def test_schedule_free_lr_find_sweeps_in_training_mode_and_leaves_the_model_as_it_was(cifar_dir, tmp_path):
    """lr_find swaps the callbacks and the scheduler out but keeps the module's hooks: the optimizer is put in
    training mode before its first step (the package refuses a step otherwise)."""
    found = cli.main(["lr_find", *cifar_args(cifar_dir, tmp_path, "--config", "configs/optim/schedule_free_adamw.yaml",
                                             "--trainer.logger", "false", "--num_training", "12")])
    assert len(found.lr_find_result["losses"]) == 12 and list(tmp_path.glob("**/lr_find/lr_find.png"))


@pytest.mark.slow
def test_schedule_free_under_ddp_ends_both_ranks_at_the_same_averaged_point(cifar_dir, tmp_path):
    """Each rank switches its own optimizer between y and x at the same hooks; the gradients are all-reduced, so
    both end at the same x (BatchNorm statistics are recomputed on the same fixed batches: equal too)."""
    import schedulefree

    from datamodules import CIFAR10DataModule
    from lightning_modules import ImageClassifier
    from lightning_modules.nets import WideResNet

    pl.seed_everything(0, verbose=False)
    net = WideResNet(num_classes=10, num_groups=3, blocks_per_group=1, widen_factor=1)
    model = ImageClassifier(net, optimizer=partial(schedulefree.AdamWScheduleFree, lr=3e-3),
                            lr_scheduler=partial(WarmupStableDecayLR, decay_fraction=0.0), tta=0)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp_fork", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[SaveAllWeightsPerRank(tmp_path)])
    trainer.fit(model, CIFAR10DataModule(str(cifar_dir), batch_size=8))
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"ranks differ in {name}"


class SaveAllWeightsPerRank(Callback):
    """Each rank's whole net, BatchNorm statistics included, once `fit` has left it at x."""

    def __init__(self, folder: Path):
        self.folder = folder

    def on_fit_end(self, trainer, pl_module):
        torch.save({k: v.detach().clone() for k, v in pl_module.net.state_dict().items()},
                   self.folder / f"rank{trainer.global_rank}.pt")
