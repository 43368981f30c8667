"""The fo-pooling benchmark runs every side on the same problem and they agree; timing is never asserted here."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # benchmarks/ is not installed; plain `pytest` may not put the repo root on sys.path
    sys.path.insert(0, str(REPO))

from benchmarks import qrnn_recurrence  # noqa: E402


@pytest.mark.parametrize("interpret", [False, True], ids=["cpu", "interpreted_triton"])
def test_run_times_every_side_and_they_compute_the_same_values(monkeypatch, interpret):
    if interpret:
        pytest.importorskip("triton", reason="Triton is not installed: no triton side to run")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    result = qrnn_recurrence.run(batch=3, seq_len=11, hidden=5, repeats=1)
    assert (result["batch"], result["seq_len"], result["hidden"], result["repeats"]) == (3, 11, 5, 1)
    assert result["auto_method"] == "sequential"  # on a CPU, interpreter or not
    if interpret:
        assert result["sides"] == qrnn_recurrence.SIDES and result["not_run"] == {} and result["interpreted"]
    else:
        assert "triton" not in result["sides"] and "needs a CUDA device" in result["not_run"]["triton"]
    for side in result["sides"]:
        assert len(result["seconds"][side]) == 1 and result["ms"][side] > 0
        assert result["max_abs_diff"][side] < 1e-5  # same outputs and gradients as the loop (float32)
    assert result["max_abs_diff"]["loop"] == 0
    assert result["speedup"]["loop"] == pytest.approx(1.0)
    assert result["ratio"] == result["speedup"][result["auto_method"]] > 0
    assert result["passed"] == (result["ratio"] >= result["target"])
    assert set(result["machine"]) >= {"cpu", "cores", "torch", "device"}
    # memory traffic: 9 float32 tensors of [3, 11, 5] moved in each side's median time, against the copy rate
    assert result["essential_bytes"] == qrnn_recurrence.essential_bytes(3, 11, 5) == 9 * 3 * 11 * 5 * 4
    for side in result["sides"]:
        assert result["bytes_per_s"][side] == pytest.approx(result["essential_bytes"] / (result["ms"][side] / 1e3))
        assert result["bandwidth_fraction"][side] == pytest.approx(result["bytes_per_s"][side]
                                                                   / result["copy_bytes_per_s"])
    assert "of the copy bandwidth" in qrnn_recurrence.markdown(result)
    text = qrnn_recurrence.markdown(result)
    assert text.startswith("## QRNN fo-pooling recurrence")
    assert all(f"| {side} |" in text for side in qrnn_recurrence.SIDES) and "[3, 11, 5]" in text
    assert ("The triton side ran through Triton's interpreter" in text) == interpret


def test_synthetic_gates_are_gates():
    forget, candidate, c0, grad = qrnn_recurrence.synthetic_gates(2, 4, 3, qrnn_recurrence.torch.device("cpu"))
    assert forget.shape == candidate.shape == grad.shape == (2, 4, 3) and c0.shape == (2, 3)
    assert 0 < forget.min() and forget.max() < 1 and -1 < candidate.min() and candidate.max() < 1
