"""scripts/tune_cache.py on a checkpoint written by cli.py: its grid computes what LanguageModel's own evaluation
computes with the cache (validation and test), it writes the table, heat-map and results, and logs them to W&B."""
from __future__ import annotations

import csv
import json

import pytest
import torch

import cli
from lightning_modules.neural_cache import NeuralCache
from scripts import tune_cache
from tests.datamodules.test_wikitext2 import write_corpus
from tests.lightning_modules.test_neural_cache import feed, stream, target_log_probs
from tests.test_cli_wikitext2 import tiny_config
from tests.wandb_records import logged_metrics

THETAS, LAMBDAS, WINDOWS = [0.3, 0.662], [0.1, 0.3], [10, 30]


@torch.no_grad()
def seed_validate(model, tokens: torch.Tensor, bptt: int) -> float:
    """sgugger/Adam-experiments' `my_validate` with its `TextReader`, transcribed: one stream (batch size 1), n //
    bptt chunks (a shorter tail is never read), the state carried, the loss summed and divided by bptt × chunks."""
    n = len(tokens)
    model.eval()
    model.hidden = None  # model.reset()
    total_loss, i = 0.0, 0
    for _ in range(n // bptt):  # while self.i < self.n - 1 and self.iter < len(self)
        if i >= n - 1:
            break
        seq_len = min(bptt, n - 1 - i)
        inputs, targets = tokens[i:i + seq_len][None], tokens[i + 1:i + 1 + seq_len][None]
        target_log_probs, _ = model.score(inputs, targets)
        total_loss -= target_log_probs.double().sum().item()
        i += bptt
    return float(torch.tensor(total_loss / (bptt * (n // bptt))).exp())


def evaluate(base: list[str], ckpt, stage: str, theta: float, lambdah: float, window: int) -> dict:
    """cli.py validate|test of the checkpoint with the cache at (θ, λ, window), in this process."""
    cache = ["--model.init_args.cache_theta", str(theta), "--model.init_args.cache_lambda", str(lambdah),
             "--model.init_args.cache_window", str(window), "--model.init_args.cache_in_validation", "true"]
    run = cli.main([*base, "--config", "configs/trainer/csv_only.yaml", *cache], run=False)
    run.model.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
    return getattr(run.trainer, stage)(run.model, datamodule=run.datamodule, verbose=False)[0]


def test_the_grid_equals_the_models_own_cached_evaluation_and_is_written_and_logged(tmp_path):
    corpus, root = write_corpus(tmp_path / "data"), tmp_path / "run"
    base = ["--config", "configs/wikitext2_lstm.yaml", "--config", str(tiny_config(tmp_path / "t.yaml", corpus, root))]
    cli.main(["fit", *base, "--config", "configs/trainer/csv_only.yaml", "--test_after_fit", "false"])
    ckpt = next(root.glob("csv/version_0/checkpoints/last.ckpt"))

    import wandb

    try:
        summary = tune_cache.main(["--ckpt_path", "last", *base, "--thetas", *map(str, THETAS),
                                   "--lambdas", *map(str, LAMBDAS), "--windows", *map(str, WINDOWS)])
    finally:
        wandb.finish()
    out = root / "csv" / "version_0" / "cache_tuning"
    rows = list(csv.DictReader((out / "grid.csv").open()))
    assert len(rows) == len(THETAS) * len(LAMBDAS) * len(WINDOWS) == summary["grid_points"]
    assert summary["best"]["val_ppl"] == min(float(r["val_ppl"]) for r in rows) < summary["val_ppl_no_cache"]
    assert (out / "heatmap.png").stat().st_size > 0 and json.loads((out / "results.json").read_text()) == summary

    row = next(r for r in rows if (float(r["theta"]), float(r["lambda"]), int(r["window"])) == (0.3, 0.1, 10))
    validated = evaluate(base, ckpt, "validate", 0.3, 0.1, 10)
    assert float(row["val_ppl"]) == pytest.approx(validated["val/ppl_cache"], rel=1e-5)  # the same quantity
    assert summary["val_ppl_no_cache"] == pytest.approx(validated["val/ppl"], rel=1e-5)
    best = summary["best"]
    assert len(summary["on_grid_edge"]) == 3  # two values per setting: whichever wins is an edge, and is reported
    tested = evaluate(base, ckpt, "test", best["theta"], best["lambda"], best["window"])
    assert summary["test"]["tuned_cache"]["ppl"] == pytest.approx(tested["test/ppl_cache"], rel=1e-5)
    assert summary["test"]["no_cache"] == pytest.approx(tested["test/ppl"], rel=1e-5)
    assert summary["test"]["checkpoint_cache"] == {**summary["test"]["checkpoint_cache"], "window": 30,
                                                   "theta": 0.662, "lambda": 0.1279}  # tiny_config's window
    counted = summary["test"]["seed_counted_tokens"]
    assert counted % 50 == 0 and summary["test"]["tokens"] - 50 < counted <= summary["test"]["tokens"]

    # The seed's my_validate, transcribed: what "seed positions" reports is what it averages over.
    run = cli.main([*base, "--config", "configs/trainer/csv_only.yaml"], run=False)
    run.model.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
    run.datamodule.setup("test")
    seed_ppl = seed_validate(run.model, run.datamodule.streams["test"], bptt=50)
    assert summary["test"]["no_cache_seed_positions"] == pytest.approx(seed_ppl, rel=1e-5)
    assert summary["test"]["no_cache_seed_positions"] != pytest.approx(summary["test"]["no_cache"], rel=1e-6)

    runs = list(root.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    assert logged_metrics(runs[0])["cache_tuning/best_val_ppl"] == [pytest.approx(best["val_ppl"])]


def test_a_best_value_on_the_grids_edge_is_named():
    grid = {"theta": [0.3, 1.0, 1.5], "lambda": [0.1, 0.2, 0.3], "window": [1000]}
    assert tune_cache.grid_edges({"theta": 1.0, "lambda": 0.2, "window": 1000}, grid) == []  # inside; one window
    assert tune_cache.grid_edges({"theta": 1.5, "lambda": 0.1, "window": 1000}, grid) == [
        "theta 1.5 is the largest tried", "lambda 0.1 is the smallest tried"]


@pytest.mark.parametrize("mixing", ["all", "after_window"])
def test_mixed_positions_are_those_the_neural_cache_mixes(mixing):
    probs, hidden, targets = stream(200, seed=4)
    sizes, window = [50, 50, 50, 50], 30
    got = feed(NeuralCache(window, 0.662, 0.2, mixing=mixing), probs, hidden, targets, sizes)
    mixed = got != target_log_probs(probs, targets)
    assert torch.equal(tune_cache.mixed_positions(200, window, 50, mixing), mixed)
