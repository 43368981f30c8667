"""Schedules, parameter groups and fine-tuning stages that torch lacks; optimizers are `torch.optim` classes."""
from optim.muon import MuonWithAuxAdamW, build_optimizer, describe_split, hidden_matrix_names, split_hidden_matrices
from optim.finetune_stages import FinetuneStage, as_stages, set_trainable, stage_at_epoch
from optim.one_cycle import OneCycleLR
from optim.param_groups import apply_lr_multipliers, param_groups
from optim.rnn_one_cycle import RNNOneCycleLR
from optim.schedules import WarmupCosineLR, WarmupStableDecayLR

__all__ = ["FinetuneStage", "MuonWithAuxAdamW", "OneCycleLR", "RNNOneCycleLR", "WarmupCosineLR", "WarmupStableDecayLR",
           "apply_lr_multipliers", "as_stages", "build_optimizer", "describe_split", "hidden_matrix_names", "param_groups",
           "set_trainable", "split_hidden_matrices", "stage_at_epoch"]
