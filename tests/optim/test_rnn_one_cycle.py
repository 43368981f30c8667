"""The seed's four-phase RNN 1cycle, checked against values computed here from the phase description."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from optim import RNNOneCycleLR

LR, TOTAL = 5e-3, 1201  # progress = step / 1200: phase boundaries at steps 100, 600, 1100


def expected(step: int) -> tuple[float, float]:
    """90 epochs: 7.5 warm-up, 37.5 plateau, 37.5 decay, 7.5 cosine; beta1 0.8 → 0.7 → 0.7 → 0.8 → 0.8."""
    epoch = 90 * step / (TOTAL - 1)
    if epoch <= 82.5:
        lr = np.interp(epoch, [0, 7.5, 45, 82.5], [LR / 10, LR, LR, LR / 10])
    else:
        lr = LR / 10 * (1 + math.cos(math.pi * (epoch - 82.5) / 7.5)) / 2
    beta1 = np.interp(epoch, [0, 7.5, 45, 82.5, 90], [0.8, 0.7, 0.7, 0.8, 0.8])
    return float(lr), float(beta1)


def schedule(optimizer_class=torch.optim.Adam, **kwargs):
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = optimizer_class(params, lr=LR, **kwargs)
    return optimizer, RNNOneCycleLR(optimizer, TOTAL)


def test_every_step_matches_the_four_phases():
    optimizer, scheduler = schedule(betas=(0.8, 0.99))
    for step in range(TOTAL):
        group = optimizer.param_groups[0]
        want_lr, want_beta = expected(step)
        assert group["lr"] == pytest.approx(want_lr, rel=1e-9, abs=1e-15), f"lr at step {step}"
        assert group["betas"][0] == pytest.approx(want_beta, rel=1e-9), f"beta1 at step {step}"
        assert group["betas"][1] == 0.99
        optimizer.step()
        scheduler.step()


def test_anchor_values():
    optimizer, scheduler = schedule()
    seen = []
    for _ in range(TOTAL):
        seen.append((optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["betas"][0]))
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx((LR / 10, 0.8))
    assert seen[100] == pytest.approx((LR, 0.7)) and seen[600] == pytest.approx((LR, 0.7))
    assert seen[1100] == pytest.approx((LR / 10, 0.8))
    assert seen[1150][0] == pytest.approx(LR / 20)  # cosine midpoint
    assert seen[-1][0] == pytest.approx(0.0, abs=1e-12)


def test_a_rescaled_batch_lr_does_not_leak_into_the_next_step():
    optimizer, scheduler = schedule()
    for _ in range(50):
        optimizer.step()
        scheduler.step()
    optimizer.param_groups[0]["lr"] *= 35 / 70  # what the language model does for a short sequence
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected(51)[0], rel=1e-9)


def test_sgd_momentum_is_cycled_and_groups_keep_their_ratios():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": params[:1], "lr": 1.0}, {"params": params[1:], "lr": 0.5}], momentum=0.9)
    RNNOneCycleLR(optimizer, 10)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1, 0.05])
    assert optimizer.param_groups[0]["momentum"] == pytest.approx(0.8)


def test_state_dict_round_trip_continues_the_schedule():
    optimizer, scheduler = schedule()
    for _ in range(300):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    optimizer2, scheduler2 = schedule()
    scheduler2.load_state_dict(state)
    optimizer2.load_state_dict(optimizer.state_dict())
    for _ in range(5):
        optimizer.step(), scheduler.step(), optimizer2.step(), scheduler2.step()
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(total_steps=0), "total_steps > 0"),
    (dict(total_steps=10, phases=(0.5, 0.5, 0.5, 0.0)), "summing to 1"),
    (dict(total_steps=10, div_factor=0.5), "div_factor"),
])
def test_bad_arguments_are_named(kwargs, message):
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    with pytest.raises(ValueError, match=message):
        RNNOneCycleLR(optimizer, **kwargs)
