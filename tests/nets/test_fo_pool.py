"""fo-pooling against the plain loop: values and gradients of the pure-PyTorch methods, finite differences, dtypes,
arguments, and how `method="auto"` chooses (the Triton kernels' own tests: `test_fo_pool_triton.py`)."""
from __future__ import annotations

import pytest
import torch

from lightning_modules.nets.fo_pool import fo_pool, fo_pool_loop

METHODS = ["sequential", "chunked"]
SHAPES = [(2, 1, 3), (3, 2, 4), (3, 70, 5), (2, 129, 4)]  # T = 1, tiny, the seed's bptt, not a power of two


def gates(batch: int, steps: int, hidden: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 forget gates mixing ordinary values with ones near (and at) 0 and 1; candidates; an initial state."""
    g = torch.Generator().manual_seed(seed)
    forget = torch.rand(batch, steps, hidden, generator=g, dtype=torch.float64)
    pick = torch.randint(0, 6, forget.shape, generator=g)
    forget = torch.where(pick == 0, 1e-7 * forget, forget)  # nearly closed: the state is kept
    forget = torch.where(pick == 1, 1 - 1e-7 * forget, forget)  # nearly open: the state is overwritten
    forget = torch.where(pick == 2, (forget > 0.5).double(), forget)  # exactly 0 or 1
    candidate = torch.randn(batch, steps, hidden, generator=g, dtype=torch.float64)
    c0 = torch.randn(batch, hidden, generator=g, dtype=torch.float64)
    return forget, candidate, c0


def value_and_grads(fn, forget, candidate, c0, grad_out):
    leaves = [t.clone().requires_grad_() for t in (forget, candidate, c0)]
    out = fn(*leaves)
    out.backward(grad_out)
    return [out.detach()] + [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", SHAPES)
def test_fo_pool_matches_loop_values_and_gradients(method, shape):
    forget, candidate, c0 = gates(*shape)
    grad_out = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = value_and_grads(lambda f, z, c: fo_pool(f, z, c, method=method), forget, candidate, c0, grad_out)
    reference = value_and_grads(fo_pool_loop, forget, candidate, c0, grad_out)
    for name, a, b in zip(("c", "dforget", "dcandidate", "dc0"), ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("method", METHODS)
def test_fo_pool_gradcheck(method):
    """Finite differences, independent of the loop: the hand-written backward is the true derivative."""
    forget, candidate, c0 = gates(2, 7, 3, seed=2)
    forget = forget.clamp(0.05, 0.95)  # keep finite differences inside (0, 1)
    inputs = tuple(t.requires_grad_() for t in (forget, candidate, c0))
    assert torch.autograd.gradcheck(lambda f, z, c: fo_pool(f, z, c, method=method), inputs)


@pytest.mark.parametrize("method", METHODS)
def test_fo_pool_default_state_is_zero_and_only_needed_grads(method):
    forget, candidate, _ = gates(2, 9, 3, seed=3)
    zeros = torch.zeros(2, 3, dtype=torch.float64)
    torch.testing.assert_close(fo_pool(forget, candidate, method=method), fo_pool_loop(forget, candidate, zeros))
    z = candidate.clone().requires_grad_()  # forget and c0 need no gradient: only dz is computed
    fo_pool(forget, z, method=method).sum().backward()
    expected = value_and_grads(fo_pool_loop, forget, candidate, zeros, torch.ones_like(candidate))[2]
    torch.testing.assert_close(z.grad, expected)


def test_fo_pool_bfloat16_accumulates_in_float32():
    forget, candidate, c0 = gates(2, 70, 8, seed=4)
    out = fo_pool(forget.bfloat16(), candidate.bfloat16(), c0.bfloat16())
    assert out.dtype == torch.bfloat16
    reference = fo_pool_loop(forget.bfloat16().double(), candidate.bfloat16().double(), c0.bfloat16().double())
    torch.testing.assert_close(out.double(), reference, rtol=1e-2, atol=1e-2)  # one bf16 rounding, not 70


def test_fo_pool_rejects_bad_arguments():
    forget, candidate, c0 = gates(2, 3, 4)
    with pytest.raises(ValueError, match="method"):
        fo_pool(forget, candidate, c0, method="scan")
    with pytest.raises(ValueError, match="c0"):
        fo_pool(forget, candidate, c0[:, :2])
    with pytest.raises(ValueError, match="forget and candidate"):
        fo_pool(forget, candidate[:, :2])
