"""Hyperparameters that let `Model.load_from_checkpoint(path)` rebuild a model made by `cli.py`, stored as plain
types so that every checkpoint loads with `torch.load(path, weights_only=True)`."""
from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.core.mixins.hparams_mixin import _given_hyperparameters

OBJECT_ARGUMENTS = ("net", "optimizer", "lr_scheduler")


def plain(value: Any) -> Any:
    """`value` in types the weights-only unpickler reads without an allow-list: dataclasses become dicts, paths
    strings, NumPy scalars and arrays Python numbers and lists; dicts, lists and tuples are converted inside.

    Why: a checkpoint's hyperparameters are pickled as they are. A `FinetuneStage` (a dataclass) or a `Path` in them
    makes `torch.load(..., weights_only=True)` refuse the whole file in any process that has not allow-listed that
    class, and cli.py loads checkpoints that way by default. The modules accept the plain forms back (`as_stages`
    takes dicts), so `load_from_checkpoint` rebuilds the same model.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, tuple) and not hasattr(value, "_fields"):  # a namedtuple is left alone (rebuilt by name)
        return tuple(plain(item) for item in value)
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def save_hyperparameters_for_reload(module: pl.LightningModule) -> None:
    """Save every init argument; keep the net/optimizer/scheduler only as config, never as pickled objects.

    Under LightningCLI the saved hyperparameters are the parsed config (class_path + init_args for the net, the
    optimizer and the scheduler), so `load_from_checkpoint` can rebuild the whole model from the checkpoint
    alone. Built by hand in Python, those arguments are live objects: they are left out (the weights are in the
    checkpoint's state dict; pass `net=` to `load_from_checkpoint`). Every value is stored `plain`.
    """
    made_by_cli = _given_hyperparameters.get() is not None
    init_frame = inspect.currentframe().f_back  # the module's __init__, whose arguments are saved
    module.save_hyperparameters(ignore=None if made_by_cli else list(OBJECT_ARGUMENTS), frame=init_frame)
    for name, value in list(module.hparams.items()):
        module.hparams[name] = plain(value)
