"""AWD-LSTM (Merity et al. 2017): an LSTM language model regularised by dropout everywhere, as the seed trained it.

The tricks, each named: embedding dropout (whole words dropped from the embedding matrix), locked (variational)
dropout on inputs, between layers and on the output (one mask per sequence, shared across time), weight dropout
(DropConnect on the hidden-to-hidden matrix, also one mask per sequence), tied input/output embeddings. AR/TAR
need the last layer's outputs, so the net returns them alongside the logits' input.

Weight dropout without the old `flatten_parameters` hacks: the dropped matrix is passed to `nn.LSTM` with
`torch.func.functional_call`, so the module keeps one real parameter and autograd reaches it through the mask.

bf16-mixed on a CPU without AVX-512 (oneDNN has no bf16 LSTM there): the LSTM layers run in float32 under
autocast, said once in one line (`lightning_modules/nets/cpu_bf16.py`); GPUs and other CPUs run as before.

`RNNLanguageNet` is the frame shared with the QRNN (`lightning_modules/nets/qrnn.py`): only the recurrent layers
differ. Tensors are batch-first: tokens [B, T], outputs [B, T, features].
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.nets.cpu_bf16 import run_lstm


class RNNOutput(NamedTuple):
    output: torch.Tensor  # last layer after output dropout, [B, T, embedding]: the decoder's input (AR uses it)
    raw_output: torch.Tensor  # last layer before dropout, [B, T, embedding]: TAR and the neural cache use it
    hidden: list[Any]  # per-layer recurrent state, to pass to the next batch (detached by the caller)


def locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout with one mask per sequence, shared by every time step ([B, 1, D] broadcast over T)."""
    if not training or p == 0:
        return x
    mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1 - p) / (1 - p)
    return x * mask


def embedding_dropout(embedding: nn.Embedding, tokens: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Drop whole words: zero rows of the embedding matrix (scaled by 1/(1-p)) before the lookup."""
    weight = embedding.weight
    if training and p > 0:
        # Scale the [V, 1] mask, not the [V, D] product: one pass over the matrix each way instead of two.
        weight = weight * (weight.new_empty(weight.shape[0], 1).bernoulli_(1 - p) / (1 - p))
    return F.embedding(tokens, weight)


def detach_state(state: Any) -> Any:
    """Cut the graph between batches (Lightning 2.x has no truncated BPTT): tensors in any nesting."""
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, (list, tuple)):
        return type(state)(detach_state(s) for s in state)
    return state


class WeightDropLSTM(nn.Module):
    """One LSTM layer whose hidden-to-hidden weights get DropConnect in training."""

    def __init__(self, input_size: int, hidden_size: int, weight_drop: float = 0.0):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.weight_drop = weight_drop

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        # On a CPU whose oneDNN has no bf16 LSTM, bf16 CPU autocast would fail here: `run_lstm` then runs the layer
        # in float32 (`nets/cpu_bf16.py`). CUDA inputs (cuDNN has bf16 LSTMs) go straight to `_forward`, unchanged.
        return run_lstm(self._forward, x, state)

    def _forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None):
        if self.training and self.weight_drop > 0:
            dropped = F.dropout(self.lstm.weight_hh_l0, self.weight_drop, training=True)
            return torch.func.functional_call(self.lstm, {"weight_hh_l0": dropped}, (x, state))
        return self.lstm(x, state)


class RNNLanguageNet(nn.Module):
    """Embedding → locked dropout → recurrent layers (locked dropout between) → output dropout → tied decoder.

    Subclasses build `self.layers`: layer i maps sizes[i] → sizes[i + 1], with sizes = [embedding, hidden, ...,
    hidden, embedding] so the last layer's output matches the tied decoder.
    """

    def __init__(self, vocab_size: int, embedding_size: int, dropout_embedding: float, dropout_input: float,
                 dropout_hidden: float, dropout_output: float, tie_weights: bool = True):
        super().__init__()
        self.vocab_size, self.embedding_size = vocab_size, embedding_size
        self.dropout_embedding, self.dropout_input = dropout_embedding, dropout_input
        self.dropout_hidden, self.dropout_output = dropout_hidden, dropout_output
        self.encoder = nn.Embedding(vocab_size, embedding_size)
        self.decoder = nn.Linear(embedding_size, vocab_size)
        if tie_weights:
            self.decoder.weight = self.encoder.weight
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)  # the seed's init_weights
        nn.init.zeros_(self.decoder.bias)
        self.layers = nn.ModuleList()

    @staticmethod
    def layer_sizes(embedding_size: int, hidden_size: int, num_layers: int) -> list[int]:
        return [embedding_size] + [hidden_size] * (num_layers - 1) + [embedding_size]

    def forward(self, tokens: torch.Tensor, hidden: list[Any] | None = None) -> RNNOutput:
        hidden = hidden if hidden is not None else [None] * len(self.layers)
        x = embedding_dropout(self.encoder, tokens, self.dropout_embedding, self.training)
        x = locked_dropout(x, self.dropout_input, self.training)
        new_hidden = []
        for index, (layer, state) in enumerate(zip(self.layers, hidden)):
            x, new_state = layer(x, state)
            new_hidden.append(new_state)
            if index < len(self.layers) - 1:
                x = locked_dropout(x, self.dropout_hidden, self.training)
        return RNNOutput(locked_dropout(x, self.dropout_output, self.training), x, new_hidden)


class AWDLSTM(RNNLanguageNet):
    """The seed's AWD-LSTM (`train_rnn.py`): embedding 400, hidden 1150, 3 layers, dropouts input 0.6 / output
    0.4 / hidden 0.2 / embedding 0.1, weight drop 0.5, tied weights, decoder with bias."""

    def __init__(self, vocab_size: int = 33278, embedding_size: int = 400, hidden_size: int = 1150,
                 num_layers: int = 3, dropout_input: float = 0.6, dropout_output: float = 0.4,
                 dropout_hidden: float = 0.2, dropout_embedding: float = 0.1, weight_drop: float = 0.5,
                 tie_weights: bool = True):
        super().__init__(vocab_size, embedding_size, dropout_embedding, dropout_input, dropout_hidden,
                         dropout_output, tie_weights)
        sizes = self.layer_sizes(embedding_size, hidden_size, num_layers)
        self.layers = nn.ModuleList(WeightDropLSTM(sizes[i], sizes[i + 1], weight_drop) for i in range(num_layers))
