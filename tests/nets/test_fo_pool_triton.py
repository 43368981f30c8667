"""The Triton fo-pool kernels, run on CPU tensors by Triton's interpreter (`TRITON_INTERPRET=1`), against the loop
and against Salesforce's `ForgetMult` (the seed's QRNN); compiled for real GPUs by Triton's own compiler (no GPU
needed); and how `method="auto"` takes them or falls back.

The interpreter runs the kernels' own code — masks, the loop over time, the one-step-ahead loads, the dtype
conversions — one program at a time in NumPy, so every shape here is small (it costs milliseconds per step).
"""
from __future__ import annotations

import logging

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed (it ships with torch's Linux wheels); the kernels "
                                     "cannot be built or interpreted without it")

from lightning_modules.nets import fo_pool as fo_pool_module  # noqa: E402
from lightning_modules.nets import fo_pool_triton  # noqa: E402
from lightning_modules.nets.fo_pool import choose_method, fo_pool, fo_pool_loop, triton_problem  # noqa: E402
from lightning_modules.nets.qrnn import QRNNLayer  # noqa: E402
from tests.nets.test_fo_pool import gates, value_and_grads  # noqa: E402

# (shape, c0 given): T = 1; the seed's bptt with H below one block; H = 130 across two blocks of 128, the second
# masked after 2 units; H = 1. The interpreter costs milliseconds per step, so T = 70 runs once.
CASES = [((2, 1, 3), True), ((2, 1, 3), False), ((3, 70, 5), True), ((2, 6, 130), True), ((2, 6, 130), False),
         ((1, 9, 1), False)]


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def triton_pool(forget, candidate, c0=None):
    return fo_pool(forget, candidate, c0, method="triton")


@pytest.mark.parametrize("shape, with_c0", CASES,
                         ids=["x".join(map(str, shape)) + ("-c0" if c0 else "-no_c0") for shape, c0 in CASES])
def test_kernels_match_the_loop_values_and_gradients(shape, with_c0):
    forget, candidate, c0 = gates(*shape)  # float64, gates near and at 0 and 1 included
    grad_out = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    if with_c0:
        ours = value_and_grads(triton_pool, forget, candidate, c0, grad_out)
        reference = value_and_grads(fo_pool_loop, forget, candidate, c0, grad_out)
    else:
        ours = value_and_grads(lambda f, z, c: triton_pool(f, z), forget, candidate, c0, grad_out)
        reference = value_and_grads(lambda f, z, c: fo_pool_loop(f, z, torch.zeros_like(c)), forget, candidate, c0,
                                    grad_out)
        assert ours[3] is None  # no c0, no gradient for it
        ours, reference = ours[:3], reference[:3]
    for name, a, b in zip(("c", "dforget", "dcandidate", "dc0"), ours, reference):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")


def salesforce_forget_mult(f: torch.Tensor, x: torch.Tensor, hidden_init: torch.Tensor | None = None) -> torch.Tensor:
    """`CPUForgetMult.forward` of salesforce/pytorch-qrnn (torchqrnn/forget_mult.py), transcribed: time first,
    h_t = f_t * x_t + (1 - f_t) * h_{t-1}, with no state added at all at the first step when there is none."""
    result = []
    forgets = f.split(1, dim=0)
    prev_h = hidden_init
    for i, h in enumerate((f * x).split(1, dim=0)):
        if prev_h is not None:
            h = h + (1 - forgets[i]) * prev_h
        h = h.view(h.size()[1:])
        result.append(h)
        prev_h = h
    return torch.stack(result)


@pytest.mark.parametrize("with_c0", [True, False], ids=["c0", "no_c0"])
def test_kernels_match_salesforce_forget_mult_in_float32(with_c0):
    """The seed's module, in its own layout ([T, B, H]) and dtype (its CUDA kernel took float32 only)."""
    g = torch.Generator().manual_seed(5)
    steps, batch, hidden = 35, 4, 19  # its own test's shapes: (35, 20, 650) scaled down, and (3, 7, 19)
    f = torch.sigmoid(torch.randn(steps, batch, hidden, generator=g)).requires_grad_()
    x = torch.tanh(torch.randn(steps, batch, hidden, generator=g)).requires_grad_()
    h0 = torch.randn(batch, hidden, generator=g).requires_grad_() if with_c0 else None
    theirs = salesforce_forget_mult(f, x, h0)
    theirs.pow(2).sum().backward()  # its own check's loss
    expected = [theirs.detach(), f.grad, x.grad] + ([h0.grad] if with_c0 else [])
    leaves = [t.detach().clone().requires_grad_() for t in (f, x) + ((h0,) if with_c0 else ())]
    ours = triton_pool(leaves[0].transpose(0, 1), leaves[1].transpose(0, 1), leaves[2] if with_c0 else None)
    ours.pow(2).sum().backward()
    got = [ours.detach().transpose(0, 1)] + [leaf.grad for leaf in leaves]
    for name, a, b in zip(("h", "dforget", "dx", "dhidden_init"), got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_bfloat16_is_read_as_is_and_accumulated_in_float32():
    forget, candidate, c0 = (t.bfloat16() for t in gates(2, 70, 8, seed=4))
    leaves = [t.clone().requires_grad_() for t in (forget, candidate, c0)]
    out = triton_pool(*leaves)
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and all(leaf.grad.dtype == torch.bfloat16 for leaf in leaves)
    exact = [t.double().requires_grad_() for t in (forget, candidate, c0)]
    reference = fo_pool_loop(*exact)
    reference.sum().backward()
    torch.testing.assert_close(out.double(), reference, rtol=1e-2, atol=1e-2)  # one bf16 rounding, not 70
    for leaf, exact_leaf in zip(leaves, exact):
        torch.testing.assert_close(leaf.grad.double(), exact_leaf.grad, rtol=2e-2, atol=2e-2)


def test_without_cuda_or_the_interpreter_it_says_what_to_do(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    forget, candidate, c0 = gates(2, 3, 4)
    with pytest.raises(ValueError, match="needs CUDA tensors, got cpu ones: use method='auto'.*TRITON_INTERPRET=1"):
        triton_pool(forget, candidate, c0)
    assert choose_method("auto", torch.device("cpu")) == "sequential"  # auto never takes it on a CPU


def test_asked_for_by_name_without_triton_it_says_what_to_do(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now fails, as where it is not installed
    monkeypatch.delitem(sys.modules, "lightning_modules.nets.fo_pool_triton")
    forget, candidate, c0 = gates(2, 3, 4)
    with pytest.raises(ValueError, match=r"needs Triton, which cannot be imported here .*or use method='auto'"):
        triton_pool(forget, candidate, c0)
    assert fo_pool(forget, candidate, c0).shape == forget.shape  # auto on a CPU needs no Triton


@pytest.mark.parametrize("capability", [80, 90], ids=["sm_80", "sm_90"])
def test_kernels_compile_for_a_real_gpu_without_one(capability):
    """Triton's own compiler (with its bundled ptxas) builds both kernels to GPU machine code for an A100 (sm_80)
    and an H100 (sm_90): what the interpreter accepts, the GPU compiler must accept too."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    forward, backward = fo_pool_triton._kernels(interpret=False)
    pointers = {"forward": ["forget", "candidate", "c0", "out"],
                "backward": ["forget", "candidate", "c0", "c", "grad_c", "grad_f", "grad_z", "grad_c0"]}
    for kernel, name in ((forward, "forward"), (backward, "backward")):
        for has_c0 in (True, False):
            signature = {p: "*bf16" if p in ("forget", "candidate") else "*fp32" for p in pointers[name]}
            signature.update(steps="i32", hidden="i32", HAS_C0="constexpr", BLOCK="constexpr", ACC="constexpr")
            source = ASTSource(kernel, signature, constexprs={"HAS_C0": has_c0, "BLOCK": 128, "ACC": tl.float32})
            compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options={"num_warps": 4})
            assert len(compiled.asm["cubin"]) > 0 and ".entry" in compiled.asm["ptx"]


def test_auto_takes_the_kernels_where_the_probe_passes(caplog):
    fo_pool_module._triton_problems.clear()
    with caplog.at_level(logging.WARNING):
        assert triton_problem(torch.device("cpu")) is None  # the real probe, interpreted: kernels vs the loop
    assert not caplog.records


def test_auto_falls_back_to_chunked_and_says_why_once(monkeypatch, caplog):
    """Triton missing (or a kernel that does not build): "chunked", said in one line, probed once per device."""
    cuda = torch.device("cuda", 0)
    probes = []

    def probe(device):
        probes.append(device)
        raise ImportError("No module named 'triton'")

    monkeypatch.setattr(fo_pool_module, "_probe_triton", probe)
    fo_pool_module._triton_problems.clear()
    with caplog.at_level(logging.WARNING):
        assert [choose_method("auto", cuda) for _ in range(3)] == ["chunked"] * 3
    assert probes == [cuda] and choose_method("triton", cuda) == "triton"  # asked for by name: taken as asked
    assert [r.getMessage() for r in caplog.records] == [
        "fo_pool on cuda:0: the Triton kernels cannot run here (ImportError: No module named 'triton'), so "
        "method='auto' takes 'chunked' (pure PyTorch, same results, more kernel launches)"]
    fo_pool_module._triton_problems.clear()


def test_the_probe_refuses_kernels_that_compute_wrong(monkeypatch, caplog):
    real = fo_pool_triton.TritonFoPool.apply
    monkeypatch.setattr(fo_pool_triton.TritonFoPool, "apply", lambda *args: real(*args) * 1.001)
    fo_pool_module._triton_problems.clear()
    with caplog.at_level(logging.WARNING):
        problem = triton_problem(torch.device("cpu"))  # the real probe, interpreted
    assert "the Triton kernels disagree with the loop on a tiny problem" in problem
    assert len(caplog.records) == 1 and problem in caplog.records[0].getMessage()
    fo_pool_module._triton_problems.clear()


def test_a_compiled_layer_runs_the_kernels_eagerly_with_eager_results():
    """Under torch.compile the kernels sit behind fo_pool's graph break, as the other methods: same values and
    gradients as the eager layer with the sequential method."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = QRNNLayer(4, 6, window=2, pool_method="triton")
    reference = QRNNLayer(4, 6, window=2, pool_method="sequential")
    reference.load_state_dict(layer.state_dict())
    compiled = torch.compile(layer, backend="eager", dynamic=True)  # dynamo alone decides what is traced
    x, state = torch.randn(2, 5, 4), (torch.randn(2, 6), torch.randn(2, 4))
    out, (c_last, _) = compiled(x, state)
    expected, (expected_c, _) = reference(x, state)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c_last, expected_c, rtol=1e-5, atol=1e-6)
    out.square().sum().backward()
    expected.square().sum().backward()
    for (name, p), q in zip(layer.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
    torch._dynamo.reset()
