"""RNGStateCheckpoint: keep the random generators' states in every checkpoint, so a resumed run draws what the
uninterrupted run would have drawn.

Why: Lightning 2.6 does not save RNG states in a checkpoint (its `dump_checkpoint` writes weights, optimizers,
schedulers, loops and callback states only; Fabric's `_collect_rng_states` is not called on that path). Our runs
draw from the global generators at every step: Stanford Cars' `RandomSampler` takes a fresh seed from the torch
generator at each epoch (and its DataLoader iterators draw a base seed), the CIFAR
crop/flip (`datamodules/batch_augment.py`) and the language models' dropout use the torch (CUDA on a GPU)
generator, and Stanford Cars' DataLoader workers are seeded from that base seed. A resumed run starts from the
seed that `seed_everything` gave the new process, so from its first batch on it shuffles, crops and drops out
differently: same schedule, different weights. With this callback, a run resumed from an epoch-end checkpoint
gives bit-identical weights on CPU (tests/lightning_modules/callbacks/test_rng_state.py).

When the states are taken and put back:
- `state_dict()` runs while the checkpoint is built. At an epoch end that is ModelCheckpoint's
  `on_train_epoch_end` (Lightning runs checkpoint callbacks last), and nothing draws between it and the next
  epoch's DataLoader iterator.
- `load_state_dict()` runs when `fit(ckpt_path=...)` restores the callbacks; the states are put back right there.
  Nothing draws between that point and the resumed epoch's DataLoader iterator, which Lightning creates (and whose
  first batch it prefetches) in `FitLoop.setup_data`, before `on_train_start` — too late a hook for this; the
  sanity check in between runs under `isolate_rng()`.

Python `random`, NumPy's global generator, torch's CPU generator and the CUDA generator of the device this process
trains on are covered. Everything is stored as plain types (tensors, ints, floats, tuples, lists), so checkpoints
still load with `torch.load(..., weights_only=True)` (NumPy's own state holds an ndarray, which would not).

DDP: each rank has its own generators but only rank 0 writes the checkpoint, so `state_dict()` all-gathers every
rank's states (`torch.distributed.all_gather_object`; `state_dict()` runs on every rank while a checkpoint is
built, next to the collectives Lightning and NaNGuard already do there) and each rank restores its own. Resumed
on another number of processes, rank r restores saved rank r mod N's states, with a warning: the data shards
differ then anyway, so the run continues correctly but not bit-identically.
A mid-epoch resume (SIGTERM, a step-based checkpoint) restores the states too, and the CIFAR-10 and WikiText-2
training loaders restore their position (`datamodules/resumable_loader.py`), so that resume is bit-identical as well.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn


def collect_rng_states(device: torch.device | None = None) -> dict[str, Any]:
    """This process's generator states as plain types (loadable with `weights_only=True`)."""
    version, internal, gauss = random.getstate()
    _, key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    states: dict[str, Any] = {
        "python": (int(version), tuple(int(v) for v in internal), gauss),
        "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict[str, Any], device: torch.device | None = None) -> None:
    """Put back what `collect_rng_states` took; a CUDA state is restored only when training on a CUDA device."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = states["numpy"]
    np.random.set_state(("MT19937", numpy_state["key"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)


class RNGStateCheckpoint(pl.Callback):
    """Saves every rank's RNG states in each checkpoint and restores them when training resumes from it."""

    def __init__(self) -> None:
        self._trainer: pl.Trainer | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer  # the state hooks get no trainer; they need its device, rank and process group

    def _device(self) -> torch.device | None:
        return self._trainer.strategy.root_device if self._trainer is not None else None

    def state_dict(self) -> dict[str, Any]:
        local = collect_rng_states(self._device())
        world_size = self._trainer.world_size if self._trainer is not None else 1
        if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks: list[Any] = [None] * world_size
            torch.distributed.all_gather_object(ranks, local)
        else:
            ranks = [local]
        return {"ranks": ranks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Put this rank's saved states back now: see the module docstring for why here and not in a later hook."""
        ranks = state_dict["ranks"]
        trainer = self._trainer
        world_size, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if len(ranks) != world_size:
            rank_zero_warn(f"RNGStateCheckpoint: the checkpoint holds the random states of {len(ranks)} "
                           f"process(es) but this run has {world_size}; rank r takes saved rank r mod "
                           f"{len(ranks)}'s, so the run continues, but not bit-identically.")
        set_rng_states(ranks[rank % len(ranks)], self._device())
