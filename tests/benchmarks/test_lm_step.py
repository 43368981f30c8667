"""The LM-step benchmark really trains both nets, from their seed configs, and reports a full split; no timing
is asserted here."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # benchmarks/ is not installed; plain `pytest` may not put the repo root on sys.path
    sys.path.insert(0, str(REPO))

from benchmarks import lm_step  # noqa: E402

TINY = dict(batch=2, seq_len=9, vocab=50, embedding=6, hidden=10, layers=3, repeats=2)
THREADS = lm_step.torch.get_num_threads()


@pytest.fixture(scope="module")
def result() -> dict:
    return lm_step.run(**TINY, threads=1)


def test_every_side_this_cpu_runs_is_timed_with_a_split_that_adds_up(result):
    for key, value in TINY.items():
        assert result[key] == value
    assert result["sides"] == ("awd_lstm", "qrnn_sequential", "qrnn_chunked") and result["qrnn_side"] == "qrnn_sequential"
    assert "needs a CUDA device" in result["not_run"]["qrnn_triton"]
    for side in result["sides"]:
        assert len(result["seconds"][side]) == TINY["repeats"] and result["ms"][side] > 0
        phases = result["phase_ms"][side]
        assert set(phases) == set(lm_step.PHASES) and all(ms > 0 for ms in phases.values())
    assert len(result["ratios"]) == TINY["repeats"] and result["ratio"] > 0
    assert result["passed"] == (result["ratio"] <= result["target"] == lm_step.TARGET_RATIO)


def test_every_net_computes_a_finite_loss_and_updates_every_weight(result):
    for side in result["sides"]:
        losses = result["losses"][side]
        assert len(losses) == 1 + TINY["repeats"] and all(math.isfinite(loss) for loss in losses)
        assert losses[0] == pytest.approx(math.log(TINY["vocab"]), rel=0.2)  # a fresh net: about uniform
        assert result["params_updated"][side] == result["param_tensors"][side] > 0
    assert result["params"]["qrnn_sequential"] < result["params"]["awd_lstm"]  # same sizes, fewer matrices
    # same weights, tokens and dropout masks: the fo-pool methods give the same first loss
    assert result["losses"]["qrnn_chunked"][0] == pytest.approx(result["losses"]["qrnn_sequential"][0], rel=1e-6)


def test_the_triton_side_runs_through_the_interpreter_when_asked(monkeypatch):
    pytest.importorskip("triton", reason="Triton is not installed: no triton side to run")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    tiny = dict(TINY, batch=1, seq_len=3, repeats=1, layers=2)
    result = lm_step.run(**tiny, threads=1)
    assert result["sides"] == lm_step.SIDES and result["not_run"] == {}
    assert result["losses"]["qrnn_triton"][0] == pytest.approx(result["losses"]["qrnn_sequential"][0], rel=1e-6)
    assert result["params_updated"]["qrnn_triton"] == result["param_tensors"]["qrnn_triton"]
    assert "| QRNN (triton) |" in lm_step.markdown(result)


def test_threads_are_set_for_the_run_and_restored_after(result):
    assert result["machine"]["torch_threads"] == 1 and lm_step.torch.get_num_threads() == THREADS


def test_settings_come_from_the_seed_configs():
    lstm = lm_step.build("awd_lstm", **{k: TINY[k] for k in ("vocab", "embedding", "hidden", "layers")})
    qrnn = lm_step.build("qrnn_chunked", **{k: TINY[k] for k in ("vocab", "embedding", "hidden", "layers")})
    assert lstm["clip"] == qrnn["clip"] == 0.12
    assert (lstm["module"].alpha, lstm["module"].beta, qrnn["module"].alpha, qrnn["module"].beta) == (3, 1.5, 2, 1)
    assert lstm["module"].net.layers[0].weight_drop == 0.5 and qrnn["module"].net.layers[0].weight_drop == 0.1
    assert [layer.window for layer in qrnn["module"].net.layers] == [2, 1, 1]
    assert {layer.pool_method for layer in qrnn["module"].net.layers} == {"chunked"}
    assert len(qrnn["module"].net.layers) == len(lstm["module"].net.layers) == TINY["layers"]
    for side in (lstm, qrnn):
        assert isinstance(side["optimizer"], lm_step.torch.optim.Adam)
        assert side["optimizer"].defaults["betas"] == (0.8, 0.99)


def test_markdown_reports_sizes_split_and_verdict(result):
    text = lm_step.markdown(result)
    assert text.startswith("## QRNN vs AWD-LSTM language-model training step")
    assert "[2, 9]" in text and "| AWD-LSTM |" in text and "| QRNN (sequential) |" in text
    assert "| QRNN (triton) | not run: needs a CUDA device" in text
    assert ("PASS" if result["passed"] else "FAIL") in text
