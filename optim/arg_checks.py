"""Checks of optimizer and 1cycle values, run on the parsed config before anything is built or written.

Why here and not left to torch: torch rejects a bad value only when the model builds its optimizer inside
`trainer.fit`, after the run folders exist, and its message ("Invalid learning rate: -0.1") names no config
field. These checks name the field as the user writes it and say what to set instead. They take plain
mappings (the config's `init_args`), so they need no Lightning and no jsonargparse.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from optim.schedules import DEFAULT_DECAY_FRACTION


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _in_unit_interval(value: Any) -> bool:
    number = _number(value)
    return number is not None and 0.0 <= number < 1.0


def _betas_problem(betas: Any, field: str) -> str | None:
    if betas is None:
        return None
    if not isinstance(betas, Sequence) or isinstance(betas, str) or len(betas) != 2:
        return f"{field} is {betas}; give two values, e.g. [0.95, 0.99] (the seed's beta1, beta2)."
    for index, beta in enumerate(betas):
        if not _in_unit_interval(beta):
            return f"{field}[{index}] is {beta}; Adam's betas must lie in [0, 1): use e.g. [0.95, 0.99] (the seed's values)."
    return None


def optimizer_arg_problem(init_args: Mapping[str, Any], field: str) -> str | None:
    """What is wrong with an optimizer's `init_args` (one sentence naming `field`), or None.

    `field` is the config path of the init_args, e.g. `model.init_args.optimizer.init_args`.
    """
    for name in ("lr", "adamw_lr"):  # adamw_lr: Muon's AdamW side (optim/muon.py)
        lr = init_args.get(name)
        if lr is not None and not (_number(lr) or 0) > 0:
            return f"{field}.{name} is {lr}; a learning rate must be > 0: set it to a positive value (the seed's AdamW: 3e-3)."
    for name in ("weight_decay", "adamw_weight_decay"):
        weight_decay = init_args.get(name)
        if weight_decay is not None and not (_number(weight_decay) or 0) >= 0:
            return (f"{field}.{name} is {weight_decay}; weight decay must be >= 0: set it to 0 for none "
                    "(the seed's AdamW: 0.1).")
    for name in ("betas", "adamw_betas"):
        if problem := _betas_problem(init_args.get(name), f"{field}.{name}"):
            return problem
    momentum = init_args.get("momentum")
    if momentum is not None and not _in_unit_interval(momentum):
        return f"{field}.momentum is {momentum}; momentum must lie in [0, 1): use e.g. 0.9."
    eps = init_args.get("eps")
    if eps is not None and not (_number(eps) or 0) >= 0:
        return f"{field}.eps is {eps}; it must be >= 0: use e.g. 1e-8."
    return None


def one_cycle_arg_problem(init_args: Mapping[str, Any], field: str) -> str | None:
    """What is wrong with a scheduler's `init_args` (1cycle, warm-up + cosine, WSD; one sentence naming `field`), or None."""
    max_lr = init_args.get("max_lr")
    values = max_lr if isinstance(max_lr, Sequence) and not isinstance(max_lr, str) else [max_lr]
    if max_lr is not None and not all((_number(v) or 0) > 0 for v in values):
        return f"{field}.max_lr is {max_lr}; the peak learning rate must be > 0: set it, or leave it out to use the optimizer's lr."
    pct_start = init_args.get("pct_start")
    if pct_start is not None and not 0 < (_number(pct_start) or 0) < 1:
        return f"{field}.pct_start is {pct_start}; it is the warm-up's share of the steps, in (0, 1): e.g. 0.4625 (the seed)."
    for name in ("div_factor", "final_div_factor"):
        value = init_args.get(name)
        if value is not None and not (_number(value) or 0) > 0:
            return f"{field}.{name} is {value}; it divides the lr and must be > 0: e.g. 10 (div) and 100 (final), the seed's."
    for name in ("warmup_fraction", "decay_fraction"):  # optim/schedules.py
        value = _number(init_args.get(name, 0))
        if value is None or not 0 <= value < 1:
            return f"{field}.{name} is {init_args.get(name)}; it is a share of the run's steps, in [0, 1): e.g. 0.05 (warm-up), 0.2 (decay)."
    start = init_args.get("warmup_start_factor")
    if start is not None and not 0 < (_number(start) or 0) <= 1:
        return f"{field}.warmup_start_factor is {start}; it is the first lr as a share of the peak, in (0, 1]: e.g. 0.01."
    base, peak = init_args.get("base_momentum"), init_args.get("max_momentum")
    for name, value in (("base_momentum", base), ("max_momentum", peak)):
        if value is not None and not _in_unit_interval(value):
            return f"{field}.{name} is {value}; beta1/momentum must lie in [0, 1): the seed cycles 0.95 → 0.85."
    return None


DECAYING_SCHEDULES = ("OneCycleLR", "RNNOneCycleLR", "WarmupCosineLR")


def combination_problem(optimizer: Mapping[str, Any] | None, lr_scheduler: Mapping[str, Any] | None,
                        field: str = "model.init_args") -> str | None:
    """An optimizer and schedule that make no sense together (one sentence), or None: a schedule-free optimizer
    under a schedule that decays the lr, which is what schedule-free replaces."""
    optimizer_name = str((optimizer or {}).get("class_path", "")).rsplit(".", 1)[-1]
    scheduler_name = str((lr_scheduler or {}).get("class_path", "")).rsplit(".", 1)[-1]
    decay = ((lr_scheduler or {}).get("init_args") or {}).get("decay_fraction", DEFAULT_DECAY_FRACTION)
    decays = scheduler_name in DECAYING_SCHEDULES or (scheduler_name == "WarmupStableDecayLR" and (_number(decay) or 0) > 0)
    if "ScheduleFree" in optimizer_name and decays:
        return (f"{field}.lr_scheduler is {scheduler_name}, which decays the lr, but {optimizer_name} is schedule-free "
                "(it averages its iterates instead): compose configs/optim/schedule_free_adamw.yaml after the schedule "
                "config, or drop the schedule config.")
    return None
