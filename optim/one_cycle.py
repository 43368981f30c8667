"""The seed's 1cycle, expressed with torch's `OneCycleLR`.

The only thing torch does not express is where the peak learning rate comes from: torch requires `max_lr`,
which would force every config to repeat the optimizer's `lr`. `OneCycleLR` here defaults `max_lr` to each
param group's own `lr`, so the learning rate lives in one place (the optimizer config, e.g.
`configs/optim/adam_l2.yaml` sets lr 1e-3) and discriminative learning rates per param group peak at their
own values. Everything else — phases, momentum (Adam's beta1) cycling, linear annealing — is torch's code.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.optim import Optimizer


class OneCycleLR(torch.optim.lr_scheduler.OneCycleLR):
    """`torch.optim.lr_scheduler.OneCycleLR` whose `max_lr` defaults to the optimizer's per-group `lr`.

    Seed values (configs/cifar.yaml): three_phase=True, anneal_strategy="linear", div_factor=10,
    final_div_factor=100, pct_start=0.4625, base_momentum=0.85, max_momentum=0.95 — lr/10 → lr (beta1 0.95 →
    0.85) over 46.25% of steps, back to lr/10 (beta1 → 0.95) over 46.25%, then lr/10 → lr/1000 over the last 7.5%.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int | None = None,
        max_lr: float | Sequence[float] | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ):
        if total_steps is None or total_steps <= 0:
            raise ValueError(
                f"OneCycleLR needs total_steps > 0 (got {total_steps}); the model passes "
                "trainer.estimated_stepping_batches — check trainer.max_epochs/max_steps and the data size."
            )
        if max_lr is None:
            # On resume the groups already carry the peak torch recorded; never read back a scheduled lr.
            max_lr = [group.get("max_lr", group["lr"]) for group in optimizer.param_groups]
        super().__init__(
            optimizer,
            max_lr=max_lr,
            total_steps=int(total_steps),
            pct_start=pct_start,
            anneal_strategy=anneal_strategy,
            cycle_momentum=cycle_momentum,
            base_momentum=base_momentum,
            max_momentum=max_momentum,
            div_factor=div_factor,
            final_div_factor=final_div_factor,
            three_phase=three_phase,
            last_epoch=last_epoch,
        )
