"""bf16-mixed on any CPU: the LSTM runs in float32 under CPU autocast where this CPU's oneDNN has no bf16 LSTM.

Why: under `torch.autocast("cpu", dtype=torch.bfloat16)` (Lightning's `precision: bf16-mixed` on the CPU)
`nn.LSTM` runs as oneDNN's fused bf16 LSTM, and oneDNN has that only on CPUs with AVX-512 (measured with torch
2.14: `ONEDNN_MAX_CPU_ISA=AVX512_CORE` runs it, `AVX2` and `AVX2_VNNI` do not). On an AVX2-only CPU, e.g. an AMD
EPYC, the call fails with `RuntimeError: could not create a primitive descriptor for the LSTM forward propagation
primitive`. Everything else in the language-model path (embedding and its dropout, locked dropout, the QRNN's
Linear and fo-pooling, the tied decoder, the neural cache) runs under bf16 autocast there, forward and backward
(`tests/test_gpu_readiness.py` passes whole with `ONEDNN_MAX_CPU_ISA=AVX2`): only the LSTM needs a way round.

The rule: a tiny LSTM is run forward and backward under CPU bf16 autocast once per process (`cpu_bf16_lstm`);
if oneDNN refuses it with that error, every LSTM call on a CPU tensor under bf16 CPU autocast runs with autocast
off and its input and state cast to float32 (`run_lstm`), and one line says so (`FALLBACK_LINE`, logged once at
WARNING: with no handler set up, Python prints it to stderr as the bare line, among Lightning's own start-up
lines; a `warnings.warn` would add a file:line prefix and a source line). Any other error of the probe is
raised: it would be a real bug, not this CPU's limit.

GPUs are unaffected: cuDNN has bf16 LSTMs, and a CUDA tensor never reaches the probe or the float32 branch.

To see the fallback on a CPU that has a bf16 LSTM, emulate an AVX2-only one: set `ONEDNN_MAX_CPU_ISA=AVX2`
before torch is imported (`tests/nets/test_cpu_bf16.py` does, in a subprocess).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import nn

ONEDNN_NO_BF16_LSTM = "could not create a primitive descriptor for the LSTM"  # forward or backward
FALLBACK_LINE = ("bf16-mixed on this CPU: oneDNN has no bf16 LSTM without AVX-512, so the LSTM layers run in "
                 "float32 and the rest under bf16 autocast (GPUs unaffected)")

log = logging.getLogger(__name__)
_cpu_bf16_lstm: bool | None = None  # the probe's answer, once per process


def tiny_lstm_step() -> None:
    """A 4-wide LSTM's forward and backward under CPU bf16 autocast: what a bf16-mixed training step asks of oneDNN.

    Its weights are drawn under a forked RNG, so probing leaves the global random stream (dropout masks, data
    order) as it was; grad and inference mode are forced on/off so the probe works inside `torch.no_grad()` or
    `torch.inference_mode()` evaluation too.
    """
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        lstm = nn.LSTM(4, 4, batch_first=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output, _ = lstm(torch.zeros(1, 2, 4))
        output.float().sum().backward()


def probe_cpu_bf16_lstm(run: Callable[[], None] = tiny_lstm_step) -> bool:
    """True if `run` (by default a tiny LSTM step under CPU bf16 autocast) works, False if oneDNN has no bf16
    LSTM here. Only that oneDNN failure means "no": any other error is raised."""
    try:
        run()
    except RuntimeError as error:
        if ONEDNN_NO_BF16_LSTM not in str(error):
            raise
        return False
    return True


@torch.compiler.disable(reason="a one-time probe with a module-level cache and try/except")
def cpu_bf16_lstm() -> bool:
    """Whether this CPU's oneDNN runs an LSTM under bf16 autocast: probed on the first call, then remembered; the
    first "no" is said in one line (`FALLBACK_LINE`)."""
    global _cpu_bf16_lstm
    if _cpu_bf16_lstm is None:
        _cpu_bf16_lstm = probe_cpu_bf16_lstm()
        if not _cpu_bf16_lstm:
            log.warning(FALLBACK_LINE)
    return _cpu_bf16_lstm


def lstm_needs_float32(x: torch.Tensor) -> bool:
    """True for a CPU tensor under bf16 CPU autocast on a CPU without a bf16 LSTM. The device test comes first,
    so a CUDA input returns False before anything else is looked at (no probe, no autocast query)."""
    return (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and not cpu_bf16_lstm())


def float32_state(state: Any) -> Any:
    """An LSTM state (None, a tensor or a tuple/list of them) in float32: a state carried over from a bf16 batch
    would otherwise meet float32 weights."""
    if isinstance(state, torch.Tensor):
        return state.float()
    if isinstance(state, (list, tuple)):
        return type(state)(float32_state(s) for s in state)
    return state


def run_lstm(call: Callable[[torch.Tensor, Any], Any], x: torch.Tensor, state: Any) -> Any:
    """`call(x, state)` (an LSTM's forward), in float32 with CPU autocast off where `lstm_needs_float32(x)`.

    Every other case — any CUDA run, float32 runs, CPUs whose oneDNN has a bf16 LSTM — takes the first branch,
    which is exactly the call as it was before this module existed. The float32 branch returns float32 output
    and state; autocast casts them back to bf16 wherever the next op wants it.
    """
    if not lstm_needs_float32(x):
        return call(x, state)
    with torch.autocast("cpu", enabled=False):
        return call(x.float(), float32_state(state))
