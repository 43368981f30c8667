"""QRNN fo-pooling as two Triton kernels, forward and backward: one launch each per layer, as the seed's CUDA kernel.

Why: on a GPU the recurrence c_t = f_t z_t + (1 - f_t) c_{t-1} does a few flops per element, so what costs is
launching kernels, not running them. Salesforce's `pytorch-qrnn` (the seed's QRNN) ran it as one CUDA kernel per
direction: a thread per (batch, hidden) pair, the loop over time inside, the state in a register. These kernels do
the same with Triton (shipped with torch, so nothing to compile by hand): one program per (batch row, block of
hidden units), `BLOCK` units per program, masked where H is not a multiple of it, the loop over T inside.

- Forward: c = c + f (z - c) per step, from c0 (or zeros), every c_t written in the accumulation dtype (float32
  for bf16/fp16/float32 inputs, float64 for float64), because the backward reads them.
- Backward: the adjoint recurrence run backwards in one pass, g_t = dL/dc_t + (1 - f_{t+1}) g_{t+1}, and from it
  dL/dz_t = f_t g_t, dL/df_t = (z_t - c_{t-1}) g_t and dL/dc0 = (1 - f_0) g_0 — the seed's kernel's arithmetic
  (`bwd_recurrent_forget_mult`: `running_f - f * running_f`), so nothing is formed but what is stored.
- Each step's loads of f and z (and, backwards, of the gradient and c_{t-1}) are issued one step ahead, so a
  program waits for memory once per step at most rather than twice.

Inputs are read in their own dtype and converted in registers: a bf16 run moves half the bytes, with float32
arithmetic all along (the 70-step recurrence does not compound bf16 rounding).

On a CPU the kernels run only through Triton's interpreter (`TRITON_INTERPRET=1`, read at each call), which is
how `make test` checks them against the loop and the seed's `ForgetMult`. The kernels are built on first use for
the mode asked (`_kernels`): `triton.jit` fixes compiled-or-interpreted when it decorates, so a process can hold
both and a test can switch with the variable. The kernels use only `triton.language` builtins (`tl.full`, not
`tl.zeros`, which is itself a jitted function): the interpreter runs builtins whenever Triton was imported, but
jitted library functions only if the variable was set before that import.
"""
from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from lightning_modules.nets.fo_pool import interpreting

BLOCK_MAX = 128  # hidden units per program: one per thread with 4 warps (many programs in flight hide latency)


def _forward_kernel(forget, candidate, c0, out, steps, hidden,
                    HAS_C0: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < hidden
    start = row * steps * hidden + cols  # element (row, 0, cols) of a contiguous [B, T, H]
    if HAS_C0:
        c = tl.load(c0 + row * hidden + cols, mask=mask, other=0.0).to(ACC)
    else:
        c = tl.full([BLOCK], 0.0, dtype=ACC)
    f = tl.load(forget + start, mask=mask, other=0.0).to(ACC)
    z = tl.load(candidate + start, mask=mask, other=0.0).to(ACC)
    for t in range(steps):
        here = start + t * hidden
        ahead = mask & (t + 1 < steps)
        f_next = tl.load(forget + here + hidden, mask=ahead, other=0.0).to(ACC)
        z_next = tl.load(candidate + here + hidden, mask=ahead, other=0.0).to(ACC)
        c = c + f * (z - c)
        tl.store(out + here, c, mask=mask)
        f, z = f_next, z_next


def _backward_kernel(forget, candidate, c0, c, grad_c, grad_f, grad_z, grad_c0, steps, hidden,
                     HAS_C0: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < hidden
    start = row * steps * hidden + cols
    last = start + (steps - 1) * hidden
    g = tl.full([BLOCK], 0.0, dtype=ACC)  # dL/dc_t from every later step, carried backwards
    dc = tl.load(grad_c + last, mask=mask, other=0.0).to(ACC)
    f = tl.load(forget + last, mask=mask, other=0.0).to(ACC)
    z = tl.load(candidate + last, mask=mask, other=0.0).to(ACC)
    for i in range(steps):
        t = steps - 1 - i
        here = start + t * hidden
        behind = mask & (t > 0)
        if HAS_C0:  # c_{t-1}: the saved state, or c0 before the first step
            c_prev = tl.load(tl.where(t > 0, c + here - hidden, c0 + row * hidden + cols), mask=mask,
                             other=0.0).to(ACC)
        else:
            c_prev = tl.load(c + here - hidden, mask=behind, other=0.0).to(ACC)
        dc_next = tl.load(grad_c + here - hidden, mask=behind, other=0.0).to(ACC)
        f_next = tl.load(forget + here - hidden, mask=behind, other=0.0).to(ACC)
        z_next = tl.load(candidate + here - hidden, mask=behind, other=0.0).to(ACC)
        g = g + dc
        tl.store(grad_z + here, f * g, mask=mask)
        tl.store(grad_f + here, (z - c_prev) * g, mask=mask)
        g = g - f * g
        dc, f, z = dc_next, f_next, z_next
    if HAS_C0:
        tl.store(grad_c0 + row * hidden + cols, g, mask=mask)


@functools.cache
def _kernels(interpret: bool) -> tuple:
    """(forward, backward), compiled for the GPU or run by Triton's interpreter."""
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction as wrap
    else:  # what `triton.jit` makes when TRITON_INTERPRET is unset; named, because `jit` reads the variable itself
        from triton.runtime.jit import JITFunction as wrap
    return wrap(_forward_kernel), wrap(_backward_kernel)


_TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


def _launch(which: int, like: Tensor, *args, has_c0: bool, acc: torch.dtype) -> None:
    """Run kernel `which` (0 forward, 1 backward) with `args`, its own arguments, over (batch rows, blocks of hidden
    units) of the [B, T, H] tensor `like`: compiled for its GPU or, with TRITON_INTERPRET=1, interpreted."""
    if like.device.type != "cuda" and not interpreting():
        raise ValueError(f"fo_pool(method='triton') needs CUDA tensors, got {like.device.type} ones: use "
                         "method='auto' (or 'sequential') on this device, or set TRITON_INTERPRET=1 to run the "
                         "kernels through Triton's interpreter (slow; for tests)")
    batch, _, hidden = like.shape
    block = min(BLOCK_MAX, triton.next_power_of_2(hidden))
    kernel = _kernels(interpreting())[which]
    with torch.cuda.device(like.device) if like.is_cuda else contextlib.nullcontext():
        kernel[(batch, triton.cdiv(hidden, block))](*args, HAS_C0=has_c0, BLOCK=block, ACC=_TL_DTYPES[acc],
                                                    num_warps=max(1, min(4, block // 32)))


class TritonFoPool(torch.autograd.Function):
    """fo-pooling by the two kernels; inputs in their own dtypes, c in the accumulation dtype `acc`."""

    @staticmethod
    def forward(ctx, forget: Tensor, candidate: Tensor, c0: Tensor | None, acc: torch.dtype) -> Tensor:
        forget, candidate = forget.contiguous(), candidate.contiguous()
        ctx.c0_dtype = None if c0 is None else c0.dtype
        c0 = None if c0 is None else c0.to(acc).contiguous()  # [B, H]: converted here, so c0 and c share a type
        batch, steps, hidden = forget.shape
        out = torch.empty(forget.shape, dtype=acc, device=forget.device)
        _launch(0, forget, forget, candidate, forget if c0 is None else c0, out, steps, hidden,
                has_c0=c0 is not None, acc=acc)  # forget stands in for a missing c0: never read
        ctx.save_for_backward(forget, candidate, c0, out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_c: Tensor):
        forget, candidate, c0, c = ctx.saved_tensors
        grad_c = grad_c.contiguous()
        batch, steps, hidden = forget.shape
        grad_f, grad_z = torch.empty_like(forget), torch.empty_like(candidate)
        grad_c0 = None if c0 is None else torch.empty(batch, hidden, dtype=c.dtype, device=c.device)
        _launch(1, forget, forget, candidate, forget if c0 is None else c0, c, grad_c, grad_f, grad_z,
                grad_f if grad_c0 is None else grad_c0, steps, hidden, has_c0=c0 is not None, acc=c.dtype)
        return grad_f, grad_z, None if c0 is None else grad_c0.to(ctx.c0_dtype), None

