"""The seed's 1cycle: lr lr/10 → lr → lr/10 → lr/1000 with beta1 0.95 → 0.85 → 0.95, all linear."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from optim import OneCycleLR, apply_lr_multipliers, param_groups

SEED_SCHEDULE = dict(three_phase=True, anneal_strategy="linear", pct_start=0.4625, div_factor=10,
                     final_div_factor=100, base_momentum=0.85, max_momentum=0.95)


def seed_formula(step: int, total: int, lr: float) -> tuple[float, float]:
    """The schedule as the issue states it, written independently of torch: piecewise linear between anchors.

    Phase ends follow torch's step convention: phase 1 ends at step 0.4625·T − 1, phase 2 at 0.925·T − 2,
    phase 3 at T − 1 (the last step).
    """
    up_end, down_end, last = 0.4625 * total - 1, 0.925 * total - 2, total - 1
    lr_anchor = np.interp(step, [0, up_end, down_end, last], [lr / 10, lr, lr / 10, lr / 1000])
    beta_anchor = np.interp(step, [0, up_end, down_end, last], [0.95, 0.85, 0.95, 0.95])
    return float(lr_anchor), float(beta_anchor)


def trajectory(optimizer: torch.optim.Optimizer, scheduler, steps: int) -> list[tuple[float, float]]:
    values = []
    for _ in range(steps):
        group = optimizer.param_groups[0]
        values.append((group["lr"], group["betas"][0]))
        optimizer.step()
        scheduler.step()
    return values


def test_scheduler_alone_follows_seed_formula():
    total, lr = 160, 3e-3  # 0.4625·160 = 74: the peak falls on step 73 exactly
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))], lr=lr, betas=(0.95, 0.99))
    scheduler = OneCycleLR(optimizer, total_steps=total, **SEED_SCHEDULE)
    values = trajectory(optimizer, scheduler, total)
    for step, (got_lr, got_beta) in enumerate(values):
        want_lr, want_beta = seed_formula(step, total, lr)
        assert got_lr == pytest.approx(want_lr, rel=1e-9, abs=1e-15), f"lr at step {step}"
        assert got_beta == pytest.approx(want_beta, rel=1e-9), f"beta1 at step {step}"
    assert values[0] == pytest.approx((lr / 10, 0.95))
    assert values[73] == pytest.approx((lr, 0.85)) and max(v[0] for v in values) == pytest.approx(lr)
    assert values[146] == pytest.approx((lr / 10, 0.95))  # trough: end of the second phase
    assert values[-1] == pytest.approx((lr / 1000, 0.95))


def test_max_lr_defaults_to_each_group_lr_so_discriminative_groups_peak_at_their_own_lr():
    body, head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    groups = param_groups([body, head], lr_multipliers=[1 / 3, 1.0])
    optimizer = apply_lr_multipliers(torch.optim.Adam(groups, lr=3e-3))
    scheduler = OneCycleLR(optimizer, total_steps=160, **SEED_SCHEDULE)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-4, 3e-4])  # each peak / 10
    seen = []
    for _ in range(160):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert np.max(seen, axis=0) == pytest.approx([1e-3, 3e-3])
    assert seen[-1] == pytest.approx([1e-6, 3e-6])


def test_explicit_max_lr_still_wins():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0, momentum=0.9)
    OneCycleLR(optimizer, total_steps=10, max_lr=0.5, div_factor=10)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


@pytest.mark.parametrize("total_steps", [None, 0])
def test_missing_total_steps_is_a_clear_error(total_steps):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="total_steps"):
        OneCycleLR(optimizer, total_steps=total_steps)
