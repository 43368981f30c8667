"""The learning-rate range test of the 1cycle method: `python cli.py lr_find --config configs/<task>.yaml`.

Super-convergence starts here: the max lr of the 1cycle is read off the training loss against an exponentially
growing lr (Smith's range test, fastai's `lr_find`, which the seed's authors used to pick their lrs). It is a
`cli.py` subcommand, so every config, override and data option works as for `fit`; the trainer class below adds
`lr_find` to Lightning's Trainer so that LightningCLI builds its options from the signature.

Built on Lightning's `LearningRateFinder` (its `_lr_find`: a short fit with the config's optimizer and our
model's own `training_step`, an early stop when the smoothed loss passes `early_stop_threshold` × its best, the
model, optimizer, callbacks' and loops' states saved before and restored after). What it does not serve:
- **The groups' lr ratios.** Lightning sets every param group to the same swept lr. A fine-tuning stage trains
  its layer groups at fixed ratios (the seed's stage 2: lr/9, lr/3, lr; frozen groups at 0), so here the top
  group follows the sweep and every other group keeps its ratio to it (`GroupwiseLRFinder`, installed in place of
  Lightning's `_LRFinder` for the duration of one range test).
- **Stages.** `stage: k` runs the test on fine-tuning stage k alone (its frozen groups, its multipliers, its
  lr), the stages being put back afterwards.
- **The 1cycle's momentum.** The config's scheduler is built and thrown away by Lightning, but building it sets
  beta1 (SGD's momentum) to the 1cycle's starting value, which the sweep then keeps: the test runs the optimizer
  as the 1cycle's first steps run it.
The language models need nothing more: their `training_step` carries the hidden state batch to batch as in
training.

The suggestion: the lr at the minimum of the smoothed loss, divided by 10 (fastai's "minimum / 10" rule). At the
minimum the lr is already where the loss stops improving — the edge of instability — and the 1cycle spends
almost half its steps at or near its max lr, so the max lr must be one the model tolerates for long; a tenth of
it sits on the falling slope. Lightning's own rule (the steepest slope against the lr on a linear scale) is
printed beside it for reference (measured against log lr here). The loss is Lightning's smoothed one: a
bias-corrected running average with beta 0.98, the curve its early stop reads.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path
from typing import Any
from unittest import mock

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateFinder
from pytorch_lightning.core.optimizer import _validate_optimizers_attached
from pytorch_lightning.tuner import lr_finder as lightning_lr_finder
from pytorch_lightning.utilities.types import LRSchedulerConfig
from torch.optim.lr_scheduler import LRScheduler

RULE = "the lr at the minimum of the smoothed loss, divided by 10 (fastai's rule)"


class GroupwiseExponentialLR(LRScheduler):
    """The top group's lr goes exponentially from `min_lr` to `max_lr` over `steps` steps; every group keeps its
    ratio to it. `lr` is the top group's lr, which Lightning records for the curve."""

    def __init__(self, optimizer: torch.optim.Optimizer, ratios: list[float], min_lr: float, max_lr: float,
                 steps: int) -> None:
        self.ratios, self.min_lr, self.max_lr, self.steps = ratios, min_lr, max_lr, steps
        super().__init__(optimizer)

    def swept_lr(self) -> float:
        return self.min_lr * (self.max_lr / self.min_lr) ** (self.last_epoch / max(1, self.steps - 1))

    def get_lr(self) -> list[float]:
        return [ratio * self.swept_lr() for ratio in self.ratios]

    @property
    def lr(self) -> list[float]:
        return [self.swept_lr()]


class GroupwiseLRFinder(lightning_lr_finder._LRFinder):
    """Lightning's `_LRFinder`, sweeping every param group at its ratio to the largest (see the module docstring)."""

    def _exchange_scheduler(self, trainer: pl.Trainer) -> None:
        if len(trainer.strategy.optimizers) != 1:
            raise ValueError(f"lr_find needs one optimizer; the model configures {len(trainer.strategy.optimizers)}.")
        optimizer = trainer.strategy.optimizers[0]
        top = max(group["lr"] for group in optimizer.param_groups)
        ratios = [group["lr"] / top if top > 0 else 1.0 for group in optimizer.param_groups]
        for group, ratio in zip(optimizer.param_groups, ratios):
            group["lr"] = group["initial_lr"] = ratio * self.lr_min
        scheduler = GroupwiseExponentialLR(optimizer, ratios, self.lr_min, self.lr_max, self.num_training)
        trainer.strategy.lr_scheduler_configs = [LRSchedulerConfig(scheduler, interval="step")]
        _validate_optimizers_attached(trainer.optimizers, trainer.lr_scheduler_configs)


class RangeTest(LearningRateFinder):
    """Lightning's `LearningRateFinder` callback, with `GroupwiseLRFinder` doing the sweep."""

    def lr_find(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with mock.patch.object(lightning_lr_finder, "_LRFinder", GroupwiseLRFinder):
            super().lr_find(trainer, pl_module)


BETA = 0.98  # Lightning's `_LRCallback` smoothing


def unbiased(recorded: list[float], beta: float = BETA) -> list[float]:
    """Lightning's recorded losses with its bias correction made right. `_LRCallback` divides its running average
    by 1 − β^(global_step + 1) after the step has already been counted (global_step is k + 1 at the k-th sweep
    step, from 0), so its first values come out about half the true loss and the curve seems to start low; this
    divides by 1 − β^(k + 1) instead."""
    return [value * (1 - beta ** (k + 2)) / (1 - beta ** (k + 1)) for k, value in enumerate(recorded)]


def suggest(lrs: list[float], smoothed: list[float]) -> dict[str, Any]:
    """The suggested max lr by `RULE`, the minimum it derives from, and the steepest slope of the loss against
    log lr (Lightning's rule, which measures the slope against the lr itself). `smoothed`: a bias-corrected
    running average of the losses (`unbiased`)."""
    finite = [i for i, loss in enumerate(smoothed) if math.isfinite(loss)]
    if len(finite) < 2:
        raise ValueError(f"lr_find recorded {len(finite)} finite losses: raise --num_training or --max_lr.")
    at_min = min(finite, key=lambda i: smoothed[i])
    steepest = min(finite[1:], key=lambda i: (smoothed[i] - smoothed[i - 1]) / (math.log(lrs[i]) - math.log(lrs[i - 1])))
    turned = at_min < len(smoothed) - 2  # the loss rose again after its minimum
    return {"suggested_lr": lrs[at_min] / 10, "rule": RULE, "lr_at_min_loss": lrs[at_min], "turned_up": turned,
            "min_smoothed_loss": smoothed[at_min], "steepest_lr": lrs[steepest]}


class SuperconvergenceTrainer(pl.Trainer):
    """Lightning's Trainer with the lr range test as a method, so `cli.py lr_find` exists with its options."""

    def lr_find(self, model: pl.LightningModule, datamodule: pl.LightningDataModule | None = None,
                min_lr: float = 1e-6, max_lr: float = 10.0, num_training: int = 100,
                early_stop_threshold: float | None = 4.0, stage: int | None = None) -> dict[str, Any]:
        """Learning-rate range test: a short fit at an exponentially growing lr; the loss curve and a suggested max lr.

        Args:
            min_lr, max_lr: the sweep's first and last lr (of the top param group; the others keep their ratios).
                fastai's range, up to 10: the curve must turn up for its minimum to mean something.
            num_training: optimizer steps of the sweep, one lr each.
            early_stop_threshold: stop once the smoothed loss exceeds this × its best so far (null: never).
            stage: fine-tuning stage to test (1-based; the model's `stages`), e.g. 1 frozen, 2 unfrozen.
        """
        if not 0 < min_lr < max_lr:
            raise ValueError(f"lr_find needs 0 < min_lr < max_lr; got min_lr {min_lr} and max_lr {max_lr}: give the "
                             "range from small to large, e.g. --min_lr 1e-6 --max_lr 1.")
        if num_training < 2:
            raise ValueError(f"lr_find's num_training is {num_training}; the sweep needs at least 2 steps (100 is "
                             "usual).")
        stages = getattr(model, "stages", None)
        if stage is not None and not (stages and 1 <= stage <= len(stages)):
            raise ValueError(f"lr_find's stage is {stage} but the model has {len(stages or [])} fine-tuning stages; "
                             "leave --stage out, or give one from 1 to the number of stages.")
        finder = RangeTest(min_lr=min_lr, max_lr=max_lr, num_training_steps=num_training,
                           early_stop_threshold=early_stop_threshold, update_attr=False)
        finder._early_exit = True  # as Lightning's Tuner.lr_find: stop the fit once the sweep is done
        if stage is not None:  # that stage alone, from its start; as long as the run, so its schedule builds
            alone = dataclasses.replace(stages[stage - 1], epochs=max(stages[stage - 1].epochs, self.max_epochs or 1))
            model.stages, model.active_stage = [alone], 0
        self.callbacks = [finder, *self.callbacks]
        try:
            self.fit(model, datamodule=datamodule)
        finally:
            self.callbacks = [callback for callback in self.callbacks if callback is not finder]
            if stage is not None:
                model.stages, model.active_stage = stages, 0
        if finder.optimal_lr is None:
            raise ValueError("lr_find made no sweep (fast_dev_run?); run it without --trainer.fast_dev_run.")
        lrs, losses = finder.optimal_lr.results["lr"], unbiased(finder.optimal_lr.results["loss"])
        return {"lrs": lrs, "losses": losses, "min_lr": min_lr, "max_lr": max_lr, "num_training": num_training,
                "stopped_early": len(lrs) < num_training, "stage": stage, **suggest(lrs, losses)}


def fit_command(argv: list[str], suggested_lr: float, stage: int | None) -> str:
    """The `cli.py fit` line of this range test's own arguments, with the suggested lr filled in."""
    own = ("--min_lr", "--max_lr", "--num_training", "--early_stop_threshold", "--stage")
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in own:
            skip = True
        elif not arg.startswith(tuple(f"{name}=" for name in own)):
            kept.append("fit" if arg == "lr_find" else arg)
    lr = f"{suggested_lr:.3g}"
    if stage is not None:  # a stage's lr lives in the list of stages, which one flag cannot edit
        return f"python cli.py {' '.join(kept)}   # with model.init_args.stages[{stage - 1}].lr: {lr} in your config"
    return f"python cli.py {' '.join(kept)} --model.init_args.optimizer.init_args.lr {lr}"


def plot(result: dict[str, Any], path) -> None:
    """Smoothed loss against lr (log scale), the suggestion and the minimum marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(result["lrs"], result["losses"], color="tab:blue")
    axis.set_xscale("log")
    axis.axvline(result["suggested_lr"], color="tab:red", linestyle="--",
                 label=f"suggested max lr {result['suggested_lr']:.2g} (minimum / 10)")
    axis.axvline(result["lr_at_min_loss"], color="grey", linestyle=":", label=f"minimum {result['lr_at_min_loss']:.2g}")
    axis.set_xlabel("learning rate" + (f" (stage {result['stage']}'s top group)" if result["stage"] else ""))
    axis.set_ylabel("training loss (smoothed)")
    finite = [loss for loss in result["losses"] if math.isfinite(loss)]
    axis.set_ylim(min(finite) - 0.05 * abs(min(finite)), min(max(finite), 2 * finite[0] - min(finite)) * 1.05)
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def report(result: dict[str, Any], folder: Path, loggers: list, argv: list[str]) -> None:
    """The curve as PNG and CSV in `folder` (and on W&B), then the suggestion, its rule and the `fit` line."""
    from pytorch_lightning.loggers import WandbLogger

    folder.mkdir(parents=True, exist_ok=True)
    plot(result, folder / "lr_find.png")
    (folder / "lr_find.csv").write_text("lr,smoothed_loss\n" + "".join(
        f"{lr!r},{loss!r}\n" for lr, loss in zip(result["lrs"], result["losses"])))
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_table("lr_find/curve", columns=["lr", "smoothed_loss"],
                             data=[[lr, loss] for lr, loss in zip(result["lrs"], result["losses"])])
            logger.log_image("lr_find/plot", images=[str(folder / "lr_find.png")])
            logger.log_metrics({"lr_find/suggested_lr": result["suggested_lr"]})
    if not result["turned_up"]:
        warnings.warn(f"lr_find: the loss was still lowest at the end of the range (lr {result['lrs'][-1]:.3g}), so "
                      "its minimum, and the suggestion, are not where the loss turns up: run again with a larger "
                      "--max_lr.", stacklevel=3)
    stopped = " (stopped early: the loss diverged)" if result["stopped_early"] else ""
    print(f"lr_find: {len(result['lrs'])} steps from {result['min_lr']:g} to {result['lrs'][-1]:.3g}{stopped}; "
          f"suggested max lr {result['suggested_lr']:.3g}, by {result['rule']}: the smoothed loss is lowest at "
          f"lr {result['lr_at_min_loss']:.3g}, where training is already at the edge of diverging, and the "
          f"1cycle spends about half its steps near its max lr (the steepest descent is at "
          f"{result['steepest_lr']:.3g}). Curve: {folder / 'lr_find.png'}\n"
          f"train with it: {fit_command(argv, result['suggested_lr'], result['stage'])}", flush=True)
