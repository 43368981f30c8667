"""NaNGuard: stop training when the loss becomes NaN/inf or diverges; name the step, its lr, the last good checkpoint.

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

A run can also diverge without a NaN: the CIFAR CPU config at AdamW lr 50 ran all its epochs with a training loss of
1.2e7 to 1.4e13, test accuracy 10% (chance), exit status 0. So the same checks apply a divergence rule
(`divergence.py`): the run stops when more than half of its last `divergence_window` training losses lie above
`divergence_factor` × its first training loss. And no checkpoint is written, nor the run ended, while the latest
loss lies above that line: there the guard cannot yet tell a spike from a divergence, and a diverged `last.ckpt`
would replace the good one the message sends the user back to. A diverging loss can still dip below the line just
as a checkpoint is written; when the run then stops, the sentence says that checkpoint came after the loss first
crossed the line, rather than calling it good.

Why the defaults (100 times, 20 steps) stop no healthy run: the line sits at 230 for CIFAR-10 (first loss ln 10 =
2.3), 530 for Stanford Cars (ln 196 = 5.3) and 1040 for WikiText-2 (ln 33 278 = 10.4), a loss only logits in the
hundreds reach. Measured step by step: the CIFAR CPU config on real images never went above its first loss (2.29) in
40 steps at its lr 3e-3, and at most to 2.2 times it (5.03) at lr 1, 333 times too hot; the tests' small AWD-LSTM on
real WikiText-2 never went above its first (9.03, ln 8298) in 2 epochs, at its lr and at 10 times it, its epoch
starts (the hidden state reset) jumping 0.24-0.28. The neural cache is evaluation only, never in a training loss. A
spike that recovers within 10 steps is never a majority of 20. At lr 50 (its schedule cut to 30 steps) the CIFAR CPU
config is at 739 times by its 2nd step (dipping to 4-9 times at steps 3-5, 1e14 by step 18) and stops at global step
20. Starting from trained weights (`--model.init_args.init_weights`) the first loss is the trained model's: the line
stays above a uniform guess's loss unless that first loss is under 1/100 of it (a CIFAR-10 training batch fitted to
under 0.023); raise `divergence_factor`, or set it to null, for such a run.

Resumes (`--ckpt_path`) keep the first loss and the window: they are the guard's `state_dict`, saved in every
checkpoint, so the resumed run's line is the one it started with (a loss fallen to 0.3 by then would otherwise make
the line 30) and its decisions those of the uninterrupted run. A checkpoint written without them takes the first
loss after the resume, a lower but still safe line. Fine-tuning stages run in one `fit`: stage 2 is judged against
stage 1's start. Under DDP each rank judges its own losses, the decision is reduced at the same points as the NaN
check, and a resume gives every rank rank 0's state. `cli.py lr_find` is untouched: Lightning's range test runs its
sweep with the trainer's callbacks swapped for its own `_LRCallback`, so the guard never sees the loss it drives up.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from lightning_modules.callbacks.divergence import DivergenceRule


class NonFiniteLossError(SystemExit):
    """Raised when training diverged. A `SystemExit` (like Lightning's `SIGTERMException`) so that `cli.py` ends
    with this one sentence and exit status 1 instead of a traceback through the training loop."""


class DivergedLossError(NonFiniteLossError):
    """Raised when the training loss diverged while finite (the divergence rule); the same exit as a NaN."""


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
    """Stops fitting with one message when the training loss is NaN/inf or has diverged, or a weight about to be
    saved is NaN/inf.

    Args:
        check_every_n_steps: read the kept losses every this many steps (null: the trainer's `log_every_n_steps`).
        divergence_factor: the multiple of the run's first training loss above which a loss counts as diverged
            (default 100: see the module docstring for why no healthy run reaches it); null switches the
            divergence rule off, leaving the NaN/inf checks.
        divergence_window: how many of the latest training losses the rule looks at: the run stops when more than
            half of them are above the line (default 20, so a spike that recovers within 10 steps does not stop it,
            unless a checkpoint is due in its midst).
    """

    def __init__(self, check_every_n_steps: int | None = None, divergence_factor: float | None = 100.0,
                 divergence_window: int = 20) -> None:
        if check_every_n_steps is not None and check_every_n_steps < 1:
            raise ValueError(f"NaNGuard: check_every_n_steps={check_every_n_steps} must be ≥ 1 (or null for the "
                             "trainer's log_every_n_steps).")
        factor_ok = (isinstance(divergence_factor, (int, float)) and not isinstance(divergence_factor, bool)
                     and 1 < divergence_factor < math.inf)  # NaN fails the comparison too
        if divergence_factor is not None and not factor_ok:
            raise ValueError(f"NaNGuard: divergence_factor={divergence_factor!r} must be a finite number > 1, the "
                             "multiple of the first training loss that counts as diverged (default 100), or null "
                             "to switch the divergence check off.")
        if isinstance(divergence_window, bool) or not isinstance(divergence_window, int) or divergence_window < 1:
            raise ValueError(f"NaNGuard: divergence_window={divergence_window!r} must be a whole number ≥ 1, how "
                             "many of the latest training losses the rule looks at (default 20).")
        self.check_every_n_steps = check_every_n_steps
        self.divergence = (DivergenceRule(divergence_factor, divergence_window) if divergence_factor is not None
                           else None)
        self._pending: list[tuple[int, list[float], torch.Tensor]] = []  # (global step, lrs, loss on device)
        self._step_lrs: tuple[int, list[float]] = (0, [])
        self._saved_step: int | None = None  # global step of the last checkpoint this process let through

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # The lr that this batch's optimizer step uses: the scheduler steps again before on_train_batch_end.
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
        self.check(trainer, weights_finite=weights_finite, keeping="as a checkpoint was about to be written")
        self._saved_step = trainer.global_step
        if self.divergence is not None and "callbacks" in checkpoint:
            # Lightning collected state_dict() before this hook: store the window as it is after this check.
            checkpoint["callbacks"][self.state_key] = self.state_dict()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer, keeping="as training ended")  # the last steps, before cli.py tests the final weights

    def state_dict(self) -> dict[str, Any]:
        return self.divergence.state_dict() if self.divergence is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.divergence is not None and state_dict:
            self.divergence.load_state_dict(state_dict)

    def check(self, trainer: pl.Trainer, weights_finite: bool = True, keeping: str | None = None) -> None:
        """Read the pending losses (one device→host transfer), feed them in order to the divergence rule and raise
        at the first NaN/inf or divergence. `keeping`: the state is about to be kept (a checkpoint, the run's end),
        so a latest loss above the divergence line stops the run too (the module docstring says why)."""
        pending, self._pending = self._pending, []
        values = torch.stack([loss for *_, loss in pending]).cpu().tolist() if pending else []
        first_bad, diverged, when = None, False, ""
        for i, value in enumerate(values):
            if not math.isfinite(value):
                first_bad = i
                break
            if self.divergence is not None and self.divergence.add(pending[i][0], pending[i][1], value):
                diverged = True
                break
        if keeping and first_bad is None and not diverged and self.divergence is not None \
                and self.divergence.latest_above():
            diverged, when = True, f", {keeping}"
        local_bad = first_bad is not None or diverged or not weights_finite
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
        error = NonFiniteLossError
        written = "training stopped with no checkpoint of the diverged weights written, and"
        if diverged and checkpoint and self._saved_step is not None \
                and self._saved_step >= (crossed := self.divergence.first_above()[0]):
            # The loss crossed the line, dipped below it as that checkpoint was written, and came back: a loss
            # diverging bounces so. The checkpoint is then no good one to go back to.
            written = (f"training stopped, but the last checkpoint {checkpoint} (global step {self._saved_step}) was "
                       f"written after the loss first crossed that line at step {crossed}, so it may hold diverging "
                       "weights:")
            kept = "restart from scratch (or from a checkpoint of your own from before that step) with"
        if first_bad is not None:
            step, lrs, _ = pending[first_bad]
            what = f"the training loss became {values[first_bad]} at global step {step} ({format_lrs(lrs)})"
        elif diverged:
            error, rule = DivergedLossError, self.divergence
            step, lrs, _ = rule.first_above()
            last_step, _, last = rule.recent[-1]
            what = (f"the training loss diverged from global step {step} ({format_lrs(lrs)}) on: "
                    f"{rule.count_above()} of its last {len(rule.recent)} values, up to step {last_step}, were above "
                    f"{rule.factor:g} times its first value {rule.first_loss:.4g} (the last {last:.3g}){when}")
        elif not weights_finite:
            step, lrs = self._step_lrs
            what = (f"the weights became NaN/inf by global step {step} with a finite loss ({format_lrs(lrs)}; "
                    "gradients overflowed)")
        else:
            what = (f"the training loss became NaN/inf or diverged on another process by global step "
                    f"{trainer.global_step}")
        raise error(f"NaNGuard: {what}; {written} {kept} {lower_lr}.")
