"""LanguageModel through a real Trainer: per-batch lr scaling, carried state, token-weighted perplexity, cache."""
from __future__ import annotations

import math
from functools import partial

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback

import cli
from datamodules import WikiText2DataModule
from lightning_modules import LanguageModel
from lightning_modules.nets import AWDLSTM
from optim import RNNOneCycleLR, WarmupCosineLR, WarmupStableDecayLR
from tests.datamodules.test_wikitext2 import write_corpus


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "data")


def data(root, **kwargs) -> WikiText2DataModule:
    return WikiText2DataModule(str(root), **{"batch_size": 4, "bptt": 12, "eval_batch_size": 1, "eval_bptt": 40,
                                             **kwargs})


def model(vocab_size: int, **kwargs) -> LanguageModel:
    torch.manual_seed(0)
    net = AWDLSTM(vocab_size, embedding_size=16, hidden_size=24, num_layers=2)
    return LanguageModel(net, optimizer=partial(torch.optim.Adam, lr=5e-3, betas=(0.8, 0.99)),
                         lr_scheduler=partial(RNNOneCycleLR), bptt=12, **kwargs)


def trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(**{"max_epochs": 1, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                         "enable_model_summary": False, "num_sanity_val_steps": 0, **kwargs})


class RecordSteps(Callback):
    """The lr each optimizer step really used, the scheduled lr, and the batch's sequence length."""

    def __init__(self):
        self.rows, self.seq_len = [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seq_len = batch[0].shape[1]
        self.hidden_before = pl_module.hidden

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        scheduled = trainer.lr_scheduler_configs[0].scheduler.get_last_lr()[0]
        self.rows.append((optimizer.param_groups[0]["lr"], scheduled, self.seq_len, self.hidden_before is None))


def test_each_batch_lr_is_scaled_by_its_length_and_state_is_carried(corpus):
    dm, recorder = data(corpus), RecordSteps()
    lm = model(dm.vocab_size)
    trainer(max_epochs=2, callbacks=[recorder], limit_val_batches=0).fit(lm, dm)
    assert len({seq_len for _, _, seq_len, _ in recorder.rows}) > 3  # random lengths really vary
    for used, scheduled, seq_len, _ in recorder.rows:
        assert used == pytest.approx(scheduled * seq_len / 12, rel=1e-12)
    per_epoch = len(recorder.rows) // 2
    fresh = [row[3] for row in recorder.rows]
    assert fresh == ([True] + [False] * (per_epoch - 1)) * 2  # reset at each epoch start, carried otherwise


@pytest.mark.parametrize("schedule", [WarmupCosineLR, WarmupStableDecayLR])
def test_a_chainable_torch_schedule_gets_its_own_lrs_despite_the_per_batch_scaling(corpus, schedule):
    """LinearLR and CosineAnnealingLR compute each lr from the group's current one: the scaled lr of a batch must
    not carry into the next (LanguageModel.optimizer_step puts the scheduled lr back before the scheduler steps)."""
    dm, recorder = data(corpus), RecordSteps()
    lm = model(dm.vocab_size)
    lm.scheduler_factory = partial(schedule, warmup_fraction=0.2)
    trainer(max_epochs=2, callbacks=[recorder], limit_val_batches=0).fit(lm, dm)
    alone = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=5e-3)
    reference = schedule(alone, total_steps=len(recorder.rows), warmup_fraction=0.2)
    expected = []
    for _ in recorder.rows:
        expected.append(alone.param_groups[0]["lr"])
        alone.step()
        reference.step()
    assert [scheduled for _, scheduled, _, _ in recorder.rows] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    for used, scheduled, seq_len, _ in recorder.rows:
        assert used == pytest.approx(scheduled * seq_len / 12, rel=1e-12)


def test_perplexity_is_exp_of_the_token_weighted_mean_loss(corpus):
    dm = data(corpus, eval_bptt=37)  # uneven chunks: a mean of batch perplexities would differ
    lm = model(dm.vocab_size, cache=False)
    metrics = trainer().validate(lm, dm, verbose=False)[0]
    lm.eval()
    total, count, hidden = 0.0, 0, None
    with torch.no_grad():
        for inputs, targets in dm.val_dataloader():
            out = lm.net(inputs, hidden)
            hidden = out.hidden
            total += F.cross_entropy(lm.net.decoder(out.output).flatten(0, 1), targets.flatten(), reduction="sum").item()
            count += targets.numel()
    assert count == len(dm.streams["valid"]) - 1
    assert metrics["val/ppl"] == pytest.approx(math.exp(total / count), rel=1e-4)
    assert "val/ppl_cache" not in metrics


def test_cache_perplexity_is_logged_at_test_time(corpus):
    dm = data(corpus)
    lm = model(dm.vocab_size, cache_window=20, cache_theta=0.5, cache_lambda=0.2)
    trainer(max_epochs=2, limit_val_batches=0).fit(lm, dm)
    metrics = trainer().test(lm, dm, verbose=False)[0]
    assert {"test/ppl", "test/ppl_cache", "test/loss"} <= set(metrics)
    assert metrics["test/ppl_cache"] != metrics["test/ppl"]


def test_cache_needs_a_single_evaluation_stream(corpus):
    dm = data(corpus, eval_batch_size=2)
    with pytest.raises(ValueError, match="set data.eval_batch_size 1"):
        trainer().test(model(dm.vocab_size), dm, verbose=False)


def test_cli_links_vocabulary_and_bptt(corpus, tmp_path):
    run = cli.main(["--config", "configs/wikitext2_lstm.yaml", "--data.data_dir", str(corpus), "--data.download",
                    "false", "--data.bptt", "33", "--model.init_args.net.init_args.hidden_size", "16",
                    "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                    "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert run.model.net.encoder.num_embeddings == run.datamodule.vocab_size == len(run.datamodule.vocab)
    assert run.model.bptt == 33


def test_cache_in_validation_logs_val_ppl_cache(corpus):
    dm = data(corpus)
    lm = model(dm.vocab_size, cache_window=15, cache_in_validation=True)
    metrics = trainer().validate(lm, dm, verbose=False)[0]
    assert {"val/ppl", "val/ppl_cache"} <= set(metrics) and metrics["val/ppl_cache"] != metrics["val/ppl"]
