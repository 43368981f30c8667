"""ResumableDataLoader: a training DataLoader whose position in the epoch is saved in every checkpoint.

Why: a plain DataLoader resumed mid-epoch starts the interrupted epoch again from its first batch while Lightning
runs only the number of batches that were left: some samples are trained on twice, others not at all, and the
run leaves the path of the uninterrupted one.

How: the epoch's order must depend on the epoch alone — a sampler seeded with `seed + epoch` (CIFAR-10), a
dataset drawing from `seed + epoch` (WikiText-2) — so it can be replayed. The loader counts the batches it hands
out in the current epoch; its position is `{"epoch", "batches_done"}`. After a restore, the first iteration of
that same epoch replays the order and drops its first `batches_done` batches (tensor slices here, so this costs
little), and training continues with the batch the uninterrupted run trained next. A position from an earlier
epoch (an epoch-end checkpoint) is ignored: the next epoch starts at its first batch.

Handed out = trained: Lightning's `_PrefetchDataFetcher` fetches a batch ahead only for a loader without a
length, so this loader insists on one. Then no batch is fetched before the previous one is trained, and at every
save point — ModelCheckpoint in `on_train_batch_end` or at an epoch end, PreemptionCheckpoint in `on_exception`
(Lightning raises the SIGTERM after the batch's hooks) — the count is the number of batches trained in the epoch.
tests/test_mid_epoch_resume.py checks it at both save points.

Where the position travels: Lightning 2.6 saves a DataLoader's `state_dict()` itself (under the fit loop's
`combined_loader`), but gives it back only through `FitLoop.setup_data`, which finds the loader already built
and returns early when `configure_optimizers` has read `trainer.estimated_stepping_batches` — which our 1cycle
schedules do — so the saved state is dropped (Lightning issue #20550, open). The datamodules therefore also carry
the position in their own `state_dict` (`TrainLoaderPosition`): Lightning restores a datamodule before it builds
the loaders (after, with `restore_checkpoint_after_setup` strategies; both handled). Loading the same position
twice, should a later Lightning fix that path, changes nothing.

Random streams: a resumed run makes an iterator the uninterrupted run never made, so making one must not draw from
the global generator (which RNGStateCheckpoint has put back at the saved point). The loader has its own generator
for its workers' base seed, and everything — the epoch, the skip, the indices workers prefetch — happens at the
first batch, after Lightning's `set_epoch` (Lightning makes the iterator before it sets the epoch).

DDP: every rank takes the same steps, so all hold the same position; rank 0's is written and each rank replays
its own shard of the same epoch (the sampler knows the rank; see `datamodules/cifar10.py`).
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch.utils.data import DataLoader


class ResumableDataLoader(DataLoader):
    """A DataLoader whose epoch and batches done in it are part of the checkpoint (see the module docstring).

    The epoch's order must be a function of the epoch: the sampler's `epoch` (which Lightning sets with
    `set_epoch` before each epoch) or the dataset's `epoch`, if either has one, names it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Its own generator for its workers' base seed, drawn when an iterator is made ("Random streams" above;
        # only workers use it, and ours draw nothing random).
        kwargs.setdefault("generator", torch.Generator().manual_seed(torch.initial_seed()))
        super().__init__(*args, **kwargs)
        try:
            len(self)
        except TypeError as error:  # without a length Lightning prefetches, and the count would run one ahead
            raise TypeError("ResumableDataLoader needs a dataset or sampler with a length.") from error
        self.epoch = 0
        self.batches_done = 0
        self._resume_at: dict[str, int] | None = None

    def epoch_of_order(self) -> int:
        """The epoch whose order the next iteration yields."""
        for source in (self.sampler, self.dataset):
            epoch = getattr(source, "epoch", None)
            if isinstance(epoch, int):
                return epoch
        return 0

    def __iter__(self) -> Iterator[Any]:
        # A generator: all of it runs at the first batch (see "Random streams" above). A resumed run even keeps the
        # iterator Lightning made before the restore, for `estimated_stepping_batches`.
        self.epoch, self.batches_done = self.epoch_of_order(), 0
        batches = super().__iter__()
        resume_at, self._resume_at = self._resume_at, None
        if resume_at is not None and resume_at["epoch"] == self.epoch:
            self.batches_done = sum(1 for _ in itertools.islice(batches, resume_at["batches_done"]))
        for batch in batches:
            self.batches_done += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        if self._resume_at is not None:  # restored but not iterated yet: still that position
            return dict(self._resume_at)
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Resume at this position: the next iteration of `epoch` skips its first `batches_done` batches."""
        self._resume_at = {"epoch": int(state_dict["epoch"]), "batches_done": int(state_dict["batches_done"])}


def live_train_loader(trainer: pl.Trainer | None) -> ResumableDataLoader | None:
    """The training loader the trainer iterates (after any re-instantiation by Lightning), if it is resumable."""
    loader = trainer.train_dataloader if trainer is not None else None
    return loader if isinstance(loader, ResumableDataLoader) else None


POSITION_KEY = "train_position"  # where a datamodule's state_dict keeps the position


class TrainLoaderPosition:
    """The training loader's position, for a datamodule's `state_dict` (see "Where the position travels" above)."""

    def __init__(self) -> None:
        self._pending: dict[str, int] | None = None

    def state_dict(self, trainer: pl.Trainer | None) -> dict[str, int] | None:
        loader = live_train_loader(trainer)
        return loader.state_dict() if loader is not None else self._pending

    def load_state_dict(self, position: dict[str, int] | None, trainer: pl.Trainer | None) -> None:
        """Give `position` to the live loader, or keep it for the next one `hand_to` sees."""
        if trainer is not None and trainer.state.fn != TrainerFn.FITTING:
            return  # validate/test from a checkpoint: no training to resume (and none later should skip batches)
        loader = live_train_loader(trainer)
        if loader is not None and position is not None:
            loader.load_state_dict(position)
        else:
            self._pending = position

    def hand_to(self, loader: ResumableDataLoader) -> ResumableDataLoader:
        """A new training loader: give it the restored position, if one is waiting."""
        if self._pending is not None:
            loader.load_state_dict(self._pending)
            self._pending = None
        return loader
