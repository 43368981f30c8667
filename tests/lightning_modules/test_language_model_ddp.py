"""The language model under DDP (2 CPU processes, gloo): distinct stream parts, identical step counts."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from tests.datamodules.test_wikitext2 import write_corpus
from tests.lightning_modules.test_language_model import data, model


class RecordRank(Callback):
    """Each rank writes how many steps it took, its batch lengths and the first tokens it saw."""

    def __init__(self, folder):
        self.folder, self.lengths, self.first = folder, [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lengths.append(batch[0].shape[1])
        if self.first is None:
            self.first = batch[0][:, :5].clone()

    def on_train_end(self, trainer, pl_module):
        torch.save({"steps": trainer.global_step, "lengths": self.lengths, "first": self.first},
                   self.folder / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_ranks_read_distinct_parts_and_take_the_same_steps(tmp_path):
    dm = data(write_corpus(tmp_path / "data"))
    # ddp_fork: the two ranks are forked from this process, so they inherit its imports instead of
    # importing torch and Lightning again (~7 s a process on one core); gloo and the ranks are as under DDP.
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp_fork", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=[RecordRank(tmp_path)])
    trainer.fit(model(dm.vocab_size), dm)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert rank0["steps"] == rank1["steps"] > 0 and rank0["lengths"] == rank1["lengths"]
    assert len(set(rank0["lengths"])) > 1  # random lengths, drawn identically on both ranks
    assert not torch.equal(rank0["first"], rank1["first"])  # each rank reads its own part of the stream
