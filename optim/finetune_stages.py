"""Fine-tuning stages: which layer groups train, at which learning rates, for how many epochs.

The seed fine-tunes in two stages, each its own 1cycle: the head alone with the pretrained body frozen, then
everything with discriminative learning rates. A stage is plain data (YAML-friendly); freezing is plain torch
(`requires_grad` and BatchNorm mode). `ImageClassifier` switches stages and rebuilds the optimizer and the
1cycle together at the boundary, so torch's `OneCycleLR` never meets a param group it did not set up.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class FinetuneStage:
    """One stage of fine-tuning.

    Args:
        epochs: length of the stage (its own 1cycle spans exactly these epochs).
        lr: peak learning rate of the last layer group (the head); other groups get `lr * lr_multipliers[i]`.
        frozen_groups: how many leading layer groups are frozen (fastai's `freeze_to`): no gradient, no
            update, and their BatchNorm layers in eval mode so the pretrained statistics stay unchanged.
        lr_multipliers: one factor per layer group (default all 1); the seed's stage 2 is [1/9, 1/3, 1].
    """

    epochs: int
    lr: float
    frozen_groups: int = 0
    lr_multipliers: list[float] | None = None

    def __post_init__(self) -> None:
        if self.epochs <= 0:
            raise ValueError(f"model.stages: epochs is {self.epochs}; each stage needs at least 1 epoch.")
        if self.lr <= 0:
            raise ValueError(f"model.stages: lr is {self.lr}; give each stage a positive learning rate.")
        if self.frozen_groups < 0:
            raise ValueError(f"model.stages: frozen_groups is {self.frozen_groups}; use 0 (all train) or more.")

    def group_multipliers(self, num_groups: int) -> list[float]:
        """Per-group lr factors for a net with `num_groups` layer groups; frozen groups get 0."""
        if self.frozen_groups >= num_groups:
            raise ValueError(f"model.stages: frozen_groups is {self.frozen_groups} but the net has {num_groups} "
                             "layer groups; leave at least the last one trainable.")
        multipliers = [1.0] * num_groups if self.lr_multipliers is None else [float(m) for m in self.lr_multipliers]
        if len(multipliers) != num_groups:
            raise ValueError(f"model.stages: lr_multipliers has {len(multipliers)} values for {num_groups} layer "
                             "groups; give one value per group.")
        return [0.0 if i < self.frozen_groups else m for i, m in enumerate(multipliers)]


# Plain data: let checkpoints that carry stages in their hyperparameters load with `weights_only=True`.
torch.serialization.add_safe_globals([FinetuneStage])


def as_stages(stages: Sequence[FinetuneStage | dict] | None) -> list[FinetuneStage] | None:
    """Accept stages as dataclasses (from the CLI) or dicts (from Python or a reloaded checkpoint)."""
    if stages is None:
        return None
    result = [s if isinstance(s, FinetuneStage) else FinetuneStage(**dict(s)) for s in stages]
    if not result:
        raise ValueError("model.stages is an empty list; give at least one stage or null for a single 1cycle.")
    return result


def stage_at_epoch(stages: Sequence[FinetuneStage], epoch: int) -> int:
    """Index of the stage that epoch `epoch` (0-based) belongs to; the last stage for epochs past the end."""
    end = 0
    for index, stage in enumerate(stages):
        end += stage.epochs
        if epoch < end:
            return index
    return len(stages) - 1


def set_trainable(layer_groups: Sequence[nn.Module], frozen_groups: int) -> None:
    """Freeze the first `frozen_groups` layer groups and unfreeze the rest.

    Frozen: parameters without gradient (backward stops at the first trainable layer, so stage 1 is also
    cheaper) and BatchNorm in eval mode, which uses and keeps the pretrained running statistics — as fastai
    0.7 does for non-trainable layers. (Lightning's `BaseFinetuning.freeze` instead sets
    `track_running_stats=False`, which normalises with batch statistics: not the seed's behaviour.)
    Call again at each training epoch start: evaluation and `model.train()` reset module modes.
    """
    for index, group in enumerate(layer_groups):
        trainable = index >= frozen_groups
        group.requires_grad_(trainable)
        for module in group.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train(trainable and group.training)  # trainable BN follows the model's own mode
