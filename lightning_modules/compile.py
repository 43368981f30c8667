"""`compile_net`: `torch.compile` a net in place, for the `compile: true` option of both LightningModules.

Why in place (`nn.Module.compile`) rather than `net = torch.compile(net)`: the latter returns an `OptimizedModule`
holding the net as `_orig_mod`, so every state_dict key would gain an `_orig_mod.` prefix and a checkpoint of a
compiled run would not load into an uncompiled model, nor the reverse. `net.compile()` keeps the module, its
attributes (`decoder`, `layer_groups()`) and its keys; only `net(...)` goes through the compiled call. The
compilation itself is lazy: it happens on the first call, on whatever device the net is on by then.

What ends up compiled, per net (measured with torch 2.14; see `tests/lightning_modules/test_compile.py`):
- WideResNet, ResNetWithHead: the whole forward, one graph per mode (train/eval) and input shape; inductor
  fuses BatchNorm, ReLU and the residual arithmetic around the convolutions.
- QRNNLanguageNet: the Linear and the gates of every layer. `fo_pool` is kept out of the graph (it is
  decorated with `torch.compiler.disable` in `nets/fo_pool.py`, which says why, for all three methods). The
  graph break sits inside the loop over layers, so dynamo runs the net's own
  forward eagerly and compiles each layer's forward (and the dropout helpers) as graphs of their own.
- AWDLSTM: dynamo does not trace `nn.LSTM` ("Dynamo does not support RNN, GRU, or LSTM"): the LSTMs run
  eagerly and only the dropout helpers are compiled, so expect no speed-up, only the same results.

Shapes: language-model batches have a random length each, so the language model asks for `dynamic=True`
(graphs symbolic in every size from the first call: no recompilation per length). Image batches have one size
and a smaller last batch: torch's default (`dynamic=None`) compiles static kernels first and one graph with a
symbolic batch size when a second size appears.

Beware: every module compiled with `nn.Module.compile` shares one code object, hence one recompile budget
(`torch._dynamo.config.recompile_limit`, 8) per process; past it dynamo warns and runs the module eagerly.
One net per training process stays far below it; tests that compile several nets call `torch._dynamo.reset()`.
"""
from __future__ import annotations

import torch
import torch._dynamo
from torch import nn

from lightning_modules.nets import qrnn

# A QRNN layer's forward is compiled once per layer shape (3 in a 4-layer net), with and without an incoming
# state, with and without grad (evaluation): 12 variants, past dynamo's default budget of 8 per code object.
RECOMPILE_LIMIT = 16


def compile_net(net: nn.Module, dynamic: bool | None = None) -> nn.Module:
    """Compile `net` in place with the default backend (inductor) and return it.

    Idempotent: a second call keeps the first compilation and its cached graphs (`setup` runs again for
    validate/test in the same process).
    """
    if net._compiled_call_impl is not None:
        return net
    if any(isinstance(m, qrnn.QRNNLayer) for m in net.modules()):
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    net.compile(dynamic=dynamic)
    return net
