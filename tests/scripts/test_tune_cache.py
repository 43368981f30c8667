"""scripts/tune_cache.py on a checkpoint written by cli.py: its grid computes what LanguageModel's own evaluation
computes with the cache (validation and test), it writes the table, heat-map and results, and logs them to W&B;
the checkpoint alone, or with its run's config.yaml, names the same model and data as the task's configs do."""
from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

import cli
from cli_resume import RUN_KEY
from lightning_modules.neural_cache import NeuralCache
from scripts import tune_cache
from tests.datamodules.test_wikitext2 import write_corpus
from tests.lightning_modules.test_neural_cache import feed, stream, target_log_probs
from tests.test_cli_wikitext2 import tiny_config
from tests.wandb_records import logged_metrics

THETAS, LAMBDAS, WINDOWS = [0.3, 0.662], [0.1, 0.3], [10, 30]
GRID = ["--thetas", *map(str, THETAS), "--lambdas", *map(str, LAMBDAS), "--windows", *map(str, WINDOWS)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny AWD-LSTM fitted on the generated corpus (CSV logger only, so its run record holds no W&B logger), then
    tuned as `tune_cache.py` was always called: the task's configs and the fit's overrides, `--ckpt_path last`, and
    the task's W&B logger. One fit for every test here that needs a trained model."""
    tmp = tmp_path_factory.mktemp("tune_cache")
    corpus, root = write_corpus(tmp / "data"), tmp / "run"
    base = ["--config", "configs/wikitext2_lstm.yaml", "--config", str(tiny_config(tmp / "t.yaml", corpus, root))]
    cli.main(["fit", *base, "--config", "configs/trainer/csv_only.yaml", "--test_after_fit", "false"])
    import wandb

    try:
        summary = tune_cache.main(["--ckpt_path", "last", *base, *GRID])
    finally:
        wandb.finish()
    run_dir = root / "csv" / "version_0"
    return {"tmp": tmp, "corpus": corpus, "root": root, "base": base, "run_dir": run_dir,
            "ckpt": run_dir / "checkpoints" / "last.ckpt", "summary": summary}


def tune_from_the_command_line(monkeypatch, args: list[str]) -> dict:
    """`python scripts/tune_cache.py ARGS`, in this process: the arguments on sys.argv, main() reading them."""
    monkeypatch.setattr(sys, "argv", ["scripts/tune_cache.py", *args])
    return tune_cache.main()


def assert_the_same_tuning(summary: dict, reference: dict) -> None:
    """The same best (θ, λ, window) and the same perplexities: the same model read the same data."""
    assert Path(summary["checkpoint"]).resolve() == Path(reference["checkpoint"]).resolve()
    assert {k: summary["best"][k] for k in ("theta", "lambda", "window")} == {
        k: reference["best"][k] for k in ("theta", "lambda", "window")}
    assert summary["best"]["val_ppl"] == pytest.approx(reference["best"]["val_ppl"], rel=1e-6)
    assert summary["val_ppl_no_cache"] == pytest.approx(reference["val_ppl_no_cache"], rel=1e-6)
    for name in ("no_cache", "no_cache_seed_positions"):
        assert summary["test"][name] == pytest.approx(reference["test"][name], rel=1e-6)
    for name in ("checkpoint_cache", "tuned_cache"):
        assert summary["test"][name] == pytest.approx(reference["test"][name], rel=1e-6)


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


def test_the_grid_equals_the_models_own_cached_evaluation_and_is_written_and_logged(trained):
    base, root, ckpt, summary = trained["base"], trained["root"], trained["ckpt"], trained["summary"]
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


@pytest.mark.parametrize("way", ["the checkpoint alone", "the run's config.yaml", "the task's configs"])
def test_every_way_of_naming_the_model_tunes_the_same_and_lightning_gives_no_argv_warning(trained, way, monkeypatch,
                                                                                         recwarn):
    """The checkpoint alone (its run record), with its run's config.yaml (a `cli.py fit` dump, `ckpt_path` and
    all), or the task's configs with the fit's overrides: one model, one data, one tuning. Run as from a shell,
    LightningCLI must not warn that it was given arguments besides sys.argv's."""
    named = {"the checkpoint alone": [],
             "the run's config.yaml": ["--config", str(trained["run_dir"] / "config.yaml")],
             "the task's configs": [*trained["base"], "--config", "configs/trainer/csv_only.yaml"]}[way]
    summary = tune_from_the_command_line(monkeypatch, ["--ckpt_path", str(trained["ckpt"]), *named, *GRID,
                                                       "--out", str(trained["tmp"] / way)])
    assert_the_same_tuning(summary, trained["summary"])
    assert json.loads((trained["tmp"] / way / "results.json").read_text()) == summary
    assert [str(w.message) for w in recwarn if "sys.argv" in str(w.message)] == []


def test_the_checkpoint_alone_finds_moved_data_with_a_data_dir_override(trained, monkeypatch, capsys):
    """A user moves the data: the record's data_dir no longer exists, `--data.data_dir` after the checkpoint wins."""
    moved = trained["tmp"] / "moved"
    shutil.move(trained["corpus"], moved)
    try:
        alone = ["--ckpt_path", str(trained["ckpt"]), *GRID, "--out", str(trained["tmp"] / "moved_out")]
        with pytest.raises(SystemExit) as stopped:
            tune_cache.main(alone)  # the record's data_dir: gone, and said so
        assert stopped.value.code == 2 and f"{trained['corpus']}/wikitext-2" in capsys.readouterr().err
        summary = tune_cache.main([*alone, "--data.data_dir", str(moved)])
    finally:
        shutil.move(moved, trained["corpus"])
    assert_the_same_tuning(summary, trained["summary"])


def test_help_names_the_three_ways(capsys):
    with pytest.raises(SystemExit) as stopped:
        tune_cache.main(["--help"])
    shown = capsys.readouterr().out
    assert stopped.value.code == 0
    assert "python scripts/tune_cache.py --ckpt_path RUN/checkpoints/last.ckpt\n" in shown  # alone
    assert "--ckpt_path RUN/checkpoints/last.ckpt --config RUN/config.yaml" in shown
    assert "--config configs/wikitext2_lstm.yaml --ckpt_path last" in shown
    assert "--data.data_dir" in shown  # overrides still follow


def without_run_record(checkpoint: dict) -> dict:
    return {key: value for key, value in checkpoint.items() if key != RUN_KEY}


def as_an_image_classifiers(checkpoint: dict) -> dict:
    """What an image checkpoint holds that a language model's does not: its class, no vocabulary (its run record,
    kept, would otherwise rebuild the run)."""
    hyper = {**checkpoint["hyper_parameters"], "_class_path": "lightning_modules.ImageClassifier"}
    return {**{k: v for k, v in checkpoint.items() if k != "WikiText2DataModule"}, "hyper_parameters": hyper}


@pytest.mark.parametrize("change, sentence", [
    (without_run_record, "carries no run record and has no config.yaml beside its checkpoints/ folder, so its run "
                         "cannot be rebuilt from it: pass the configs and overrides it was trained with too"),
    (as_an_image_classifiers, "was saved by ImageClassifier, not by a LanguageModel: pass a language model's "
                              "checkpoint"),
])
def test_a_checkpoint_the_run_cannot_be_rebuilt_from_is_named_with_the_fix(trained, tmp_path, capsys, change,
                                                                           sentence):
    path = tmp_path / "checkpoints" / "model.ckpt"  # no config.yaml beside checkpoints/
    path.parent.mkdir()
    torch.save(change(torch.load(trained["ckpt"], weights_only=True)), path)
    with pytest.raises(SystemExit) as stopped:
        tune_cache.main(["--ckpt_path", str(path)])
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and error.startswith(f"cli.py: error: ckpt_path {path} {sentence}")
    assert error.count("\n") == 1 and not (tmp_path / "cache_tuning").exists()  # one sentence, nothing written


def test_last_without_a_config_says_it_needs_one(capsys):
    with pytest.raises(SystemExit):
        tune_cache.main(["--ckpt_path", "last"])
    assert "--ckpt_path last needs the task's --config" in capsys.readouterr().err


def test_a_runs_saved_config_starts_a_wandb_run_of_its_own(trained, tmp_path):
    """A fit's config.yaml names the fit's W&B run (its id): tuning from it logs to a run of its own, same group."""
    import yaml

    import cli
    from scripts.saved_run import accept_saved_configs

    saved = yaml.safe_load((trained["run_dir"] / "config.yaml").read_text())
    saved["trainer"]["logger"].append({"class_path": "lightning_modules.loggers.ResumableWandbLogger", "init_args": {
        "id": "fit00001", "resume_step": 12, "offline": True, "project": "superconvergence", "group": "wikitext2"}})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(saved))
    run = cli.main(accept_saved_configs(["--config", str(path)]), run=False)
    wandb_init = run.trainer.loggers[1]._wandb_init
    assert wandb_init["id"] is None and wandb_init["group"] == "wikitext2" and run.trainer.loggers[1].resume_step is None
