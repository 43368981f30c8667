"""Hyperparameters that let `Model.load_from_checkpoint(path)` rebuild a model made by `cli.py`."""
from __future__ import annotations

import inspect

import pytorch_lightning as pl
from pytorch_lightning.core.mixins.hparams_mixin import _given_hyperparameters

OBJECT_ARGUMENTS = ("net", "optimizer", "lr_scheduler")


def save_hyperparameters_for_reload(module: pl.LightningModule) -> None:
    """Save every init argument; keep the net/optimizer/scheduler only as config, never as pickled objects.

    Under LightningCLI the saved hyperparameters are the parsed config (class_path + init_args for the net, the
    optimizer and the scheduler), so `load_from_checkpoint` can rebuild the whole model from the checkpoint
    alone. Built by hand in Python, those arguments are live objects: they are left out (the weights are in the
    checkpoint's state dict; pass `net=` to `load_from_checkpoint`).
    """
    made_by_cli = _given_hyperparameters.get() is not None
    init_frame = inspect.currentframe().f_back  # the module's __init__, whose arguments are saved
    module.save_hyperparameters(ignore=None if made_by_cli else list(OBJECT_ARGUMENTS), frame=init_frame)
