"""QRNN layers (Bradbury et al. 2016, "Quasi-Recurrent Neural Networks") in plain PyTorch, batch-first.

A QRNN layer does its heavy work in parallel over time — one Linear on the (windowed) inputs gives a candidate
Z = tanh(.), a forget gate F = sigmoid(.) and an output gate O = sigmoid(.) for every step at once — and keeps
only an elementwise recurrence, "fo-pooling", sequential:

    c_t = f_t * z_t + (1 - f_t) * c_{t-1}        h_t = o_t * c_t

The seed's WikiText-2 QRNN (awd-lstm-lm / fastai settings) has 4 layers of hidden size 1550, a window of 2 in the
first layer (each step sees concat(x_t, x_{t-1}), a causal convolution of width 2) and 1 after, and weight drop
0.1 (DropConnect on the Linear's weight).

The recurrence itself, `fo_pool`, and its three methods (sequential, chunked, Triton kernels) live in
`nets/fo_pool.py`; `pool_method` picks one for a net ("auto" by default: the fastest this device runs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.nets.awd_lstm import RNNLanguageNet
from lightning_modules.nets.fo_pool import METHODS, fo_pool, fo_pool_loop


class QRNNLayer(nn.Module):
    """One QRNN layer: Linear over the windowed input → Z (tanh), F (sigmoid), O (sigmoid); fo-pooling; h = o c.

    As Salesforce's `pytorch-qrnn` (`QRNNLayer`, used by awd-lstm-lm and fastai): with window 2 the Linear sees
    concat(x_t, x_{t-1}) — current input first, the same column order as theirs — and x_{t-1} of the first step
    is the previous batch's last input (`prev_x` in the state; zeros at the start), so consecutive batches of one
    text behave like one long sequence. The Linear's output is split [Z | F | O] (no O without `output_gate`,
    and then h = c).

    `weight_drop` is DropConnect on the Linear's weight (not its bias) in training only: one mask per forward
    call, so shared by the whole batch and every step, as awd-lstm-lm's `WeightDrop` wrapped `rnn.linear`.

    State: (c_last [B, hidden], prev_x [B, input]); for window 1, prev_x is an empty [B, 0] tensor (nothing to
    carry). The returned state is not detached; the caller cuts the graph between batches.

    `pool_method`: how `fo_pool` runs ("auto", "sequential", "chunked", "triton"; `nets/fo_pool.py`). All give
    the same values; only speed differs, so it is not part of the state_dict.
    """

    def __init__(self, input_size: int, hidden_size: int, window: int = 1, weight_drop: float = 0.0,
                 output_gate: bool = True, pool_method: str = "auto"):
        super().__init__()
        if window not in (1, 2):
            raise ValueError(f"window must be 1 or 2, got {window}")
        if pool_method not in METHODS:
            raise ValueError(f"pool_method must be one of {', '.join(METHODS)}; got {pool_method!r}")
        self.input_size, self.hidden_size, self.window = input_size, hidden_size, window
        self.weight_drop, self.output_gate, self.pool_method = weight_drop, output_gate, pool_method
        self.linear = nn.Linear(window * input_size, (3 if output_gate else 2) * hidden_size)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        c0, prev_x = state if state is not None else (None, None)
        if self.window == 2:
            prev_x = x.new_zeros(x.shape[0], x.shape[2]) if prev_x is None else prev_x
            source = torch.cat([x, torch.cat([prev_x.unsqueeze(1), x[:, :-1]], 1)], 2)
            last_x = x[:, -1]
        else:
            source, last_x = x, x.new_zeros(x.shape[0], 0)
        weight = self.linear.weight
        if self.training and self.weight_drop > 0:
            weight = F.dropout(weight, self.weight_drop, training=True)
        gates = F.linear(source, weight, self.linear.bias).chunk(3 if self.output_gate else 2, dim=2)
        # torch.export (scripts/export.py) traces the plain loop: fo_pool's `out=` writes cannot be traced
        forget, candidate = torch.sigmoid(gates[1]), torch.tanh(gates[0])
        if torch.compiler.is_exporting():
            c = fo_pool_loop(forget, candidate, c0)
        else:
            c = fo_pool(forget, candidate, c0, method=self.pool_method)
        h = torch.sigmoid(gates[2]) * c if self.output_gate else c
        return h, (c[:, -1], last_x)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, window={self.window}, weight_drop={self.weight_drop}, "
                f"output_gate={self.output_gate}, pool_method={self.pool_method!r}")


class QRNNLanguageNet(RNNLanguageNet):
    """The seed's QRNN language model: embedding 400, 4 QRNN layers of 1550 (window 2 in the first, 1 after),
    dropouts input 0.4 / output 0.4 / hidden 0.2 / embedding 0.1, weight drop 0.1, tied weights — the AWD-LSTM
    frame (`RNNLanguageNet`) with QRNN layers instead of LSTMs. `pool_method`: see `QRNNLayer`."""

    def __init__(self, vocab_size: int = 33278, embedding_size: int = 400, hidden_size: int = 1550,
                 num_layers: int = 4, dropout_input: float = 0.4, dropout_output: float = 0.4,
                 dropout_hidden: float = 0.2, dropout_embedding: float = 0.1, weight_drop: float = 0.1,
                 tie_weights: bool = True, pool_method: str = "auto"):
        super().__init__(vocab_size, embedding_size, dropout_embedding, dropout_input, dropout_hidden,
                         dropout_output, tie_weights)
        sizes = self.layer_sizes(embedding_size, hidden_size, num_layers)
        self.layers = nn.ModuleList(QRNNLayer(sizes[i], sizes[i + 1], window=2 if i == 0 else 1,
                                              weight_drop=weight_drop, pool_method=pool_method)
                                    for i in range(num_layers))
