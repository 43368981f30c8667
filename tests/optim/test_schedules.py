"""Warm-up + cosine and WSD (optim/schedules.py): torch's schedulers chained, phase lengths as shares of the run."""
from __future__ import annotations

import math

import pytest
import torch

from optim import WarmupCosineLR, WarmupStableDecayLR


def lrs(scheduler_class, total: int, lr: float = 1.0, **kwargs) -> list[float]:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = scheduler_class(optimizer, total_steps=total, **kwargs)
    seen = []
    for _ in range(total):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_warmup_cosine_warms_up_linearly_then_follows_the_cosine_to_zero():
    seen = lrs(WarmupCosineLR, 100, lr=2.0, warmup_fraction=0.1, warmup_start_factor=0.01)
    assert seen[0] == pytest.approx(0.02)
    assert seen[5] == pytest.approx(2.0 * (0.01 + 0.99 * 5 / 10))
    assert seen[10] == pytest.approx(2.0)  # the peak at the end of the warm-up
    for step in (30, 60, 99):
        assert seen[step] == pytest.approx(2.0 * (1 + math.cos(math.pi * (step - 10) / 90)) / 2, abs=1e-9)
    assert max(seen) == pytest.approx(2.0)


def test_wsd_holds_the_peak_then_decays_linearly_to_zero_over_its_share():
    seen = lrs(WarmupStableDecayLR, 100, lr=1.0, warmup_fraction=0.05, decay_fraction=0.2)
    assert seen[:5] == pytest.approx([0.01 + 0.99 * s / 5 for s in range(5)])
    assert seen[5:80] == pytest.approx([1.0] * 75)
    assert seen[80:] == pytest.approx([1 - s / 20 for s in range(20)])


def test_wsd_without_decay_is_warm_up_then_constant_the_schedule_free_schedule():
    seen = lrs(WarmupStableDecayLR, 50, lr=0.5, warmup_fraction=0.1, decay_fraction=0.0)
    assert seen[5:] == pytest.approx([0.5] * 45)


def test_each_group_peaks_at_its_own_lr():
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in (1.0, 0.1)]
    optimizer = torch.optim.AdamW(groups)
    scheduler = WarmupCosineLR(optimizer, total_steps=40, warmup_fraction=0.25)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1.0, 0.1])


@pytest.mark.parametrize("scheduler_class", [WarmupCosineLR, WarmupStableDecayLR])
def test_a_rebuilt_scheduler_with_the_saved_state_continues_the_same_lrs(scheduler_class):
    """What resuming does: fresh optimizer and scheduler, then their state dicts loaded."""
    reference = lrs(scheduler_class, 60)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = scheduler_class(optimizer, total_steps=60)
    for _ in range(25):
        optimizer.step()
        scheduler.step()
    saved = (optimizer.state_dict(), scheduler.state_dict())
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = scheduler_class(optimizer, total_steps=60)
    optimizer.load_state_dict(saved[0])
    scheduler.load_state_dict(saved[1])
    continued = []
    for _ in range(35):
        continued.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert continued == pytest.approx(reference[25:])


def test_shares_that_leave_no_room_are_refused_naming_the_fields():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="warmup_fraction 0.5 \\+ decay_fraction 0.6"):
        WarmupStableDecayLR(optimizer, total_steps=10, warmup_fraction=0.5, decay_fraction=0.6)
    with pytest.raises(ValueError, match="total_steps > 0"):
        WarmupCosineLR(optimizer, total_steps=0)
