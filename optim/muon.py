"""Muon for the hidden weight matrices and AdamW for everything else, as one optimizer.

The update rules are the reference implementation's (Keller Jordan's `muon-optimizer` package,
`SingleDeviceMuonWithAuxAdam`): Muon — momentum orthogonalised by a Newton–Schulz iteration — for matrices, conv
filters viewed as 2-D; its internal AdamW for the rest. One optimizer, so Lightning's automatic optimization,
gradient clipping, one scheduler and the checkpoint work as with AdamW. `torch.optim.Muon` takes 2-D parameters
only, so conv filters could not go to it.

What this file adds, and why:
- which parameters are hidden matrices (`hidden_matrix_names`): every parameter with two or more dimensions except
  embeddings and the output layer (the classifier or decoder, and anything tied to them) — Muon's authors' rule;
  biases and norm gains are 1-D and go to AdamW;
- `split_hidden_matrices` turns the model's param groups (with their lr multipliers and no-decay groups) into Muon
  and AdamW groups, flagged `use_muon` as the reference expects;
- `MuonWithAuxAdamW` gives the reference class what a `torch.optim` optimizer has and Lightning uses: a `closure`
  argument to `step`, YAML-friendly arguments (Muon's lr and AdamW's lr apart), extra keys in param groups, and
  conv filters that work (see `step`).
The models split their groups only for an optimizer that asks for it (`splits_hidden_matrices`).

Under DDP every rank runs the same Muon step on the same averaged gradients (the reference's distributed class
would shard the Newton–Schulz work, but it all-gathers parameters itself, which DDP already keeps in step).
"""
from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from muon import SingleDeviceMuonWithAuxAdam, adam_update, muon_update
from torch import nn

def hidden_matrix_names(net: nn.Module) -> list[str]:
    """Names of the parameters Muon should take: ≥ 2-D, not in an embedding, not the output layer's.

    The output layer is the module called `decoder`, else the last `nn.Linear` (a classifier); parameters tied to
    an embedding or the output layer (AWD-LSTM's decoder is the embedding) are excluded by identity.
    """
    excluded: set[int] = set()
    linears = [module for module in net.modules() if isinstance(module, nn.Linear)]
    output = getattr(net, "decoder", None) if isinstance(getattr(net, "decoder", None), nn.Module) else None
    for module in [m for m in net.modules() if isinstance(m, nn.Embedding)] + [output or (linears or [None])[-1]]:
        if module is not None:
            excluded.update(id(p) for p in module.parameters())
    return [name for name, p in net.named_parameters() if p.ndim >= 2 and id(p) not in excluded]


def split_hidden_matrices(groups: Sequence[dict], net: nn.Module) -> list[dict]:
    """Each param group split in two, `use_muon` True (hidden matrices of `net`) and False, other keys kept."""
    names = set(hidden_matrix_names(net))
    hidden = {id(p) for name, p in net.named_parameters() if name in names}
    result = []
    for group in groups:
        params = list(group["params"])
        for use_muon in (True, False):
            chosen = [p for p in params if (id(p) in hidden) == use_muon]
            if chosen:
                result.append({**group, "params": chosen, "use_muon": use_muon})
    return result


def describe_split(net: nn.Module) -> str:
    """One line naming what each side takes: counts of tensors and values, and the names' patterns."""
    hidden = set(hidden_matrix_names(net))
    sides = {"Muon": [], "AdamW": []}
    for name, p in net.named_parameters():
        sides["Muon" if name in hidden else "AdamW"].append((name, p.numel()))

    def pattern(entries: list[tuple[str, int]]) -> str:  # layer numbers as *: features.*.conv1.weight
        names = dict.fromkeys(re.sub(r"(?<=\.)\d+(?=\.)|^\d+(?=\.)", "*", name) for name, _ in entries)
        return ", ".join(names) or "nothing"

    return "; ".join(f"{side} takes {len(entries)} tensors ({sum(n for _, n in entries):,} values: {pattern(entries)})"
                     for side, entries in sides.items())


class MuonWithAuxAdamW(SingleDeviceMuonWithAuxAdam):
    """The reference `SingleDeviceMuonWithAuxAdam`, configured like a `torch.optim` optimizer.

    Args:
        params: param groups split by `split_hidden_matrices` (each with `use_muon`); the models do this.
        lr: Muon's learning rate, in spectral-norm units per step (the reference's default 0.02).
        momentum: Muon's momentum (Nesterov), 0.95 as the reference.
        weight_decay: decoupled weight decay of the Muon side (w -= lr·wd·w).
        adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay: the AdamW side (embeddings, output layer, biases,
            norms). A group's `lr_multiplier` scales both sides' lr; a no-decay group keeps weight decay 0.
    """

    splits_hidden_matrices = True  # the models call `split_hidden_matrices` for this optimizer

    def __init__(self, params: Iterable[dict], lr: float = 0.02, momentum: float = 0.95, weight_decay: float = 0.0,
                 adamw_lr: float = 3e-3, adamw_betas: Sequence[float] = (0.9, 0.95), adamw_eps: float = 1e-10,
                 adamw_weight_decay: float = 0.0):
        groups = list(params)
        if not groups or not all(isinstance(g, dict) and "use_muon" in g for g in groups):
            raise ValueError("MuonWithAuxAdamW needs param groups split into Muon and AdamW parts "
                             "(optim.split_hidden_matrices); ImageClassifier and LanguageModel do this — pass the "
                             "optimizer through model.init_args.optimizer.")
        sides = {True: dict(lr=lr, momentum=momentum, weight_decay=weight_decay),
                 False: dict(lr=adamw_lr, betas=tuple(adamw_betas), eps=adamw_eps, weight_decay=adamw_weight_decay)}
        reference_groups, extras = [], []
        for group in groups:
            settings = dict(sides[group["use_muon"]])
            if group.get("weight_decay") == 0.0:  # a no-decay group (norms and biases) stays undecayed
                settings["weight_decay"] = 0.0
            reference_groups.append({"params": list(group["params"]), "use_muon": group["use_muon"], **settings})
            extras.append({k: v for k, v in group.items() if k not in ("params", "use_muon", *settings)})
        super().__init__(reference_groups)
        for group, extra in zip(self.param_groups, extras):
            group.update(extra)  # e.g. lr_multiplier, read by optim.apply_lr_multipliers
        # torch's schedulers and lr tools read `defaults`: the 1cycle cycles Muon's momentum as it cycles SGD's
        self.defaults.update(lr=lr, momentum=momentum)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """The reference's step, after evaluating `closure` (Lightning passes one: forward and backward).

        The loop is `SingleDeviceMuonWithAuxAdam.step` calling the package's own `muon_update` and `adam_update`,
        with one change: a conv filter's update, which `muon_update` orthogonalises as a 2-D matrix, is reshaped
        back to the filter's shape before it is applied. The PyPI release (0.1.0) adds the 2-D update to the 4-D
        weight, which fails ("size of tensor a (3) must match ... b (27)"); the GitHub repository reshapes it so.
        A channels-last gradient is made contiguous first, since the reference views it as a matrix.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:  # frozen or unused this step (the reference assumes every parameter has one)
                    continue
                state = self.state[p]
                if group["use_muon"]:
                    if len(state) == 0:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    # contiguous: the reference views a conv gradient as 2-D, which a channels-last one cannot be
                    update = muon_update(p.grad.contiguous(), state["momentum_buffer"],
                                         beta=group["momentum"]).reshape(p.shape)
                else:
                    if len(state) == 0:
                        state["exp_avg"], state["exp_avg_sq"], state["step"] = torch.zeros_like(p), torch.zeros_like(p), 0
                    state["step"] += 1
                    update = adam_update(p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"], group["betas"],
                                         group["eps"])
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-group["lr"])
        return loss


def optimizer_class(factory: Any) -> type | None:
    """The class a config's optimizer callable builds (jsonargparse wraps it in a `functools.partial`), if any."""
    if isinstance(factory, type):
        return factory
    while isinstance(factory, functools.partial):
        classes = [a for a in (factory.func, *factory.args) if isinstance(a, type)]
        if classes:
            return classes[0]
        factory = factory.func
    return None


def build_optimizer(factory: Callable[[list[dict]], torch.optim.Optimizer], groups: list[dict],
                    net: nn.Module) -> torch.optim.Optimizer:
    """`factory(groups)`, the groups first split into Muon and AdamW parts when the optimizer asks for it."""
    if getattr(optimizer_class(factory), "splits_hidden_matrices", False):
        groups = split_hidden_matrices(groups, net)
    return factory(groups)
