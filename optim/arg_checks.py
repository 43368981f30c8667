"""Checks of optimizer and 1cycle values, run on the parsed config before anything is built or written.

Why here and not left to torch: torch rejects a bad value only when the model builds its optimizer inside
`trainer.fit`, after the run folders exist, and its message ("Invalid learning rate: -0.1") names no config
field. These checks name the field as the user writes it and say what to set instead. They take plain
mappings (the config's `init_args`), so they need no Lightning and no jsonargparse.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _in_unit_interval(value: Any) -> bool:
    number = _number(value)
    return number is not None and 0.0 <= number < 1.0


def optimizer_arg_problem(init_args: Mapping[str, Any], field: str) -> str | None:
    """What is wrong with an optimizer's `init_args` (one sentence naming `field`), or None.

    `field` is the config path of the init_args, e.g. `model.init_args.optimizer.init_args`.
    """
    lr = init_args.get("lr")
    if lr is not None and not (_number(lr) or 0) > 0:
        return f"{field}.lr is {lr}; a learning rate must be > 0: set it to a positive value (the seed's AdamW: 3e-3)."
    weight_decay = init_args.get("weight_decay")
    if weight_decay is not None and not (_number(weight_decay) or 0) >= 0:
        return (f"{field}.weight_decay is {weight_decay}; weight decay must be >= 0: set it to 0 for none "
                "(the seed's AdamW: 0.1).")
    betas = init_args.get("betas")
    if betas is not None:
        if not isinstance(betas, Sequence) or isinstance(betas, str) or len(betas) != 2:
            return f"{field}.betas is {betas}; give two values, e.g. [0.95, 0.99] (the seed's beta1, beta2)."
        for index, beta in enumerate(betas):
            if not _in_unit_interval(beta):
                return (f"{field}.betas[{index}] is {beta}; Adam's betas must lie in [0, 1): use e.g. "
                        "[0.95, 0.99] (the seed's values).")
    momentum = init_args.get("momentum")
    if momentum is not None and not _in_unit_interval(momentum):
        return f"{field}.momentum is {momentum}; momentum must lie in [0, 1): use e.g. 0.9."
    eps = init_args.get("eps")
    if eps is not None and not (_number(eps) or 0) >= 0:
        return f"{field}.eps is {eps}; it must be >= 0: use e.g. 1e-8."
    return None


def one_cycle_arg_problem(init_args: Mapping[str, Any], field: str) -> str | None:
    """What is wrong with a 1cycle scheduler's `init_args` (one sentence naming `field`), or None."""
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
    base, peak = init_args.get("base_momentum"), init_args.get("max_momentum")
    for name, value in (("base_momentum", base), ("max_momentum", peak)):
        if value is not None and not _in_unit_interval(value):
            return f"{field}.{name} is {value}; beta1/momentum must lie in [0, 1): the seed cycles 0.95 → 0.85."
    return None
