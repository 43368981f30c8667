"""Schedules, parameter groups and fine-tuning stages that torch lacks; optimizers are `torch.optim` classes."""
from optim.finetune_stages import FinetuneStage, as_stages, set_trainable, stage_at_epoch
from optim.one_cycle import OneCycleLR
from optim.param_groups import apply_lr_multipliers, param_groups
from optim.rnn_one_cycle import RNNOneCycleLR

__all__ = ["FinetuneStage", "OneCycleLR", "RNNOneCycleLR", "apply_lr_multipliers", "as_stages", "param_groups", "set_trainable",
           "stage_at_epoch"]
