"""Parameter groups: discriminative learning rates per layer group, and optional no-decay for norms/biases.

Groups are plain dicts that any `torch.optim` optimizer accepts, so the optimizer class, its `lr` and its
`weight_decay` stay in the YAML config. A group records its `lr_multiplier`; `apply_lr_multipliers` turns the
optimizer's `lr` into each group's own, and `optim.OneCycleLR` (max_lr=None) then peaks each group at it —
fastai's discriminative learning rates (Stanford Cars stage 2: [lr/9, lr/3, lr]) without a custom optimizer.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torch.optim import Optimizer

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def _split_decay(module: nn.Module, include_frozen: bool) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Return (decayed, not_decayed): norm-layer parameters and every bias are not decayed."""
    decayed, not_decayed = [], []
    for submodule in module.modules():
        is_norm = isinstance(submodule, _NORM_TYPES)
        for name, param in submodule.named_parameters(recurse=False):
            if param.requires_grad or include_frozen:
                (not_decayed if is_norm or name == "bias" else decayed).append(param)
    return decayed, not_decayed


def param_groups(
    layer_groups: nn.Module | Sequence[nn.Module],
    lr_multipliers: Sequence[float] | None = None,
    decay_norm_and_bias: bool = True,
    include_frozen: bool = False,
) -> list[dict]:
    """One param group per layer group (two when norms/biases are excluded from decay).

    `lr_multipliers[i]` scales the optimizer's lr for `layer_groups[i]` (default 1). With
    `decay_norm_and_bias=False`, norm weights and all biases get `weight_decay=0`; the seed decays everything,
    so the default is True. Frozen parameters are left out and empty groups dropped, unless `include_frozen`:
    fine-tuning stages keep every group (a frozen one at lr 0; optimizers skip parameters without gradient) so
    the param groups — and their names in the lr monitor — are the same in every stage.
    """
    groups = [layer_groups] if isinstance(layer_groups, nn.Module) else list(layer_groups)
    multipliers = [1.0] * len(groups) if lr_multipliers is None else [float(m) for m in lr_multipliers]
    if len(multipliers) != len(groups):
        raise ValueError(
            f"lr_multipliers has {len(multipliers)} values for {len(groups)} layer groups; give one value per group."
        )
    result: list[dict] = []
    for module, multiplier in zip(groups, multipliers):
        if decay_norm_and_bias:
            buckets = [([p for p in module.parameters() if p.requires_grad or include_frozen], {})]
        else:
            decayed, not_decayed = _split_decay(module, include_frozen)
            buckets = [(decayed, {}), (not_decayed, {"weight_decay": 0.0})]
        for params, overrides in buckets:
            if params:
                result.append({"params": params, "lr_multiplier": multiplier, **overrides})
    return result


def apply_lr_multipliers(optimizer: Optimizer, lr: float | None = None) -> Optimizer:
    """Set each group's lr to `lr` (default: the lr the optimizer gave the group) times its `lr_multiplier`.

    Call once, right after building the optimizer and before the scheduler reads the peak lrs. The default reads
    each group's own lr, not `defaults["lr"]`: an optimizer with two kinds of group (Muon and AdamW,
    `optim/muon.py`) gives them different lrs.
    """
    for group in optimizer.param_groups:
        group["lr"] = (group["lr"] if lr is None else lr) * group.get("lr_multiplier", 1.0)
    return optimizer
