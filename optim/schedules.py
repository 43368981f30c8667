"""The schedules most runs use since the 1cycle: linear warm-up + cosine decay, and warmup–stable–decay (WSD).

Both are torch's schedulers chained by torch's `SequentialLR` (`LinearLR`, `CosineAnnealingLR`, `ConstantLR`). What
these classes add is the one thing a YAML config cannot say: the phase lengths as *fractions* of the run, turned
into steps from `total_steps` (the model passes `trainer.estimated_stepping_batches`, as to the 1cycle), so one
config serves every run length. Like the 1cycle, the peak of each param group is its own `lr` (discriminative
learning rates keep their ratios). Neither cycles beta1/momentum: both keep the optimizer's.
"""
from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, SequentialLR


DEFAULT_DECAY_FRACTION = 0.2  # WSD's cool-down share; the config checks and W&B tags read it for a config without one


def _steps(total_steps: int | None, fraction: float, name: str, scheduler: str) -> int:
    if total_steps is None or total_steps <= 0:
        raise ValueError(f"{scheduler} needs total_steps > 0 (got {total_steps}); the model passes "
                         "trainer.estimated_stepping_batches — check trainer.max_epochs/max_steps and the data size.")
    if not 0 <= fraction < 1:
        raise ValueError(f"model.lr_scheduler.{name} is {fraction}; it is a share of the run's steps, in [0, 1).")
    return round(fraction * total_steps)


class WarmupCosineLR(SequentialLR):
    """Linear warm-up from `lr * warmup_start_factor` to `lr` over `warmup_fraction` of the steps, then cosine
    decay to 0 at the last step (AlgoPerf's NAdamW baseline schedule).

    Args:
        optimizer: its groups' `lr` are the peaks.
        total_steps: optimizer steps in the run.
        warmup_fraction: share of the steps spent warming up (AlgoPerf's baseline: 0.05).
        warmup_start_factor: the first step's lr as a fraction of the peak.
    """

    def __init__(self, optimizer: Optimizer, total_steps: int | None = None, warmup_fraction: float = 0.05,
                 warmup_start_factor: float = 0.01, last_epoch: int = -1):
        warmup = max(1, _steps(total_steps, warmup_fraction, "warmup_fraction", "WarmupCosineLR"))
        self.total_steps, self.warmup_steps = int(total_steps), warmup
        super().__init__(optimizer, [
            LinearLR(optimizer, start_factor=warmup_start_factor, end_factor=1.0, total_iters=warmup),
            CosineAnnealingLR(optimizer, T_max=max(1, self.total_steps - warmup), eta_min=0.0),
        ], milestones=[warmup], last_epoch=last_epoch)


class WarmupStableDecayLR(SequentialLR):
    """Warmup–stable–decay: linear warm-up over `warmup_fraction` of the steps, the peak lr held, then a linear
    decay to 0 over the last `decay_fraction` (Hu et al. 2024, "MiniCPM"; the common 0.1–0.2 decay share).

    `decay_fraction: 0` is warm-up then constant: the schedule of a schedule-free optimizer, which needs no decay
    and no run length (configs/optim/schedule_free_adamw.yaml). A WSD run can be stopped anywhere in its stable
    phase and decayed from a checkpoint; its lr does not depend on the run length until the decay starts.
    """

    def __init__(self, optimizer: Optimizer, total_steps: int | None = None, warmup_fraction: float = 0.05,
                 decay_fraction: float = DEFAULT_DECAY_FRACTION, warmup_start_factor: float = 0.01, last_epoch: int = -1):
        warmup = max(1, _steps(total_steps, warmup_fraction, "warmup_fraction", "WarmupStableDecayLR"))
        decay = _steps(total_steps, decay_fraction, "decay_fraction", "WarmupStableDecayLR")
        if warmup + decay > total_steps:
            raise ValueError(f"model.lr_scheduler: warmup_fraction {warmup_fraction} + decay_fraction {decay_fraction}"
                             f" leave no room in a run of {total_steps} steps; make them sum to less than 1.")
        self.total_steps, self.warmup_steps, self.decay_steps = int(total_steps), warmup, decay
        phases = [LinearLR(optimizer, start_factor=warmup_start_factor, end_factor=1.0, total_iters=warmup),
                  ConstantLR(optimizer, factor=1.0, total_iters=0)]
        milestones = [warmup]
        if decay > 0:
            phases.append(LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=decay))
            milestones.append(self.total_steps - decay)
        super().__init__(optimizer, phases, milestones=milestones, last_epoch=last_epoch)
