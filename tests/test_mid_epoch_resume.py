"""A run stopped mid-epoch by SIGTERM (PreemptionCheckpoint writes last.ckpt) and resumed from it by a fresh Trainer
trains exactly the batches the uninterrupted run trains, in the same order, and ends bit-identical on CPU — because
the training loaders save their position (datamodules/resumable_loader.py). With the plain DataLoaders used before,
the interrupted epoch starts over and the run ends elsewhere (the `old loaders` cases), so the test can fail. CIFAR
with 2 DataLoader workers ends bit-identical to the reference without workers.

Seeding, models and Trainer settings are test_rng_state.py's (RNGStateCheckpoint puts the generators back).
WikiText-2: `LanguageModel` saves the LSTM state it carries from batch to batch, so the resumed half of the epoch
continues the text with the same state.
"""
from __future__ import annotations

import os
import signal
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, IterableDataset

import schedulefree
from datamodules.resumable_loader import ResumableDataLoader, live_train_loader
from lightning_modules.callbacks import PreemptionCheckpoint, RNGStateCheckpoint
from lightning_modules.callbacks.preemption import EXIT_STATUS
from lightning_modules.schedule_free import TRAIN_POINT_KEY
from optim import MuonWithAuxAdamW, WarmupStableDecayLR
from tests.lightning_modules.callbacks.test_rng_state import (  # noqa: F401 (data_roots: a fixture)
    EPOCHS, build, data_roots, differences)

NOT_RESUMABLE = "your dataloader is not resumable"  # Lightning's warning on a mid-epoch resume with a plain loader


def old_loader(new: ResumableDataLoader) -> DataLoader:
    """The training loader before mid-epoch resume: a plain DataLoader (CIFAR shuffled from the global generator)."""
    if isinstance(new.dataset, IterableDataset):
        return DataLoader(new.dataset, batch_size=None)
    return DataLoader(new.dataset, batch_size=new.batch_size, shuffle=True, collate_fn=new.collate_fn)


class SigtermAt(Callback):
    """SIGTERM to this very process at the end of optimizer step `step` (as a scheduler would send it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class TrainedBatches(Callback):
    """Per trained batch: (epoch, batch_idx, targets, the loader's position as a checkpoint written now saves it)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, torch.Tensor, dict | None]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        loader = live_train_loader(trainer)
        self.seen.append((trainer.current_epoch, batch_idx, batch[1].clone(), loader and loader.state_dict()))


@dataclass
class Run:
    trainer: pl.Trainer
    batches: TrainedBatches
    warnings: list[str]


CONTENDERS = {  # optimizer and schedule of the contenders (configs/optim/*.yaml), built as cli.py builds them
    "schedule-free": (partial(schedulefree.AdamWScheduleFree, lr=3e-3, weight_decay=0.1),
                      partial(WarmupStableDecayLR, decay_fraction=0.0)),
    "muon": (partial(MuonWithAuxAdamW, lr=0.02, adamw_lr=3e-3, adamw_weight_decay=0.1), partial(WarmupStableDecayLR)),
}


def fit(task: str, root: Path, out: Path, *, old_loaders: bool = False, workers: int = 0,
        sigterm_at: int | None = None, resume_from: Path | None = None, contender: str | None = None) -> Run:
    """One `fit`, seeded like cli.py, with the configs' guards; a SIGTERM stop is caught (exit status 143)."""
    pl.seed_everything(0, verbose=False)
    model, data = build(task, root)
    if contender:
        model.optimizer_factory, model.scheduler_factory = CONTENDERS[contender]
    if workers:
        data.num_workers = workers  # CIFAR's DataLoader workers (persistent, as the datamodule makes them)
    if old_loaders:
        data.train_dataloader = lambda new=data.train_dataloader: old_loader(new())
    batches = TrainedBatches()
    callbacks = [ModelCheckpoint(dirpath=out, filename="last", enable_version_counter=False), RNGStateCheckpoint(),
                 PreemptionCheckpoint(), batches, *([SigtermAt(sigterm_at)] if sigterm_at else [])]
    trainer = pl.Trainer(max_epochs=EPOCHS[task], accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer.fit(model, data, ckpt_path=str(resume_from) if resume_from else None)
        except SystemExit as stop:
            assert sigterm_at is not None and stop.code == EXIT_STATUS
    return Run(trainer, batches, [str(w.message) for w in caught])


@pytest.fixture(scope="module")
def uninterrupted(data_roots: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    out = tmp_path_factory.mktemp("uninterrupted")
    runs = {"cifar": fit("cifar", data_roots["cifar"], out / "cifar"),
            "wikitext": fit("wikitext", data_roots["wikitext"], out / "wikitext")}
    for contender in CONTENDERS:
        runs[f"cifar+{contender}"] = fit("cifar", data_roots["cifar"], out / f"cifar+{contender}", contender=contender)
    runs["wikitext+schedule-free"] = fit("wikitext", data_roots["wikitext"], out / "wikitext+schedule-free",
                                         contender="schedule-free")
    return runs


def test_the_saved_position_is_the_batches_trained_at_every_batch_end(uninterrupted):
    """What a ModelCheckpoint(every_n_train_steps) saves at `on_train_batch_end`: no batch fetched ahead."""
    for run in uninterrupted.values():
        positions = [(position["epoch"], position["batches_done"]) for _, _, _, position in run.batches.seen]
        assert positions == [(epoch, batch_idx + 1) for epoch, batch_idx, _, _ in run.batches.seen]


CASES = [
    pytest.param("cifar", {}, id="cifar"),
    pytest.param("cifar", {"workers": 2}, id="cifar, 2 workers"),  # against the reference without workers
    pytest.param("wikitext", {}, id="wikitext"),
    pytest.param("cifar", {"old_loaders": True}, id="cifar, old loaders"),
    pytest.param("wikitext", {"old_loaders": True}, id="wikitext, old loaders"),
    # Schedule-free: the checkpoint holds the averaged point x; the resumed run continues from the training point y
    # it carries (lightning_modules/schedule_free.py), exactly. Muon: its split groups and momentum buffers.
    pytest.param("cifar", {"contender": "schedule-free"}, id="cifar, schedule-free AdamW"),
    pytest.param("cifar", {"contender": "muon"}, id="cifar, Muon"),
    pytest.param("wikitext", {"contender": "schedule-free"}, id="wikitext, schedule-free AdamW"),
]


@pytest.mark.parametrize(("task", "options"), CASES)
def test_sigterm_mid_epoch_then_resume_trains_the_same_batches_and_weights(task, options, data_roots, uninterrupted,
                                                                           tmp_path):
    old_loaders = options.get("old_loaders", False)
    reference = uninterrupted[task + (f"+{options['contender']}" if options.get("contender") else "")]
    steps_per_epoch = reference.trainer.global_step // EPOCHS[task]
    stop = steps_per_epoch + steps_per_epoch // 2  # the middle of epoch 1
    stopped = fit(task, data_roots[task], tmp_path / "first", sigterm_at=stop, **options)
    saved = torch.load(tmp_path / "first" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == stop and saved["epoch"] == 1
    if not old_loaders:  # the position: every batch handed out was trained, none fetched ahead
        position = {"epoch": 1, "batches_done": stop - steps_per_epoch}
        assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [position]
        assert saved[type(stopped.trainer.datamodule).__qualname__]["train_position"] == position

    if options.get("contender") == "schedule-free":  # the file holds x, and y beside it for resuming
        x, y = saved["state_dict"], saved[TRAIN_POINT_KEY]
        assert any(not torch.equal(x[f"net.{name}"], value) for name, value in y.items())
    resumed = fit(task, data_roots[task], tmp_path / "resumed", resume_from=tmp_path / "first" / "last.ckpt",
                  **options)
    assert resumed.trainer.global_step == reference.trainer.global_step
    first_epoch, first_batch_idx, _, _ = resumed.batches.seen[0]
    assert (first_epoch, first_batch_idx) == (1, stop - steps_per_epoch)  # Lightning's progress: the rest of epoch 1
    assert any(NOT_RESUMABLE in message for message in resumed.warnings) is old_loaders

    trained = [targets for _, _, targets, _ in stopped.batches.seen + resumed.batches.seen]
    expected = [targets for _, _, targets, _ in reference.batches.seen]
    same_batches = len(trained) == len(expected) and all(map(torch.equal, trained, expected))
    diff = differences(resumed.trainer, reference.trainer)
    if old_loaders:
        assert not same_batches and diff, "the plain loaders restart the interrupted epoch: other batches"
    else:
        assert same_batches
        assert diff == []
