"""The seed's 1cycle for RNN language models: four phases, with a long plateau at the peak learning rate.

sgugger/Adam-experiments `train_rnn.py` (90 epochs): 7.5 epochs linear lr/10 → lr with beta1 0.8 → 0.7; 37.5
epochs constant lr, beta1 0.7; 37.5 epochs linear lr → lr/10, beta1 0.7 → 0.8; 7.5 epochs cosine lr/10 → 0,
beta1 0.8. Expressed as fractions of the total steps (1/12, 5/12, 5/12, 1/12) so any epoch count scales it.
torch's `OneCycleLR` has no plateau phase, hence this class. The lr is closed-form in the step number (never
derived from the group's current lr), so a model may rescale a batch's lr (AWD-LSTM's seq_len/bptt) without
the change leaking into later steps.
"""
from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def rnn_one_cycle_factors(progress: float, phases: tuple[float, float, float, float], div_factor: float,
                          low_momentum: float, high_momentum: float) -> tuple[float, float]:
    """(lr as a fraction of the peak, beta1) at `progress` ∈ [0, 1] of the run."""
    warmup, plateau, decay, _ = phases
    low = 1.0 / div_factor
    if progress < warmup:
        t = progress / warmup
        return low + (1 - low) * t, high_momentum + (low_momentum - high_momentum) * t
    if progress < warmup + plateau:
        return 1.0, low_momentum
    if progress < warmup + plateau + decay:
        t = (progress - warmup - plateau) / decay
        return 1 + (low - 1) * t, low_momentum + (high_momentum - low_momentum) * t
    t = min((progress - warmup - plateau - decay) / (1 - warmup - plateau - decay), 1.0)
    return low * (1 + math.cos(math.pi * t)) / 2, high_momentum


class RNNOneCycleLR(LRScheduler):
    """Four-phase 1cycle stepped every batch; peak lr = each param group's lr (as `optim.OneCycleLR`).

    Args:
        optimizer: its groups' `lr` are the peaks (discriminative groups keep their ratios).
        total_steps: optimizer steps in the run (the model passes `trainer.estimated_stepping_batches`).
        phases: fractions of the steps for warm-up, plateau, decay and final annealing (sum 1).
        div_factor: the warm-up starts, and the decay ends, at lr / div_factor.
        low_momentum, high_momentum: beta1 (or SGD momentum) at the peak and at both ends.
    """

    def __init__(self, optimizer: Optimizer, total_steps: int | None = None,
                 phases: tuple[float, float, float, float] = (1 / 12, 5 / 12, 5 / 12, 1 / 12),
                 div_factor: float = 10.0, low_momentum: float = 0.7, high_momentum: float = 0.8,
                 last_epoch: int = -1):
        if total_steps is None or total_steps <= 0:
            raise ValueError(f"RNNOneCycleLR needs total_steps > 0 (got {total_steps}); the model passes "
                             "trainer.estimated_stepping_batches — check trainer.max_epochs/max_steps and the data.")
        if len(phases) != 4 or min(phases) < 0 or abs(sum(phases) - 1) > 1e-6:
            raise ValueError(f"model.lr_scheduler.phases is {phases}; give 4 non-negative fractions summing to 1.")
        if div_factor < 1:
            raise ValueError(f"model.lr_scheduler.div_factor is {div_factor}; use a value ≥ 1 (the seed: 10).")
        self.total_steps, self.phases, self.div_factor = int(total_steps), tuple(phases), div_factor
        self.low_momentum, self.high_momentum = low_momentum, high_momentum
        for group in optimizer.param_groups:
            group.setdefault("max_lr", group["lr"])  # on resume the recorded peak wins over a scheduled lr
        self._beta_key = "betas" if "betas" in optimizer.defaults else "momentum" if "momentum" in optimizer.defaults else None
        super().__init__(optimizer, last_epoch)

    def _factors(self) -> tuple[float, float]:
        progress = min(self.last_epoch, self.total_steps - 1) / max(self.total_steps - 1, 1)
        return rnn_one_cycle_factors(progress, self.phases, self.div_factor, self.low_momentum, self.high_momentum)

    def get_lr(self) -> list[float]:
        lr_factor, beta1 = self._factors()
        for group in self.optimizer.param_groups:
            if self._beta_key == "betas":
                group["betas"] = (beta1, *group["betas"][1:])
            elif self._beta_key == "momentum":
                group["momentum"] = beta1
        return [group["max_lr"] * lr_factor for group in self.optimizer.param_groups]
