"""QRNN layers (Bradbury et al. 2016, "Quasi-Recurrent Neural Networks") in plain PyTorch, batch-first.

A QRNN layer does its heavy work in parallel over time — one Linear on the (windowed) inputs gives a candidate
Z = tanh(.), a forget gate F = sigmoid(.) and an output gate O = sigmoid(.) for every step at once — and keeps
only an elementwise recurrence, "fo-pooling", sequential:

    c_t = f_t * z_t + (1 - f_t) * c_{t-1}        h_t = o_t * c_t

The seed's WikiText-2 QRNN (awd-lstm-lm / fastai settings) has 4 layers of hidden size 1550, a window of 2 in the
first layer (each step sees concat(x_t, x_{t-1}), a causal convolution of width 2) and 1 after, and weight drop
0.1 (DropConnect on the Linear's weight).

Why no custom kernel: Salesforce's `pytorch-qrnn` ran fo-pooling as a CUDA kernel compiled through cupy; the
plain alternative, a Python loop over time under autograd (`fo_pool_loop`), records several small ops per step
and replays them one by one backwards. `fo_pool` keeps the recurrence linear,
c_t = a_t c_{t-1} + b_t with a = 1 - f and b = f z, and wraps it in an autograd Function whose backward is the
same kind of recurrence run backwards in time (g_t = dL/dc_t + a_{t+1} g_{t+1}), so neither direction builds a
per-step graph. Two ways to run the recurrence, both pure PyTorch and both free of divisions and logarithms:

- "sequential": one fused op per step — forward `lerp(c_{t-1}, z_t, f_t)` = c_{t-1} + f_t (z_t - c_{t-1}), which
  reads f and z once and precomputes nothing; backward one `addcmul` per step. Used on CPU, where it was measured
  fastest (`benchmarks/qrnn_recurrence.py`): it does the minimum work and never forms products of many gates,
  whose values underflow into denormal floats that the CPU handles very slowly.
- "chunked": time is cut into chunks of about sqrt(T) steps; all chunks run their local recurrence (from a zero
  state) side by side, the chunk-to-chunk carries follow in one short loop, and one broadcast `addcmul` adds
  each carry times the chunk's cumulative product of gates. About 20 kernel launches per direction instead of 70
  at T = 70: chosen for GPUs, where a step's small kernel costs more to launch than to run (chosen by that
  count, not yet measured on a GPU: the benchmark times both methods on whatever device it runs on). Cumulative
  products are only ever multiplied, never divided by, so gates of exactly 0 or 1 are fine.

A log-depth associative scan (Hillis-Steele over the combine (a1, b1)∘(a2, b2) = (a1 a2, a2 b1 + b2)) was also
measured on CPU: its log2(T) passes over the whole [B, T, H] tensor made it 6 times slower than "sequential" at
[20, 70, 1550], and 50 times slower once products of gates became denormal, so it is not used.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.nets.awd_lstm import RNNLanguageNet

METHODS = ("auto", "sequential", "chunked")


def _fo_pool_lerp(forget: Tensor, candidate: Tensor, c0: Tensor) -> Tensor:
    """The forward recurrence as one `lerp` per step, written straight into the output: c_t = lerp(c_{t-1}, z_t, f_t).

    The same value as a_t c_{t-1} + b_t with a = 1 - f, b = f z (to rounding), without making a or b first:
    forget and candidate are read once and c written once, the least memory traffic fo-pooling allows.
    """
    out = torch.empty_like(candidate)
    c = c0
    for t in range(candidate.shape[1]):
        c = torch.lerp(c, candidate[:, t], forget[:, t], out=out[:, t])
    return out


def _recurrence_sequential(a: Tensor, b: Tensor, c0: Tensor, adjoint: bool) -> Tensor:
    """c_t = a_t c_{t-1} + b_t over dim 1 from c0; if `adjoint`, g_t = a_{t+1} g_{t+1} + b_t backwards from 0.

    One fused `addcmul` per step, written straight into the output: the loop's own arithmetic.
    """
    out = torch.empty_like(b)
    steps = b.shape[1]
    if adjoint:
        out[:, -1] = b[:, -1]
        for t in range(steps - 2, -1, -1):
            torch.addcmul(b[:, t], a[:, t + 1], out[:, t + 1], out=out[:, t])
    else:
        c = c0
        for t in range(steps):
            c = torch.addcmul(b[:, t], a[:, t], c, out=out[:, t])
    return out


def _recurrence_chunked(a: Tensor, b: Tensor, c0: Tensor, adjoint: bool) -> Tensor:
    """The same recurrences in chunks of ~sqrt(T) steps: local scans in parallel, then carries, then one fix-up."""
    if adjoint:  # reversed in time, the adjoint is the forward recurrence with the gates shifted by one step
        shifted = F.pad(a.flip(1)[:, :-1], (0, 0, 1, 0))
        return _recurrence_chunked(shifted, b.flip(1), torch.zeros_like(c0), adjoint=False).flip(1)
    batch, steps, hidden = b.shape
    length = math.ceil(math.sqrt(steps))
    chunks = math.ceil(steps / length)
    pad = chunks * length - steps  # padded steps come after the real ones, so they change nothing
    a = F.pad(a, (0, 0, 0, pad)).view(batch, chunks, length, hidden)
    local = b.new_zeros(batch, chunks * length, hidden)  # a copy of b, written in place below
    local[:, :steps] = b
    local = local.view(batch, chunks, length, hidden)
    for j in range(1, length):  # every chunk's recurrence from a zero state, all chunks at once
        local[:, :, j].addcmul_(a[:, :, j], local[:, :, j - 1])
    gain = torch.cumprod(a, dim=2)  # gain[k, j] = a_{k,0} ... a_{k,j}: how chunk k's incoming state reaches step j
    carry = torch.empty_like(local[:, :, 0])  # carry[:, k] = the true state entering chunk k
    carry[:, 0] = c0
    for k in range(chunks - 1):
        torch.addcmul(local[:, k, -1], gain[:, k, -1], carry[:, k], out=carry[:, k + 1])
    out = local.addcmul_(gain, carry.unsqueeze(2)).view(batch, chunks * length, hidden)
    return out[:, :steps].contiguous() if pad else out


_IMPLEMENTATIONS = {"sequential": _recurrence_sequential, "chunked": _recurrence_chunked}


class _FoPool(torch.autograd.Function):
    """fo-pooling with a hand-written backward that is one more linear recurrence, run backwards in time.

    With a = 1 - f and b = f z, c_t = a_t c_{t-1} + b_t. Let g_t = dL/dc_t counting every path (directly and
    through c_{t+1}): g_t = grad_t + a_{t+1} g_{t+1}, the adjoint recurrence. Then
    dL/dz_t = g_t f_t, dL/df_t = g_t (z_t - c_{t-1}), dL/dc0 = g_0 a_0.
    Only the first derivative is provided (`once_differentiable`): training needs no more.
    """

    @staticmethod
    def forward(ctx, forget: Tensor, candidate: Tensor, c0: Tensor, method: str) -> Tensor:
        forget, candidate, c0 = forget.contiguous(), candidate.contiguous(), c0.contiguous()
        if method == "sequential":
            c = _fo_pool_lerp(forget, candidate, c0)
        else:
            c = _IMPLEMENTATIONS[method](1 - forget, forget * candidate, c0, adjoint=False)
        ctx.save_for_backward(forget, candidate, c0, c)
        ctx.method = method
        return c

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_c: Tensor):
        forget, candidate, c0, c = ctx.saved_tensors
        keep = 1 - forget  # made again rather than saved: one tensor less held per layer between the passes
        g = _IMPLEMENTATIONS[ctx.method](keep, grad_c.contiguous(), c0, adjoint=True)
        grad_f = grad_z = grad_c0 = None
        if ctx.needs_input_grad[0]:
            grad_f = torch.empty_like(candidate)  # (z_t - c_{t-1}) g_t, without concatenating c0 onto c
            torch.sub(candidate[:, 1:], c[:, :-1], out=grad_f[:, 1:])
            torch.sub(candidate[:, 0], c0, out=grad_f[:, 0])
            grad_f.mul_(g)
        if ctx.needs_input_grad[1]:
            grad_z = g * forget
        if ctx.needs_input_grad[2]:
            grad_c0 = g[:, 0] * keep[:, 0]
        return grad_f, grad_z, grad_c0, None


# Kept out of torch.compile graphs (`compile: true`): the sequential recurrence writes each step into a slice with
# `out=`, which dynamo cannot trace, and a traced loop over time would be unrolled per sequence length. Eagerly it
# already is one autograd Function with a hand-written backward, so compiling it would gain nothing.
@torch.compiler.disable(reason="fo_pool: out= writes in a loop over time")
def fo_pool(forget: Tensor, candidate: Tensor, c0: Tensor | None = None, *, method: str = "auto") -> Tensor:
    """QRNN fo-pooling: c_t = f_t * z_t + (1 - f_t) * c_{t-1}; returns every c_t.

    forget, candidate: [B, T, H] (batch first, T >= 1); c0: [B, H], or None for zeros. Returns [B, T, H].
    `method`: "sequential" or "chunked" (see the module docstring); "auto" takes "sequential" on CPU and
    "chunked" elsewhere. Half-precision inputs are accumulated in float32 and the result is cast back, so the
    70-step recurrence does not compound bf16 rounding.
    """
    if forget.shape != candidate.shape or forget.dim() != 3 or forget.shape[1] == 0:
        raise ValueError(f"forget and candidate must both be [B, T>=1, H]; got {tuple(forget.shape)} and "
                         f"{tuple(candidate.shape)}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        method = "sequential" if forget.device.type == "cpu" else "chunked"
    out_dtype = torch.promote_types(forget.dtype, candidate.dtype)
    dtype = torch.promote_types(out_dtype, torch.float32)
    forget, candidate = forget.to(dtype), candidate.to(dtype)
    batch, _, hidden = forget.shape
    c0 = forget.new_zeros(batch, hidden) if c0 is None else c0.to(dtype)
    if c0.shape != (batch, hidden):
        raise ValueError(f"c0 must be [B, H] = {(batch, hidden)}, got {tuple(c0.shape)}")
    c = _FoPool.apply(forget, candidate, c0, method)
    return c.to(out_dtype)


def fo_pool_loop(forget: Tensor, candidate: Tensor, c0: Tensor | None = None) -> Tensor:
    """The reference: fo-pooling as a plain per-step loop under autograd (for tests and the benchmark).

    Written the way one would without thinking about speed, but not handicapped: `unbind` splits time once (its
    backward stacks the step gradients once) instead of indexing `f[:, t]` per step.
    """
    c = forget.new_zeros(forget.shape[0], forget.shape[2]) if c0 is None else c0
    states = []
    for f, z in zip(forget.unbind(1), candidate.unbind(1)):
        c = f * z + (1 - f) * c
        states.append(c)
    return torch.stack(states, 1)


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
    """

    def __init__(self, input_size: int, hidden_size: int, window: int = 1, weight_drop: float = 0.0,
                 output_gate: bool = True):
        super().__init__()
        if window not in (1, 2):
            raise ValueError(f"window must be 1 or 2, got {window}")
        self.input_size, self.hidden_size, self.window = input_size, hidden_size, window
        self.weight_drop, self.output_gate = weight_drop, output_gate
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
        pool = fo_pool_loop if torch.compiler.is_exporting() else fo_pool
        c = pool(torch.sigmoid(gates[1]), torch.tanh(gates[0]), c0)
        h = torch.sigmoid(gates[2]) * c if self.output_gate else c
        return h, (c[:, -1], last_x)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, window={self.window}, weight_drop={self.weight_drop}, "
                f"output_gate={self.output_gate}")


class QRNNLanguageNet(RNNLanguageNet):
    """The seed's QRNN language model: embedding 400, 4 QRNN layers of 1550 (window 2 in the first, 1 after),
    dropouts input 0.4 / output 0.4 / hidden 0.2 / embedding 0.1, weight drop 0.1, tied weights — the AWD-LSTM
    frame (`RNNLanguageNet`) with QRNN layers instead of LSTMs."""

    def __init__(self, vocab_size: int = 33278, embedding_size: int = 400, hidden_size: int = 1550,
                 num_layers: int = 4, dropout_input: float = 0.4, dropout_output: float = 0.4,
                 dropout_hidden: float = 0.2, dropout_embedding: float = 0.1, weight_drop: float = 0.1,
                 tie_weights: bool = True):
        super().__init__(vocab_size, embedding_size, dropout_embedding, dropout_input, dropout_hidden,
                         dropout_output, tie_weights)
        sizes = self.layer_sizes(embedding_size, hidden_size, num_layers)
        self.layers = nn.ModuleList(QRNNLayer(sizes[i], sizes[i + 1], window=2 if i == 0 else 1,
                                              weight_drop=weight_drop) for i in range(num_layers))
