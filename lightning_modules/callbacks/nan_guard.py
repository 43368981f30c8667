"""NaNGuard: stop training when the loss becomes NaN/inf, name the step, its lr and the last good checkpoint.

Why a callback of our own: a 1cycle run at a too-high lr can diverge hours in; Lightning 2.6 then keeps training on
NaN weights and overwrites `last.ckpt` with them at the next epoch end. Its own tools don't cover this:
`Trainer(detect_anomaly=True)` is autograd's anomaly mode (it slows every backward and names an op, not a step, an
lr or a checkpoint), `terminate_on_nan` was removed in 2.0, `loops.utilities.check_finite_loss` is called by
nothing, `EarlyStopping(check_finite=True)` only looks at a validation metric at epoch end — by then `last.ckpt`
may already hold NaN weights — and `ModelCheckpoint(save_on_exception=True)` would save the diverged state.

Why it costs nothing per step: reading `loss.item()` every step would force a GPU sync and stall the queue of
kernels. Each step only keeps a detached copy of the loss on its device (one tiny kernel, no sync) and the step
number and lr from the optimizer (plain Python floats). The copies are read in ONE transfer every
`check_every_n_steps` steps (default: the trainer's `log_every_n_steps`, where the loggers already sync) and
before every checkpoint is written (`on_save_checkpoint` runs while the checkpoint is built, before the file is
opened, so raising there keeps the previous file; saving already syncs). At that point the weights about to be
saved are also checked, which catches gradients that overflowed under a finite loss. Detection may therefore come
up to N steps late, but the message names the first bad step exactly and no checkpoint of a diverged state is ever
written. Under DDP the decision is reduced over ranks at those same points, so all ranks stop together.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint


class NonFiniteLossError(SystemExit):
    """Raised when training diverged. A `SystemExit` (like Lightning's `SIGTERMException`) so that `cli.py` ends
    with this one sentence and exit status 1 instead of a traceback through the training loop."""


def last_good_checkpoint(trainer: pl.Trainer) -> str | None:
    """The newest checkpoint file this trainer's ModelCheckpoint callbacks have written, or None."""
    paths = {Path(p) for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)
             for p in (cb.last_model_path, cb.best_model_path, cb.kth_best_model_path) if p}
    existing = [p for p in paths if p.is_file()]
    return str(max(existing, key=lambda p: p.stat().st_mtime)) if existing else None


def format_lrs(lrs: list[float]) -> str:
    """One lr when all param groups share it, else every group's: `lr 0.003`, or `lr 0.0003, 0.003 per param group`."""
    if len(set(lrs)) == 1:
        return f"lr {lrs[0]:.4g}"
    return "lr " + ", ".join(f"{lr:.4g}" for lr in lrs) + " per param group"


class NaNGuard(pl.Callback):
    """Stops fitting with one message when the training loss (or a weight about to be saved) is NaN/inf."""

    def __init__(self, check_every_n_steps: int | None = None) -> None:
        if check_every_n_steps is not None and check_every_n_steps < 1:
            raise ValueError(f"NaNGuard: check_every_n_steps={check_every_n_steps} must be ≥ 1 (or null for the "
                             "trainer's log_every_n_steps).")
        self.check_every_n_steps = check_every_n_steps
        self._pending: list[tuple[int, list[float], torch.Tensor]] = []  # (global step, lrs, loss on device)
        self._step_lrs: tuple[int, list[float]] = (0, [])

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # The lr that this batch's optimizer step uses: the scheduler steps after on_train_batch_end.
        self._step_lrs = (trainer.global_step, [g["lr"] for opt in trainer.optimizers for g in opt.param_groups])

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            # A new tensor (not a reference): compiled/CUDA-graph steps may reuse the output's memory.
            self._pending.append((*self._step_lrs, loss.detach().float().sum()))
        if len(self._pending) >= (self.check_every_n_steps or trainer.log_every_n_steps or 1):
            self.check(trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        weights = [t for t in checkpoint.get("state_dict", {}).values()
                   if isinstance(t, torch.Tensor) and t.is_floating_point()]
        weights_finite = bool(torch.stack([torch.isfinite(t).all() for t in weights]).all()) if weights else True
        self.check(trainer, weights_finite=weights_finite)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer)  # the run's last steps, before `fit` returns and cli.py tests the final weights

    def check(self, trainer: pl.Trainer, weights_finite: bool = True) -> None:
        """Read the pending losses (one device→host transfer) and raise NonFiniteLossError at the first bad one."""
        pending, self._pending = self._pending, []
        values = torch.stack([loss for *_, loss in pending]).cpu().tolist() if pending else []
        first_bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        local_bad = first_bad is not None or not weights_finite
        if not trainer.strategy.reduce_boolean_decision(local_bad, all=False):
            return
        checkpoint = last_good_checkpoint(trainer)
        lower_lr = "a lower lr (--model.init_args.optimizer.init_args.lr)"
        if checkpoint:
            # Not `--ckpt_path`: resuming restores the optimizer and its schedule, and with them the lr that diverged.
            kept = (f"the last good checkpoint {checkpoint} is kept: start a new 1cycle from its weights with "
                    f"`--model.init_args.init_weights {checkpoint}` and")
        else:
            kept = "there is no last good checkpoint (none yet): restart with"
        if first_bad is not None:
            step, lrs, _ = pending[first_bad]
            what = f"the training loss became {values[first_bad]} at global step {step} ({format_lrs(lrs)})"
        elif not weights_finite:
            step, lrs = self._step_lrs
            what = (f"the weights became NaN/inf by global step {step} with a finite loss ({format_lrs(lrs)}; "
                    "gradients overflowed)")
        else:
            what = f"the training loss became NaN/inf on another process by global step {trainer.global_step}"
        raise NonFiniteLossError(f"NaNGuard: {what}; training stopped with no checkpoint of the diverged weights "
                                 f"written, and {kept} {lower_lr}.")
