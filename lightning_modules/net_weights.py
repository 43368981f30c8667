"""Start a new run from a trained net: the `init_weights` option of both LightningModules.

Why not `--ckpt_path`: resuming restores the optimizer and the 1cycle too, so the run continues the old schedule
and cannot be longer than it. Training on — ten more epochs, another lr, another optimizer — needs the net's
weights only, a fresh optimizer and a fresh 1cycle over the new run's length. fastai calls this loading a model
before `fit_one_cycle`; here it is `--model.init_args.init_weights PATH` (any checkpoint of the same net).
"""
from __future__ import annotations

import os

import torch
from torch import nn

PREFIX = "net."  # the LightningModules keep their network as `self.net`


def load_net_weights(net: nn.Module, path: str | os.PathLike) -> None:
    """Copy the `net.*` tensors of the checkpoint at `path` into `net`; every name and shape must match."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    state = {name.removeprefix(PREFIX): tensor for name, tensor in checkpoint.get("state_dict", {}).items()
             if name.startswith(PREFIX)}
    expected = {name: tuple(tensor.shape) for name, tensor in net.state_dict().items()}
    found = {name: tuple(tensor.shape) for name, tensor in state.items()}
    if expected != found:
        differing = sorted(expected.keys() ^ found.keys()) or sorted(k for k in expected if expected[k] != found[k])
        raise ValueError(f"model.init_args.init_weights {path} holds another net ({len(differing)} tensors differ, "
                         f"e.g. {differing[0]}): pass a checkpoint of this net.")
    net.load_state_dict(state)
