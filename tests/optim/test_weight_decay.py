"""AdamW's decoupled weight decay vs Adam's L2, one step with a known gradient, using the shipped configs."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
import yaml

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "optim"


def optimizer_from_config(name: str, params, **overrides) -> torch.optim.Optimizer:
    spec = yaml.safe_load((CONFIGS / name).read_text())["model"]["init_args"]["optimizer"]
    module, cls = spec["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)(params, **{**spec["init_args"], **overrides})


def one_step(name: str, w0: torch.Tensor, grad: torch.Tensor, **overrides) -> tuple[torch.Tensor, dict]:
    w = torch.nn.Parameter(w0.clone().double())
    optimizer = optimizer_from_config(name, [w], **overrides)
    w.grad = grad.clone().double()
    optimizer.step()
    return w.detach(), optimizer.param_groups[0]


W0 = torch.tensor([1.0, -2.0, 0.5, 3.0])
GRAD = torch.tensor([0.1, 0.3, -0.2, 0.0])


def test_adamw_decays_weights_outside_the_adaptive_step():
    w1, group = one_step("adamw.yaml", W0, GRAD)
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    assert group["weight_decay"] == 0.1 and group["lr"] == 3e-3
    # First Adam step: bias-corrected m = g, v = g², so the adaptive step is lr·g/(|g| + eps).
    expected = W0.double() * (1 - lr * wd) - lr * GRAD.double() / (GRAD.double().abs() + eps)
    torch.testing.assert_close(w1, expected, rtol=0, atol=1e-12)


def test_adam_l2_adds_decay_to_the_gradient_before_the_adaptive_step():
    w1, group = one_step("adam_l2.yaml", W0, GRAD)
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    g = GRAD.double() + wd * W0.double()
    torch.testing.assert_close(w1, W0.double() - lr * g / (g.abs() + eps), rtol=0, atol=1e-12)


def test_l2_decay_is_normalised_away_by_adam_while_adamw_decay_is_not():
    """The blog's point: with L2 the decay term is divided by sqrt(v), so a weight with no gradient moves by lr
    whatever the decay; AdamW shrinks it by exactly lr·wd·w. Same lr and wd for both, only the mode differs."""
    settings = dict(lr=1e-3, weight_decay=0.1)
    w_adamw, _ = one_step("adamw.yaml", W0, GRAD, **settings)
    w_l2, _ = one_step("adam_l2.yaml", W0, GRAD, **settings)
    no_grad = 3  # GRAD[3] == 0
    assert W0[no_grad] - w_adamw[no_grad] == pytest.approx(1e-3 * 0.1 * 3.0, rel=1e-9)
    assert W0[no_grad] - w_l2[no_grad] == pytest.approx(1e-3, rel=1e-6)  # sign step of size lr: decay scale lost
    # Where there is a gradient, the two differ by exactly the decoupled decay minus L2's effect on the step.
    g_l2 = GRAD.double() + 0.1 * W0.double()
    difference = (w_adamw - w_l2)
    expected = -1e-3 * 0.1 * W0.double() - 1e-3 * GRAD.double() / (GRAD.double().abs() + 1e-8) \
        + 1e-3 * g_l2 / (g_l2.abs() + 1e-8)
    torch.testing.assert_close(difference, expected, rtol=0, atol=1e-12)


def test_amsgrad_config_is_adamw_with_amsgrad():
    optimizer = optimizer_from_config("amsgrad.yaml", [torch.nn.Parameter(torch.zeros(1))])
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["amsgrad"] is True


def test_sgd_config_has_momentum_for_the_1cycle_to_cycle():
    optimizer = optimizer_from_config("sgd.yaml", [torch.nn.Parameter(torch.zeros(1))])
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["momentum"] > 0
