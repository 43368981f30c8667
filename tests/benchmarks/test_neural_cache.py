"""The neural cache benchmark runs both sides on the same problem and they agree; timing is never asserted here."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # benchmarks/ is not installed; plain `pytest` may not put the repo root on sys.path
    sys.path.insert(0, str(REPO))

from benchmarks import neural_cache  # noqa: E402


def test_run_times_both_sides_and_they_compute_the_same_values():
    result = neural_cache.run(tokens=40, vocab=30, hidden=8, window=25, naive_tokens=12, repeats=1, tune_grid=False)
    assert (result["tokens"], result["vocab"], result["hidden"], result["window"]) == (40, 30, 8, 25)
    assert result["naive_tokens"] == result["compared"] == 12 and result["repeats"] == 1
    for side in ("vectorised", "naive", "naive_one_position"):
        assert len(result["seconds"][side]) == 1 and result["seconds"][side][0] > 0
    assert set(result["ms_per_token"]) == {"vectorised", "naive"} and len(result["ratios"]) == 1
    assert result["max_abs_diff"] < 1e-5  # float32: the same log-probabilities as pointer.py's loop
    assert result["cache_hits"] > 0  # some compared targets are in the window, so the cache part is exercised
    assert result["passed"] == (result["ratio"] >= result["target"]) and result["target"] == 20
    assert set(result["machine"]) >= {"cpu", "cores", "torch", "device"}
    text = neural_cache.markdown(result)
    assert text.startswith("## Neural cache pointer") and "| vectorised |" in text and "| naive |" in text


def test_synthetic_stream_is_consistent():
    data = neural_cache.synthetic_stream(history=10, tokens=300, vocab=50, hidden=4, keep_probs=260)
    assert data["history_hidden"].shape == (10, 4) and data["hidden"].shape == (300, 4)
    assert data["probs"].shape == (260, 50)  # spans two blocks of drawn logits
    torch.testing.assert_close(data["probs"].sum(1), torch.ones(260))
    from_probs = data["probs"].gather(1, data["targets"][:260, None]).squeeze(1).log()
    torch.testing.assert_close(from_probs, data["target_log_probs"][:260])


def test_grid_timing_runs_the_tuning_scripts_default_grid():
    grid = neural_cache.grid_timing(None, tokens=500, hidden=8, window=20)
    assert grid["points"] == 7 * 8 and grid["tokens"] == 500 and not grid["real_text"]
    assert grid["seconds"] > 0 and grid["seconds_per_point"] == grid["seconds"] / grid["points"]
