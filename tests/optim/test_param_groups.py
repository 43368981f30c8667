from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_modules.nets import WideResNet
from optim import apply_lr_multipliers, param_groups


def small_net() -> WideResNet:
    return WideResNet(blocks_per_group=1, widen_factor=1)


def ids(params) -> set[int]:
    return {id(p) for p in params}


def test_default_is_one_group_with_every_parameter_decayed():
    net = small_net()
    groups = param_groups(net)
    assert len(groups) == 1 and "weight_decay" not in groups[0]  # the optimizer's weight_decay applies
    assert ids(groups[0]["params"]) == ids(net.parameters())


def test_norm_and_bias_can_be_excluded_from_decay():
    net = small_net()
    decayed, not_decayed = param_groups(net, decay_norm_and_bias=False)
    assert not_decayed["weight_decay"] == 0.0 and "weight_decay" not in decayed
    norm_and_bias = {id(p) for m in net.modules() for n, p in m.named_parameters(recurse=False)
                     if isinstance(m, nn.BatchNorm2d) or n == "bias"}
    assert ids(not_decayed["params"]) == norm_and_bias
    assert ids(decayed["params"]) | ids(not_decayed["params"]) == ids(net.parameters())
    assert not ids(decayed["params"]) & ids(not_decayed["params"])
    assert all(p.dim() > 1 for p in decayed["params"])  # conv and linear weights only


def test_lr_multipliers_give_discriminative_learning_rates():
    body, middle, head = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 2)
    groups = param_groups([body, middle, head], lr_multipliers=[1 / 9, 1 / 3, 1])
    optimizer = apply_lr_multipliers(torch.optim.Adam(groups, lr=3e-3, weight_decay=1e-3))
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([3e-3 / 9, 1e-3, 3e-3])
    assert all(g["weight_decay"] == 1e-3 for g in optimizer.param_groups)


def test_frozen_parameters_are_left_out():
    body, head = nn.Linear(3, 3), nn.Linear(3, 2)
    body.requires_grad_(False)
    groups = param_groups([body, head])
    assert len(groups) == 1 and ids(groups[0]["params"]) == ids(head.parameters())


def test_wrong_number_of_multipliers_is_a_clear_error():
    with pytest.raises(ValueError, match="lr_multipliers has 1 values for 2 layer groups"):
        param_groups([nn.Linear(1, 1), nn.Linear(1, 1)], lr_multipliers=[1.0])
