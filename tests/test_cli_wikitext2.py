"""cli.py with the WikiText-2 configs: optimizer choices, and one end-to-end `fit` then `test --ckpt_path last`
with cache options, as subprocesses."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch
import yaml

import cli
from tests.conftest import REPO
from tests.datamodules.test_wikitext2 import write_corpus

TINY_LSTM = {"embedding_size": 16, "hidden_size": 24, "num_layers": 2}


def tiny_config(path, data_dir, root):
    path.write_text(yaml.safe_dump({
        "model": {"init_args": {"net": {"init_args": TINY_LSTM}, "cache_window": 30}},
        "data": {"init_args": {"data_dir": str(data_dir), "download": False, "batch_size": 4, "bptt": 12,
                               "eval_bptt": 50}},
        "trainer": {"max_epochs": 2, "default_root_dir": str(root), "log_every_n_steps": 1,
                    "enable_progress_bar": False},
    }))
    return path


@pytest.mark.parametrize("config", ["configs/wikitext2_lstm.yaml", "configs/wikitext2_qrnn.yaml"])
@pytest.mark.parametrize("optim_config, name, amsgrad, tag", [
    (None, "Adam", False, "l2-wd"),
    ("configs/optim/wikitext2_adamw.yaml", "AdamW", False, "decoupled-wd"),
    ("configs/optim/wikitext2_amsgrad.yaml", "Adam", True, "l2-wd"),
])
def test_language_model_configs_and_optimizer_choices(tmp_path, config, optim_config, name, amsgrad, tag):
    corpus = write_corpus(tmp_path / "data")
    extra = ["--config", optim_config] if optim_config else []
    run = cli.main(["--config", config, *extra, "--config", str(tiny_config(tmp_path / "t.yaml", corpus, tmp_path)),
                    "--model.init_args.net.init_args.num_layers", "2"], run=False)
    optimizer = run.model.optimizer_factory([torch.nn.Parameter(torch.zeros(1))])
    assert type(optimizer).__name__ == name and optimizer.defaults["amsgrad"] is amsgrad
    assert tag in run.trainer.loggers[1]._wandb_init["tags"]
    assert run.model.net.encoder.num_embeddings == run.datamodule.vocab_size
    assert run.trainer.gradient_clip_val == 0.12


def _metrics(path) -> dict[str, list[float]]:
    columns: dict[str, list[float]] = {}
    for row in csv.DictReader(path.open()):
        for key, value in row.items():
            if value:
                columns.setdefault(key, []).append(float(value))
    return columns


@pytest.mark.slow
def test_fit_then_test_from_last_with_cache_options(tmp_path):
    corpus, root = write_corpus(tmp_path / "data"), tmp_path / "run"
    base = ["--config", "configs/wikitext2_lstm.yaml", "--config", str(tiny_config(tmp_path / "t.yaml", corpus, root))]
    env = {**os.environ, "WANDB_MODE": "offline"}
    fit = subprocess.run([sys.executable, "cli.py", "fit", *base], cwd=REPO, capture_output=True, text=True,
                         timeout=600, env=env)
    assert fit.returncode == 0, fit.stderr[-3000:]
    metrics = _metrics(root / "csv" / "version_0" / "metrics.csv")
    assert len(metrics["val/ppl"]) == 2  # learning itself is tested on real text (test_wikitext_real_data.py)
    assert {"train/loss", "test/ppl", "test/ppl_cache", "lr-Adam", "lr-Adam-momentum"} <= set(metrics)
    assert metrics["lr-Adam-momentum"][0] == pytest.approx(0.8)  # the RNN 1cycle starts beta1 at 0.8
    state = torch.load(root / "csv" / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["WikiText2DataModule"]["vocab"][0] == (corpus / "wikitext-2" / "wiki.train.tokens").read_text().split()[0]

    # In this process: the command line is the fit's above; what this proves is the checkpoint and the options.
    cli.main(["test", *base, "--ckpt_path", "last", "--model.init_args.cache_window", "10",
              "--model.init_args.cache_lambda", "0.3"])
    tested = _metrics(root / "csv" / "version_1" / "metrics.csv")
    assert tested["test/ppl"][0] == pytest.approx(metrics["test/ppl"][0], rel=1e-5)  # same weights, same data
    assert tested["test/ppl_cache"][0] != pytest.approx(metrics["test/ppl_cache"][0])  # other cache settings
