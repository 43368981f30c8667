"""Fine-tuning stages as plain data and plain torch: epochs → stage, lr multipliers, freezing with BN eval."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from optim import FinetuneStage, as_stages, param_groups, set_trainable, stage_at_epoch

SEED_STAGES = [FinetuneStage(epochs=20, lr=1e-2, frozen_groups=2),
               FinetuneStage(epochs=40, lr=3e-3, lr_multipliers=[1 / 9, 1 / 3, 1.0])]


def groups() -> list[nn.Module]:
    return [nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)),
            nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4), nn.Linear(4, 2))]


def test_epochs_map_to_stages():
    assert [stage_at_epoch(SEED_STAGES, e) for e in (0, 19, 20, 59)] == [0, 0, 1, 1]
    assert stage_at_epoch(SEED_STAGES, 75) == 1  # past the end: still the last stage


def test_frozen_groups_get_lr_multiplier_zero():
    assert SEED_STAGES[0].group_multipliers(3) == [0.0, 0.0, 1.0]
    assert SEED_STAGES[1].group_multipliers(3) == pytest.approx([1 / 9, 1 / 3, 1.0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=0, lr=1e-2), "at least 1 epoch"),
    (dict(epochs=1, lr=-1.0), "positive learning rate"),
    (dict(epochs=1, lr=1e-2, frozen_groups=-1), "frozen_groups is -1"),
])
def test_bad_stage_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FinetuneStage(**kwargs)


def test_multiplier_count_and_all_frozen_are_rejected():
    with pytest.raises(ValueError, match="2 values for 3 layer groups"):
        FinetuneStage(epochs=1, lr=1.0, lr_multipliers=[1.0, 1.0]).group_multipliers(3)
    with pytest.raises(ValueError, match="leave at least the last one trainable"):
        FinetuneStage(epochs=1, lr=1.0, frozen_groups=3).group_multipliers(3)


def test_stages_from_dicts_and_empty_list():
    assert as_stages([{"epochs": 2, "lr": 0.1}]) == [FinetuneStage(epochs=2, lr=0.1)]
    assert as_stages(None) is None
    with pytest.raises(ValueError, match="empty list"):
        as_stages([])


def test_set_trainable_freezes_parameters_and_puts_frozen_batchnorm_in_eval():
    layer_groups = groups()
    set_trainable(layer_groups, frozen_groups=2)
    assert [all(not p.requires_grad for p in g.parameters()) for g in layer_groups] == [True, True, False]
    assert [g[1 if i < 2 else 1].training for i, g in enumerate(layer_groups)] == [False, False, True]
    bn = layer_groups[0][1]
    before = bn.running_mean.clone()
    layer_groups[0](torch.randn(2, 3, 5, 5))
    assert torch.equal(bn.running_mean, before)  # eval mode: statistics unchanged
    set_trainable(layer_groups, frozen_groups=0)
    assert all(p.requires_grad for g in layer_groups for p in g.parameters()) and bn.training


def test_unfreezing_a_model_in_eval_mode_keeps_batchnorm_in_eval():
    layer_groups = groups()
    for g in layer_groups:
        g.eval()
    set_trainable(layer_groups, frozen_groups=0)
    assert not layer_groups[0][1].training


def test_frozen_parameters_stay_in_their_groups_when_asked():
    layer_groups = groups()
    set_trainable(layer_groups, frozen_groups=2)
    assert len(param_groups(layer_groups, [0.0, 0.0, 1.0])) == 1
    kept = param_groups(layer_groups, [0.0, 0.0, 1.0], include_frozen=True)
    assert [g["lr_multiplier"] for g in kept] == [0.0, 0.0, 1.0]
    assert sum(len(g["params"]) for g in kept) == sum(1 for g in layer_groups for _ in g.parameters())
