"""Fine-tuning stages under DDP (2 CPU processes, gloo): the body unfrozen in stage 2 must be synchronised."""
from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from tests.lightning_modules.test_finetuning import cars_data, cars_model
from optim import FinetuneStage


class SaveBodyPerRank(Callback):
    """Each rank writes its body weights at the end, so the test can compare the ranks."""

    def __init__(self, folder: Path):
        self.folder = folder

    def on_train_end(self, trainer, pl_module):
        state = {k: v.detach().cpu() for k, v in pl_module.net.body.state_dict().items() if "running" not in k}
        torch.save(state, self.folder / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_stage_two_under_ddp_keeps_the_ranks_in_sync(cars_root, tmp_path):
    model = cars_model([FinetuneStage(epochs=1, lr=1e-2, frozen_groups=2),
                        FinetuneStage(epochs=1, lr=3e-3, lr_multipliers=[1 / 9, 1 / 3, 1.0])])
    initial = {k: v.clone() for k, v in model.net.body.state_dict().items() if "running" not in k}
    # ddp_fork: the two ranks are forked from this process, so they inherit its imports instead of
    # importing torch and Lightning again (~7 s a process on one core); gloo and the ranks are as under DDP.
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp_fork", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=[SaveBodyPerRank(tmp_path)])
    trainer.fit(model, cars_data(cars_root))
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    conv = "0.weight"  # the stem convolution: frozen in stage 1, trained (at lr/9) in stage 2
    assert not torch.equal(rank0[conv], initial[conv])  # the body did train in stage 2...
    for name in rank0:  # ...and every rank holds the same weights: gradients were all-reduced
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=1e-6, msg=f"ranks differ in {name}")
