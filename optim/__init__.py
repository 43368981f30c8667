"""Schedules and parameter groups that torch lacks; optimizers themselves are `torch.optim` classes."""
from optim.one_cycle import OneCycleLR
from optim.param_groups import apply_lr_multipliers, param_groups

__all__ = ["OneCycleLR", "apply_lr_multipliers", "param_groups"]
