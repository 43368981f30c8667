"""The compile/channels_last benchmark runs every side on the same problem and they agree; timing is never asserted."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # benchmarks/ is not installed; plain `pytest` may not put the repo root on sys.path
    sys.path.insert(0, str(REPO))

from benchmarks import compile_wrn  # noqa: E402


def test_run_times_every_side_and_they_compute_the_same_step(monkeypatch):
    # The harness, not inductor: compiled sides go through dynamo with the aot_eager backend (no code generation,
    # a fifth of the time). Inductor's agreement with eager is tests/lightning_modules/test_compile.py's.
    monkeypatch.setattr(compile_wrn, "compile_net", lambda net: net.compile(backend="aot_eager"))
    # the WRN of tests/lightning_modules/test_compile.py at another batch size: small graphs to compile
    result = compile_wrn.run(batch=4, size=32, warmup=2, repeats=2, steps=1,
                             wrn=dict(num_groups=2, widen_factor=1))
    assert (result["batch"], result["repeats"], result["steps"]) == (4, 2, 1)
    assert result["wrn"] == {**compile_wrn.WRN_CPU, "num_groups": 2, "widen_factor": 1}
    for side in compile_wrn.SIDES:
        assert len(result["seconds"][side]) == 2 and result["ms"][side] > 0
        assert result["first_step_s"][side] > 0
        # the first step of every side: same weights, same batch, so the same logits and gradients (float32)
        assert result["max_abs_diff"][side]["logits"] < 1e-5
        assert result["max_abs_diff"][side]["grads"] < 1e-4
    assert result["max_abs_diff"]["eager"] == {"logits": 0, "grads": 0}
    assert result["speedup"]["eager"] == pytest.approx(1.0)
    assert set(result["compile_s"]) == {"compiled", "compiled+channels_last"}
    assert set(result["machine"]) >= {"cpu", "cores", "torch", "device"}
    text = compile_wrn.markdown(result)
    assert text.startswith("## WRN training step on the CPU")
    assert all(f"| {side} |" in text for side in compile_wrn.SIDES) and "batch of 4" in text
