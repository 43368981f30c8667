"""Schedule-free optimizers (the `schedulefree` package) inside Lightning: which point the model holds, when.

A schedule-free optimizer keeps two points: it trains at y and evaluates at x, an average of the iterates; its
`eval()` moves the parameters to x and `train()` back to y. Everything but a training step must see x: validation
inside `fit` (the sanity check included), `test`, `predict`, the checkpoints, and the model `fit` leaves behind.
BatchNorm's running statistics were gathered at the y points, so at x they are recomputed from training batches
(the package's README: "additional modifications are required for BatchNorm").

How, and why this way:
- `to_eval` snapshots the model at y, calls the package's `eval()` and recomputes the statistics of the BatchNorm
  layers that train, from the first `bn_batches` training batches in dataset order (fixed, no augmentation drawn
  from the global generators: the RNG streams, and so a resumed run, are untouched);
- `to_train` puts the snapshot back instead of calling `train()`: the package's `train()` recomputes y from x by a
  lerp that is not exact in floating point, so every evaluation would nudge the training trajectory. With the
  snapshot an evaluation or a checkpoint changes nothing in training;
- a checkpoint holds x (and x's BatchNorm statistics) as its `state_dict` — what `test`, `predict`, `export` and
  `init_weights` load — plus y under `TRAIN_POINT_KEY`, so `--ckpt_path` resumes at the exact training point
  (bit-identical on CPU, mid-epoch included). A checkpoint written while training (the end of an epoch, a
  SIGTERM) computes x for the file and leaves the live model at y;
- at the end of `fit` the model is left at x, so the `test` that follows evaluates what `last.ckpt` holds.
The modules call these from their hooks; an optimizer that is not schedule-free makes every call a no-op.
"""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import default_collate

TRAIN_POINT_KEY = "schedule_free_train_point"


def is_schedule_free(optimizer: Any) -> bool:
    """True for the `schedulefree` package's optimizers: they have `train()`/`eval()` and a `train_mode` flag."""
    return (callable(getattr(optimizer, "eval", None)) and callable(getattr(optimizer, "train", None))
            and bool(optimizer.param_groups) and "train_mode" in optimizer.param_groups[0])


def _training_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
            and m.track_running_stats]


class ScheduleFreePoints:
    """The evaluation point x and training point y of a schedule-free optimizer, kept straight for one module.

    Args:
        module: the LightningModule; its `net` is what is snapshotted and evaluated.
        bn_batches: training batches over which BatchNorm statistics are recomputed at x (0: keep them).
    """

    def __init__(self, module: pl.LightningModule, bn_batches: int = 8) -> None:
        self.module, self.bn_batches = module, bn_batches
        self.train_point: dict[str, torch.Tensor] | None = None  # y while the net holds x
        self.restored: dict[str, torch.Tensor] | None = None  # a resumed checkpoint's y, adopted at the next call

    def optimizer(self) -> Any:
        trainer = self.module._trainer
        optimizers = trainer.optimizers if trainer is not None else []
        return optimizers[0] if optimizers and is_schedule_free(optimizers[0]) else None

    def _adopt_restored(self, optimizer: Any) -> None:
        """After a resume the net holds the checkpoint's x: remember its y, and say so to the optimizer."""
        if self.restored is not None:
            self.train_point, self.restored = self.restored, None
            for group in optimizer.param_groups:
                group["train_mode"] = False

    def to_eval(self) -> None:
        """Move the net to x (no-op when already there), recomputing the statistics of the BatchNorm layers in
        training mode now (those that train; frozen ones keep theirs)."""
        optimizer = self.optimizer()
        if optimizer is None:
            return
        self._adopt_restored(optimizer)
        if not optimizer.param_groups[0]["train_mode"]:
            return
        batchnorms = _training_batchnorms(self.module.net)
        self.train_point = {k: v.detach().clone() for k, v in self.module.net.state_dict().items()}
        optimizer.eval()
        self._recompute_batchnorm(batchnorms)

    def to_train(self) -> None:
        """Move the net back to y: exactly the snapshot, or the package's `train()` when there is none."""
        optimizer = self.optimizer()
        if optimizer is None:
            return
        self._adopt_restored(optimizer)
        if self.train_point is not None:
            self.module.net.load_state_dict(self.train_point)
            self.train_point = None
            for group in optimizer.param_groups:
                group["train_mode"] = True
        elif not optimizer.param_groups[0]["train_mode"]:
            optimizer.train()  # a new optimizer (fit start, a new fine-tuning stage): x = y, nothing moves

    def save(self, checkpoint: dict) -> None:
        """Make `checkpoint` hold x as its weights and y for resuming, leaving the live net where it was."""
        optimizer = self.optimizer()
        if optimizer is None:
            return
        self._adopt_restored(optimizer)
        if optimizer.param_groups[0]["train_mode"]:  # modules keep their modes: only the recomputation sets them
            self.to_eval()
            checkpoint["state_dict"] = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
            checkpoint[TRAIN_POINT_KEY] = self.train_point
            self.to_train()
        elif self.train_point is not None:
            checkpoint[TRAIN_POINT_KEY] = self.train_point

    def load(self, checkpoint: dict) -> None:
        """Keep a resumed checkpoint's y until the optimizer exists (Lightning restores it after this hook)."""
        if self.module._trainer is not None and self.module.trainer.state.fn == "fit":
            self.restored = checkpoint.get(TRAIN_POINT_KEY)

    @torch.no_grad()
    def _recompute_batchnorm(self, batchnorms: list[nn.Module]) -> None:
        """Running statistics of `batchnorms` as the plain average over the first `bn_batches` training batches,
        every other layer in eval mode (no dropout)."""
        datamodule = getattr(self.module.trainer, "datamodule", None)
        dataset = getattr(datamodule, "train_set", None)
        if not batchnorms or self.bn_batches <= 0 or dataset is None:
            return
        net, modes = self.module.net, {m: m.training for m in self.module.modules()}
        net.eval()
        momenta = {}
        for bn in batchnorms:
            momenta[bn] = bn.momentum
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: each batch weighs the same
            bn.train()
        batch_size = getattr(datamodule, "batch_size", 64)
        device = next(net.parameters()).device
        # A dataset's own random transform (Stanford Cars) draws from a fixed seed: the same batches at every call,
        # whatever the generators' state, and the run's RNG streams untouched.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)
            for start in range(0, min(len(dataset), self.bn_batches * batch_size), batch_size):
                batch = default_collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
                images = self._normalized(datamodule, self.module.transfer_batch_to_device(batch, device, 0))
                with self.module.trainer.precision_plugin.forward_context():
                    self.module(images)
        for bn, momentum in momenta.items():
            bn.momentum = momentum
        for m, training in modes.items():
            m.training = training

    @staticmethod
    def _normalized(datamodule: Any, batch: Any) -> torch.Tensor:
        """A batch through the datamodule's transfer hook (normalisation) without its training augmentation, which
        it applies only while its trainer trains: the same images whether called in validation or training."""
        trainer, datamodule.trainer = datamodule.trainer, None
        try:
            images, _ = datamodule.on_after_batch_transfer(batch, 0)
        finally:
            datamodule.trainer = trainer
        return images


class ScheduleFreeHooks:
    """The LightningModule hooks that keep a schedule-free optimizer's points straight (`ScheduleFreePoints`).

    Mixed into ImageClassifier and LanguageModel before `pl.LightningModule`; each sets `self.schedule_free`.
    Their own `on_save_checkpoint`/`on_load_checkpoint` call `self.schedule_free.save/load`.
    """

    schedule_free: ScheduleFreePoints

    def on_validation_model_eval(self) -> None:
        self.schedule_free.to_eval()  # first: it recomputes the BatchNorm layers that are training now
        super().on_validation_model_eval()

    def on_validation_model_train(self) -> None:
        super().on_validation_model_train()
        self.schedule_free.to_train()

    def on_test_model_eval(self) -> None:
        self.schedule_free.to_eval()
        super().on_test_model_eval()

    def on_predict_model_eval(self) -> None:
        self.schedule_free.to_eval()
        super().on_predict_model_eval()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.schedule_free.to_train()  # a no-op but for a fresh optimizer (fit start, a stage, lr_find)

    def on_train_end(self) -> None:
        self.schedule_free.to_eval()  # `fit` leaves the model at x, what its last checkpoint holds
