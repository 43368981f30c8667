"""NaNGuard stops a diverged run with one message (step, lr, last good checkpoint) and keeps that checkpoint intact."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.callbacks import NaNGuard
from lightning_modules.callbacks.nan_guard import NonFiniteLossError, format_lrs
from tests.conftest import REPO

STEPS_PER_EPOCH = 8  # 32 samples / batch 4


class Diverging(pl.LightningModule):
    """A linear regression whose loss is multiplied by NaN from `nan_at` on, or whose gradient overflows at
    `inf_grad_at` under a finite loss; two param groups (lr 0.1 and 0.01) scaled by (step + 1) each step."""

    def __init__(self, nan_at: int | None = None, inf_grad_at: int | None = None) -> None:
        super().__init__()
        self.nan_at, self.inf_grad_at = nan_at, inf_grad_at
        self.body, self.head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.head(self.body(batch[0])).pow(2).mean()
        if self.nan_at is not None and self.global_step >= self.nan_at:
            loss = loss * float("nan")
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.global_step == self.inf_grad_at:
            self.head.bias.grad.fill_(float("inf"))

    def configure_optimizers(self):
        optimizer = torch.optim.SGD([{"params": self.body.parameters(), "lr": 0.1},
                                     {"params": self.head.parameters(), "lr": 0.01}])
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: step + 1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.randn(32, 4, generator=torch.Generator().manual_seed(0))), batch_size=4)


def fit(tmp_path, model: pl.LightningModule, guard: NaNGuard | None, max_epochs: int = 2) -> ModelCheckpoint:
    torch.manual_seed(0)
    last = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="last", enable_version_counter=False)
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[last, *([guard] if guard else [])])
    trainer.fit(model)
    return last


@pytest.mark.parametrize(("nan_at", "every", "when"), [
    (11, 1, "at once"),                   # checked every step: stops at the NaN step itself
    (15, 100, "at the checkpoint save"),  # last batch of epoch 1, no periodic check due: caught as last.ckpt is built
])
def test_nan_loss_stops_with_step_lr_and_kept_checkpoint(tmp_path, nan_at, every, when):
    with pytest.raises(NonFiniteLossError) as stop:
        fit(tmp_path, Diverging(nan_at=nan_at), NaNGuard(check_every_n_steps=every))
    message = str(stop.value)
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    lrs = f"lr {0.1 * (nan_at + 1):.4g}, {0.01 * (nan_at + 1):.4g} per param group"
    assert f"loss became nan at global step {nan_at} ({lrs})" in message, message
    assert f"no checkpoint of the diverged weights written, and the last good checkpoint {checkpoint} is kept: " \
           f"start a new 1cycle from its weights with `--model.init_args.init_weights {checkpoint}` and a lower lr" \
           in message
    assert message.count(". ") == 0 and message.endswith(").")  # one sentence
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["global_step"] == STEPS_PER_EPOCH  # written at the end of epoch 0, not overwritten after the NaN
    assert all(torch.isfinite(w).all() for w in saved["state_dict"].values())
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["last.ckpt"]  # nothing half-written beside it


def test_weights_overflowing_under_a_finite_loss_are_not_saved(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"weights became NaN/inf by global step 15 .*gradients overflowed"):
        fit(tmp_path, Diverging(inf_grad_at=15), NaNGuard(check_every_n_steps=100))
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == STEPS_PER_EPOCH and torch.isfinite(saved["state_dict"]["head.bias"]).all()


def test_nan_before_any_checkpoint_says_none_yet(tmp_path):
    none_yet = r"at global step 2 \(lr 0.3, 0.03 per param group\).*no last good checkpoint \(none yet\)"
    with pytest.raises(NonFiniteLossError, match=none_yet):
        fit(tmp_path, Diverging(nan_at=2), NaNGuard(check_every_n_steps=1))
    assert not (tmp_path / "checkpoints").exists()


def test_a_finite_run_is_unaffected(tmp_path):
    torch.manual_seed(0)
    guarded = Diverging()
    torch.manual_seed(0)
    plain = Diverging()
    fit(tmp_path / "guarded", guarded, NaNGuard(check_every_n_steps=3))
    fit(tmp_path / "plain", plain, None)
    for (name, a), (_, b) in zip(guarded.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), name
    saved = torch.load(tmp_path / "guarded" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2 * STEPS_PER_EPOCH


def test_lrs_print_once_when_groups_agree_and_bad_period_is_refused():
    assert format_lrs([0.003, 0.003]) == "lr 0.003"
    assert format_lrs([3e-4, 3e-3]) == "lr 0.0003, 0.003 per param group"
    with pytest.raises(ValueError, match="check_every_n_steps=0 must be"):
        NaNGuard(check_every_n_steps=0)


@pytest.mark.parametrize("config", ["cifar", "cifar_cpu", "cars", "wikitext2_lstm", "wikitext2_qrnn"])
def test_task_configs_guard_against_nan_and_preemption(config):
    trainer = yaml.safe_load((REPO / "configs" / f"{config}.yaml").read_text())["trainer"]
    if config == "cifar_cpu":  # an override of cifar.yaml: a callbacks list here would replace, not extend, its guards
        assert "callbacks" not in trainer
        return
    names = [c["class_path"] for c in trainer["callbacks"]]
    guards = {"lightning_modules.callbacks.NaNGuard", "lightning_modules.callbacks.PreemptionCheckpoint",
              "lightning_modules.callbacks.RNGStateCheckpoint"}
    assert guards <= set(names), guards - set(names)
