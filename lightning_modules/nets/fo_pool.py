"""QRNN fo-pooling, c_t = f_t z_t + (1 - f_t) c_{t-1} over [batch, time, hidden]: a QRNN's only sequential part.

Why not the plain loop: a Python loop over time under autograd (`fo_pool_loop`, kept as the reference) records
several small ops per step and replays them one by one backwards. `fo_pool` keeps the recurrence linear,
c_t = a_t c_{t-1} + b_t with a = 1 - f and b = f z, and runs it in an autograd Function whose backward is the
same kind of recurrence run backwards in time (g_t = dL/dc_t + a_{t+1} g_{t+1}), so neither direction builds a
per-step graph. Three ways to run the recurrence, none with divisions or logarithms; `method="auto"` picks one
per device (`choose_method`):

- "sequential" (pure PyTorch): one fused op per step — forward `lerp(c_{t-1}, z_t, f_t)` = c_{t-1} + f_t (z_t -
  c_{t-1}), which reads f and z once and precomputes nothing; backward one `addcmul` per step. Used on CPU, where it
  was measured fastest (`benchmarks/qrnn_recurrence.py`): it does the minimum work and never forms products of many
  gates, whose values underflow into denormal floats that the CPU handles very slowly.
- "chunked" (pure PyTorch too): time is cut into chunks of about sqrt(T) steps; all chunks run their local
  recurrence (from a zero state) side by side, the chunk-to-chunk carries follow in one short loop, and one
  broadcast `addcmul` adds each carry times the chunk's cumulative product of gates. About 20 kernel launches per
  direction instead of 70 at T = 70, for GPUs, where a step's small kernel costs more to launch than to run.
  Cumulative products are only ever multiplied, never divided by, so gates of exactly 0 or 1 are fine. Taken on a
  GPU when the Triton kernels cannot run.
- "triton": the seed's way (Salesforce's `pytorch-qrnn` ran a CUDA kernel through cupy) — one fused kernel per
  direction, a program per (batch row, block of hidden units) with the loop over time inside
  (`nets/fo_pool_triton.py`): one launch forward and one backward per layer. Taken by "auto" on CUDA when Triton is
  importable and a first tiny call through it matches the loop; otherwise "auto" falls back to "chunked" and says
  why, once per process (`triton_problem`).

A log-depth associative scan (Hillis-Steele over the combine (a1, b1)∘(a2, b2) = (a1 a2, a2 b1 + b2)) was also
measured on CPU: its log2(T) passes over the whole [B, T, H] tensor made it 6 times slower than "sequential" at
[20, 70, 1550], and 50 times slower once products of gates became denormal, so it is not used.
"""
from __future__ import annotations

import logging
import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor

METHODS = ("auto", "sequential", "chunked", "triton")
log = logging.getLogger(__name__)
_triton_problems: dict[str, str | None] = {}  # device → why the Triton kernels cannot run there (None: they can)


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


def interpreting() -> bool:
    """Whether Triton's interpreter is asked for (`TRITON_INTERPRET=1`, read at each call): the Triton kernels then
    run on CPU tensors too, slowly (for tests)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def triton_problem(device: torch.device) -> str | None:
    """Why `method="auto"` cannot take the Triton kernels on `device`, or None when it can: probed once per device.

    The probe runs a tiny forward and backward through the kernels and compares them with the loop, so a missing
    Triton, a failed kernel compile (Triton builds its launcher with the system's C compiler) or a wrong result
    all mean "chunked" instead, said in one line, rather than a crashed or silently wrong run.
    """
    key = str(device)
    if key not in _triton_problems:
        try:
            _probe_triton(device)
            _triton_problems[key] = None
        except Exception as error:  # any failure of the optional fast path means the portable one; said below
            _triton_problems[key] = f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"
            log.warning(f"fo_pool on {key}: the Triton kernels cannot run here ({_triton_problems[key]}), so "
                        "method='auto' takes 'chunked' (pure PyTorch, same results, more kernel launches)")
    return _triton_problems[key]


def _probe_triton(device: torch.device) -> None:
    from lightning_modules.nets.fo_pool_triton import TritonFoPool

    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        generator = torch.Generator().manual_seed(0)
        forget, candidate, c0 = (torch.rand(shape, generator=generator).to(device).requires_grad_()
                                 for shape in ((2, 3, 5), (2, 3, 5), (2, 5)))
        ours = TritonFoPool.apply(forget, candidate, c0, torch.float32)
        ours.sum().backward()
        got = [ours.detach()] + [t.grad for t in (forget, candidate, c0)]
        for t in (forget, candidate, c0):
            t.grad = None
        reference = fo_pool_loop(forget, candidate, c0)
        reference.sum().backward()
        for a, b in zip(got, [reference.detach()] + [t.grad for t in (forget, candidate, c0)]):
            torch.testing.assert_close(a, b, msg="the Triton kernels disagree with the loop on a tiny problem")


def choose_method(method: str, device: torch.device) -> str:
    """What `method` runs on `device`: "auto" is "sequential" on CPU, "triton" on CUDA when `triton_problem` finds
    none, "chunked" otherwise; the others are taken as asked."""
    if method != "auto":
        return method
    if device.type == "cpu":
        return "sequential"
    if device.type == "cuda" and triton_problem(device) is None:
        return "triton"
    return "chunked"


# Kept out of torch.compile graphs (`compile: true`): the sequential recurrence writes each step into a slice with
# `out=`, which dynamo cannot trace, and a traced loop over time would be unrolled per sequence length. Eagerly it
# already is one autograd Function with a hand-written backward, so compiling it would gain nothing. The Triton
# kernels stay behind the same wall rather than be registered as a `torch.library.triton_op`: inductor does not fuse
# other ops into a user kernel, so registering them would save only this graph break (one per layer, a few tens of
# microseconds of Python next to the layer's matrix products), and that compiled path could not be tested here
# (inductor has no CPU path for user Triton kernels, and the interpreter's kernels are not `triton.jit` ones).
@torch.compiler.disable(reason="fo_pool: out= writes in a loop over time; one autograd Function per method")
def fo_pool(forget: Tensor, candidate: Tensor, c0: Tensor | None = None, *, method: str = "auto") -> Tensor:
    """QRNN fo-pooling: c_t = f_t * z_t + (1 - f_t) * c_{t-1}; returns every c_t.

    forget, candidate: [B, T, H] (batch first, T >= 1); c0: [B, H], or None for zeros. Returns [B, T, H].
    `method`: "sequential", "chunked" or "triton" (see the module docstring); "auto" takes "sequential" on CPU,
    "triton" on CUDA where it runs, else "chunked" (`choose_method`). Half-precision inputs are accumulated in
    float32 and the result is cast back, so the 70-step recurrence does not compound bf16 rounding.
    """
    if forget.shape != candidate.shape or forget.dim() != 3 or forget.shape[1] == 0:
        raise ValueError(f"forget and candidate must both be [B, T>=1, H]; got {tuple(forget.shape)} and "
                         f"{tuple(candidate.shape)}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    method = choose_method(method, forget.device)
    out_dtype = torch.promote_types(forget.dtype, candidate.dtype)
    dtype = torch.promote_types(out_dtype, torch.float32)
    batch, _, hidden = forget.shape
    if c0 is not None and c0.shape != (batch, hidden):
        raise ValueError(f"c0 must be [B, H] = {(batch, hidden)}, got {tuple(c0.shape)}")
    if method == "triton":  # the kernels read each dtype as it is and accumulate in `dtype`
        try:
            from lightning_modules.nets.fo_pool_triton import TritonFoPool
        except ImportError as error:
            raise ValueError(f"fo_pool(method='triton') needs Triton, which cannot be imported here ({error}): "
                             "install it (torch's CUDA wheels for Linux bring it) or use method='auto'") from error
        return TritonFoPool.apply(forget, candidate, c0, dtype).to(out_dtype)
    forget, candidate = forget.to(dtype), candidate.to(dtype)
    c0 = forget.new_zeros(batch, hidden) if c0 is None else c0.to(dtype)
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
