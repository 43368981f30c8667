"""bf16-mixed on any CPU (`lightning_modules/nets/cpu_bf16.py`): both branches forced whatever CPU runs the suite,
the probe's rule, and the real probe on an emulated AVX2-only CPU (oneDNN capped with `ONEDNN_MAX_CPU_ISA=AVX2`),
where a bf16 LSTM under CPU autocast fails as it does on an AMD EPYC without AVX-512."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.nets import cpu_bf16
from lightning_modules.nets.awd_lstm import AWDLSTM

REPO = Path(__file__).resolve().parents[2]
ONEDNN_ERROR = ("could not create a primitive descriptor for the LSTM forward propagation primitive. Run workload "
                "with environment variable ONEDNN_VERBOSE=all to get additional diagnostic information.")


def small() -> AWDLSTM:
    torch.manual_seed(0)
    return AWDLSTM(vocab_size=50, embedding_size=8, hidden_size=12, num_layers=2)


def record_lstm_calls(net: AWDLSTM) -> list[dict]:
    """Per nn.LSTM call: whether CPU autocast was on inside it, and its input and output dtypes."""
    calls = []
    for layer in net.layers:
        layer.lstm.register_forward_hook(lambda m, inputs, out: calls.append(
            {"autocast": torch.is_autocast_enabled("cpu"), "input": inputs[0].dtype, "output": out[0].dtype}))
    return calls


@pytest.fixture
def probe_says(monkeypatch):
    """Force the probe's answer for this test (the once-per-process cache starts empty); returns the probe calls."""
    calls = []

    def force(answer: bool) -> list[bool]:
        monkeypatch.setattr(cpu_bf16, "_cpu_bf16_lstm", None)
        monkeypatch.setattr(cpu_bf16, "probe_cpu_bf16_lstm", lambda: calls.append(answer) or answer)
        return calls
    return force


def test_without_a_bf16_lstm_the_awd_lstm_trains_and_evaluates_with_float32_lstms(probe_says, caplog):
    probes = probe_says(False)
    net = small().train()
    calls = record_lstm_calls(net)
    decoded = []
    net.decoder.register_forward_hook(lambda m, inputs, out: decoded.append(out.dtype))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in net.parameters()]
    tokens = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(0))
    state = [tuple(torch.zeros(1, 3, size, dtype=torch.bfloat16) for _ in range(2)) for size in (12, 8)]
    with caplog.at_level(logging.WARNING, logger=cpu_bf16.__name__), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(tokens[:, :-1], state)  # a bf16 state, as a batch on a CPU with a bf16 LSTM would carry
        loss = F.cross_entropy(net.decoder(out.output).float().flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        net.eval()
        with torch.no_grad():
            evaluated = net(tokens, out.hidden)
            layer, x = net.layers[0], net.encoder(tokens)
            under_autocast, _ = layer(x)
        with torch.autocast("cpu", enabled=False), torch.no_grad():
            plain, _ = layer.lstm(x)

    assert calls[:2] == [{"autocast": False, "input": torch.float32, "output": torch.float32}] * 2  # training
    assert all(call == calls[0] for call in calls)  # evaluation too
    assert decoded == [torch.bfloat16] and out.raw_output.dtype == torch.float32  # the rest stays in bf16
    assert torch.isfinite(loss)
    for layer in net.layers:  # gradients reached every LSTM weight, through weight drop's mask too
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.lstm.parameters())
    assert all(not torch.equal(b, p) for b, p in zip(before, net.parameters()))
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert evaluated.raw_output.dtype == torch.float32 and torch.isfinite(evaluated.raw_output).all()
    assert torch.equal(under_autocast, plain)  # the float32 LSTM's own output, bit for bit
    assert probes == [False]  # probed once ...
    said = [r.getMessage() for r in caplog.records if r.name == cpu_bf16.__name__]
    assert said == [cpu_bf16.FALLBACK_LINE] and "\n" not in said[0]  # ... and said once, in one line


def test_with_a_bf16_lstm_the_lstm_runs_under_autocast_as_before(probe_says, caplog):
    probes = probe_says(True)
    net = small().train()

    class Reached(Exception):
        pass

    seen = []

    def stop_at_lstm(module, inputs):
        seen.append((torch.is_autocast_enabled("cpu"), inputs[0].dtype))
        raise Reached  # nothing CPU-specific runs: this proves only how the LSTM is called

    net.layers[0].lstm.register_forward_pre_hook(stop_at_lstm)
    tokens = torch.randint(0, 50, (2, 5))
    with caplog.at_level(logging.WARNING, logger=cpu_bf16.__name__), torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(Reached):
            net(tokens)
        net.eval()
        with torch.no_grad(), pytest.raises(Reached):
            net(tokens)
    assert seen == [(True, torch.float32)] * 2  # autocast on: the LSTM casts to bf16 itself, as before
    assert probes == [True] and caplog.records == []  # probed once, nothing said


def test_nothing_is_probed_outside_cpu_bf16_autocast(probe_says):
    probes = probe_says(False)
    cpu = torch.zeros(1, 2, 4)
    assert not cpu_bf16.lstm_needs_float32(cpu)  # float32 run: no autocast
    with torch.autocast("cpu", dtype=torch.float16):
        assert not cpu_bf16.lstm_needs_float32(cpu)  # another autocast dtype
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a non-CPU tensor (CUDA's path) stops at the device test
        assert not cpu_bf16.lstm_needs_float32(torch.zeros(1, 2, 4, device="meta"))
    assert probes == []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cpu_bf16.lstm_needs_float32(cpu) and cpu_bf16.lstm_needs_float32(cpu)
    assert probes == [False]  # once per process


def test_probe_says_no_only_for_onednns_missing_bf16_lstm():
    def fails(message: str):
        def run() -> None:
            raise RuntimeError(message)
        return run

    assert cpu_bf16.probe_cpu_bf16_lstm(fails(ONEDNN_ERROR)) is False
    assert cpu_bf16.probe_cpu_bf16_lstm(fails(ONEDNN_ERROR.replace("forward", "backward"))) is False
    assert cpu_bf16.probe_cpu_bf16_lstm(lambda: None) is True
    with pytest.raises(RuntimeError, match="out of memory"):
        cpu_bf16.probe_cpu_bf16_lstm(fails("DefaultCPUAllocator: can't allocate memory: out of memory"))
    with pytest.raises(RuntimeError, match="primitive descriptor for the convolution"):
        cpu_bf16.probe_cpu_bf16_lstm(fails("could not create a primitive descriptor for the convolution"))
    def bug() -> None:
        raise ValueError("not a RuntimeError at all")

    with pytest.raises(ValueError):
        cpu_bf16.probe_cpu_bf16_lstm(bug)


def test_real_probe_leaves_the_random_stream_and_works_inside_inference_mode():
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    with torch.inference_mode():  # a first CPU bf16 call may come from evaluation
        answer = cpu_bf16.probe_cpu_bf16_lstm()
    assert isinstance(answer, bool)
    assert torch.equal(torch.rand(3), expected)  # the probe's LSTM init drew from a forked generator


EMULATED = """
import json, torch
from lightning_modules.nets import cpu_bf16
from lightning_modules.nets.awd_lstm import AWDLSTM
try:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.nn.LSTM(4, 4)(torch.zeros(2, 1, 4))
    plain = "ran"
except RuntimeError as error:
    plain = str(error)
torch.manual_seed(0)
net = AWDLSTM(vocab_size=50, embedding_size=8, hidden_size=12, num_layers=2)
before = [p.detach().clone() for p in net.parameters()]
tokens = torch.randint(0, 50, (2, 6))
with torch.autocast("cpu", dtype=torch.bfloat16):
    out = net(tokens)
    net.decoder(out.output).float().logsumexp(-1).mean().backward()
torch.optim.SGD(net.parameters(), lr=0.1).step()
print(json.dumps({"plain": plain, "probe": cpu_bf16.probe_cpu_bf16_lstm(), "output": str(out.raw_output.dtype),
                  "moved": sum(not torch.equal(b, p) for b, p in zip(before, net.parameters())),
                  "tensors": len(before)}))
"""


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_on_an_emulated_avx2_only_cpu_the_real_probe_says_no_and_the_awd_lstm_still_trains():
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}  # read by oneDNN when torch loads: a fresh process
    done = subprocess.run([sys.executable, "-c", EMULATED], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert cpu_bf16.ONEDNN_NO_BF16_LSTM in result["plain"]  # the emulation reproduces the failure ...
    assert result["probe"] is False and result["output"] == "torch.float32"  # ... and the net goes round it
    assert result["moved"] == result["tensors"]  # one step moved every parameter
    assert done.stderr.count(cpu_bf16.FALLBACK_LINE) == 1  # what a user sees on stderr, once
