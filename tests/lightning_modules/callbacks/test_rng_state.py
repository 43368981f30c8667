"""RNGStateCheckpoint: a run stopped at an epoch end and resumed from its last.ckpt by a fresh Trainer ends with
bit-identical weights and optimizer state on CPU — and without the callback it does not (so the callback matters).

Both tasks draw from the global torch generator: CIFAR through the crop/flip augmentation (its order is seeded with
seed + epoch), the language model through dropout. The sanity check runs before each fit, as in the configs. Under
DDP (slow test) each rank must get back its own states. Mid-epoch resumes: tests/test_mid_epoch_resume.py.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from datamodules import CIFAR10DataModule, WikiText2DataModule
from lightning_modules import ImageClassifier, LanguageModel
from lightning_modules.callbacks import RNGStateCheckpoint
from lightning_modules.nets import AWDLSTM, WideResNet
from lightning_modules.callbacks.rng_state import collect_rng_states, set_rng_states
from optim import RNNOneCycleLR
from tests.conftest import make_cifar_folder
from tests.datamodules.test_wikitext2 import write_corpus

EPOCHS = {"cifar": 3, "wikitext": 2}  # CIFAR: 10 steps per epoch (80 images, batch 8); WikiText: ~70 per epoch


class StopAtEpochEnd(Callback):
    """Ends fitting after epoch `epoch` (its last.ckpt still written), keeping max_epochs and so the 1cycle's length."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def build(task: str, data_root: Path) -> tuple[pl.LightningModule, pl.LightningDataModule]:
    if task == "cifar":
        net = WideResNet(num_classes=10, num_groups=3, blocks_per_group=1, widen_factor=1)
        return ImageClassifier(net, tta=0), CIFAR10DataModule(str(data_root), batch_size=8)
    data = WikiText2DataModule(str(data_root), batch_size=4, bptt=12, eval_batch_size=1, eval_bptt=40)
    net = AWDLSTM(data.vocab_size, embedding_size=16, hidden_size=24, num_layers=2)  # the seed's dropouts
    return LanguageModel(net, optimizer=partial(torch.optim.Adam, lr=5e-3, betas=(0.8, 0.99)),
                         lr_scheduler=partial(RNNOneCycleLR), bptt=12), data


@dataclass
class Run:
    model: pl.LightningModule
    trainer: pl.Trainer
    checkpoint: Path


def fit(task: str, data_root: Path, out: Path, restore_rng: bool, stop_after: int | None = None,
        resume_from: Path | None = None) -> Run:
    """One `fit`, seeded like `cli.py` (seed_everything: 0) in every process, with the configs' last.ckpt."""
    pl.seed_everything(0, verbose=False)
    model, data = build(task, data_root)
    last = ModelCheckpoint(dirpath=out, filename="last", enable_version_counter=False)
    callbacks: list[Callback] = [last, *([RNGStateCheckpoint()] if restore_rng else [])]
    if stop_after is not None:
        callbacks.append(StopAtEpochEnd(stop_after))
    trainer = pl.Trainer(max_epochs=EPOCHS[task], accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks)
    trainer.fit(model, data, ckpt_path=str(resume_from) if resume_from else None)
    return Run(model, trainer, out / "last.ckpt")


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rng_data")
    return {"cifar": make_cifar_folder(root / "cifar"), "wikitext": write_corpus(root / "wikitext")}


@pytest.fixture(scope="module")
def uninterrupted(data_roots: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """The reference runs, made once per task (the callback only reads the generators when nothing is resumed)."""
    out = tmp_path_factory.mktemp("uninterrupted")
    return {task: fit(task, root, out / task, restore_rng=True) for task, root in data_roots.items()}


def assert_same_tensors(a: dict, b: dict, what: str) -> list[str]:
    assert a.keys() == b.keys(), what
    def same(x, y) -> bool:  # a plain number too: Muon's reference keeps its AdamW step count as an int
        return torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y

    return [f"{what}.{key}" for key in a if not same(a[key], b[key])]


def differences(resumed: pl.Trainer, reference: pl.Trainer) -> list[str]:
    """Names of every weight, buffer and optimizer-state tensor that is not bit-identical."""
    diff = assert_same_tensors(resumed.lightning_module.state_dict(), reference.lightning_module.state_dict(),
                               "state_dict")
    mine, theirs = resumed.optimizers[0].state_dict(), reference.optimizers[0].state_dict()
    assert mine["param_groups"] == theirs["param_groups"]  # lr, betas, weight decay: same schedule position
    for index in theirs["state"]:
        diff += assert_same_tensors(mine["state"][index], theirs["state"][index], f"optimizer.state[{index}]")
    return diff


@pytest.mark.parametrize("task", ["cifar", "wikitext"])
@pytest.mark.parametrize("restore_rng", [True, False], ids=["with RNGStateCheckpoint", "without"])
def test_resume_at_an_epoch_end_is_bit_identical_only_with_rng_states(task, restore_rng, data_roots, uninterrupted,
                                                                      tmp_path):
    reference = uninterrupted[task]
    stopped = fit(task, data_roots[task], tmp_path / "first", restore_rng, stop_after=0)
    steps_per_epoch = reference.trainer.global_step // EPOCHS[task]
    assert stopped.trainer.global_step == steps_per_epoch and stopped.trainer.current_epoch == 1
    saved = torch.load(stopped.checkpoint, map_location="cpu", weights_only=True)
    assert saved["global_step"] == steps_per_epoch
    assert ("RNGStateCheckpoint" in saved["callbacks"]) is restore_rng

    resumed = fit(task, data_roots[task], tmp_path / "resumed", restore_rng, resume_from=stopped.checkpoint)
    assert resumed.trainer.global_step == reference.trainer.global_step
    diff = differences(resumed.trainer, reference.trainer)
    if restore_rng:
        assert diff == []
    else:
        assert diff, "without the RNG states the resumed run should have drawn other batches/dropout masks"


def test_states_round_trip_through_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save(collect_rng_states(torch.device("cpu")), tmp_path / "states.pt")
    expected = (random.random(), float(np.random.rand()), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_states(torch.load(tmp_path / "states.pt", weights_only=True), torch.device("cpu"))
    python_draw, numpy_draw, torch_draw = random.random(), float(np.random.rand()), torch.rand(3)
    assert (python_draw, numpy_draw) == expected[:2] and torch.equal(torch_draw, expected[2])


def test_another_world_size_warns_and_takes_rank_r_mod_n():
    saved = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        saved.append(collect_rng_states())
    expected = torch.rand(3, generator=torch.Generator().set_state(saved[0]["torch"]))
    with pytest.warns(UserWarning, match=r"random states of 2 process\(es\) but this run has 1; rank r takes"):
        RNGStateCheckpoint().load_state_dict({"ranks": saved})  # no trainer: a single process, rank 0
    assert torch.equal(torch.rand(3), expected)


class SeedPerRank(Callback):
    """Gives each DDP rank its own torch stream (as rank-dependent seeding would), so a rank that restored
    another rank's states would train differently."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        torch.manual_seed(1000 + trainer.global_rank)


class SaveWeightsPerRank(Callback):
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.save({k: v.detach().cpu() for k, v in pl_module.state_dict().items()},
                   self.folder / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_under_ddp_each_rank_restores_its_own_states(data_roots, tmp_path):
    """2 CPU processes (gloo, ddp_fork), the language model's dropout drawn from rank-specific streams: resumed from
    the uninterrupted run's own epoch-0 checkpoint (what a run stopped there saves), both ranks end bit-identical to
    the uninterrupted run."""
    def ddp_fit(out: Path, resume_from: Path | None = None) -> Path:
        out.mkdir(parents=True)
        pl.seed_everything(0, verbose=False)  # the same initial weights, sent to both ranks
        model, data = build("wikitext", data_roots["wikitext"])
        callbacks = [ModelCheckpoint(dirpath=out, filename="{epoch}", save_top_k=-1), SeedPerRank(),
                     RNGStateCheckpoint(), SaveWeightsPerRank(out)]
        # ddp_fork: the two ranks are forked from this process, so they inherit its imports instead of
        # importing torch and Lightning again (~7 s a process on one core); gloo and the ranks are as under DDP.
        trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp_fork", logger=False,
                             enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
        trainer.fit(model, data, ckpt_path=str(resume_from) if resume_from else None)
        return out

    reference = ddp_fit(tmp_path / "uninterrupted")
    saved = torch.load(reference / "epoch=0.ckpt", weights_only=True)["callbacks"]["RNGStateCheckpoint"]["ranks"]
    assert len(saved) == 2 and not torch.equal(saved[0]["torch"], saved[1]["torch"])  # one state per rank
    resumed = ddp_fit(tmp_path / "resumed", resume_from=reference / "epoch=0.ckpt")
    for rank in (0, 1):
        expected, got = torch.load(reference / f"rank{rank}.pt"), torch.load(resumed / f"rank{rank}.pt")
        assert [k for k in expected if not torch.equal(expected[k], got[k])] == [], f"rank {rank}"
