"""Say once, on the console and to every logger, which parameters Muon takes and which go to its AdamW.

Why: the split is decided by a rule (`optim.muon.hidden_matrix_names`), not written in the config; a user comparing
Muon runs on W&B must see what each side trained without reading code.
"""
from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info
from torch.optim import Optimizer

from optim import describe_split


def announce_muon_split(module: pl.LightningModule, optimizer: Optimizer) -> None:
    """Print and log `describe_split(module.net)` the first time `module` builds a Muon optimizer."""
    if getattr(module, "_muon_split_announced", False) or not any("use_muon" in g for g in optimizer.param_groups):
        return
    text = describe_split(module.net)
    rank_zero_info(f"Muon split: {text}")
    for logger in module.loggers:
        logger.log_hyperparams({"optimizer_split": text})
    module._muon_split_announced = True
