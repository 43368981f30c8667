"""NaNGuard stops a diverged run (a NaN/inf loss, or a finite one far above where it started) with one message (step,
lr, last good checkpoint) and keeps that checkpoint intact; a loss spike that recovers, lr_find's sweep and a resume
are left alone."""
from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.callbacks import NaNGuard
import cli
from lightning_modules.callbacks.nan_guard import DivergedLossError, NonFiniteLossError, format_lrs
from tests.conftest import REPO, TINY_WRN_ARGS

STEPS_PER_EPOCH = 8  # 32 samples / batch 4


class Diverging(pl.LightningModule):
    """A linear regression whose loss is multiplied by NaN from `nan_at` on, or whose gradient overflows at
    `inf_grad_at` under a finite loss; two param groups (lr 0.1 and 0.01) scaled by (step + 1) each step.

    Finite divergence: `added(global_step)` is added to the loss, a constant to the gradient, so training goes on
    as without it and only the loss the guard reads changes (the first is 0.083 with seed 0; 100 times it, 8.3)."""

    def __init__(self, nan_at: int | None = None, inf_grad_at: int | None = None,
                 added: Callable[[int], float] | None = None) -> None:
        super().__init__()
        self.nan_at, self.inf_grad_at, self.added = nan_at, inf_grad_at, added
        self.body, self.head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.head(self.body(batch[0])).pow(2).mean()
        if self.nan_at is not None and self.global_step >= self.nan_at:
            loss = loss * float("nan")
        if self.added is not None:
            loss = loss + self.added(self.global_step)
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


def fit(tmp_path, model: pl.LightningModule, guard: NaNGuard | None, max_epochs: int = 2,
        ckpt_path: str | None = None) -> ModelCheckpoint:
    torch.manual_seed(0)
    last = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="last", enable_version_counter=False)
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[last, *([guard] if guard else [])])
    trainer.fit(model, ckpt_path=ckpt_path)
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


# --- finite divergence -----------------------------------------------------------------------------------------

def seeded(added: Callable[[int], float] | None = None) -> Diverging:
    torch.manual_seed(0)
    return Diverging(added=added)


def growing_from(start: int) -> Callable[[int], float]:
    """10^(step − start) from `start` on: finite and without bound (above 8.3 from start + 1)."""
    return lambda step: 10.0 ** (step - start) if step >= start else 0.0


def spike(steps: range) -> Callable[[int], float]:
    return lambda step: 1000.0 if step in steps else 0.0


def raised_from(start: int) -> Callable[[int], float]:
    return lambda step: 1.0 if step >= start else 0.0


def first_loss() -> float:
    """The loss of `seeded()`'s first batch before any step, computed apart from the guard."""
    model = seeded()
    with torch.no_grad():
        return float(model.head(model.body(model.train_dataloader().dataset.tensors[0][:4])).pow(2).mean())


@pytest.mark.parametrize(("guard", "said", "when"), [
    # checked every step, 3 of the last 4 losses above the line at step 12 (above from step 10: 0.08 + 10)
    (dict(check_every_n_steps=1, divergence_window=4), "3 of its last 4 values, up to step 12", "by the window"),
    # default window (20) not yet full, no periodic check due: the latest loss above the line as last.ckpt is built
    (dict(check_every_n_steps=100), "6 of its last 16 values, up to step 15", "at the checkpoint save"),
], ids=["by the window", "at the checkpoint save"])
def test_a_finite_divergence_stops_with_step_lr_and_kept_checkpoint(tmp_path, guard, said, when):
    with pytest.raises(DivergedLossError) as stop:
        fit(tmp_path, seeded(growing_from(9)), NaNGuard(**guard))
    message = str(stop.value)
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    assert f"the training loss diverged from global step 10 (lr 1.1, 0.11 per param group) on: {said}, were above " \
           f"100 times its first value {first_loss():.4g}" in message, message
    assert (", as a checkpoint was about to be written;" in message) is (when == "at the checkpoint save")
    assert f"no checkpoint of the diverged weights written, and the last good checkpoint {checkpoint} is kept: " \
           f"start a new 1cycle from its weights with `--model.init_args.init_weights {checkpoint}` and a lower lr" \
           in message
    assert message.count(". ") == 0 and message.endswith(").")  # one sentence
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["global_step"] == STEPS_PER_EPOCH  # written at the end of epoch 0, before the loss left its start
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["last.ckpt"]


def test_a_checkpoint_written_after_the_loss_crossed_the_line_is_not_called_good(tmp_path):
    """A diverging loss bounces: above the line at step 6, below it at step 7 as epoch 0's last.ckpt (global step 8)
    is written, above from step 8 on. The window then stops the run, and the sentence must not send the user back to
    that checkpoint as a good one (at AdamW lr 50 it held chance-level weights)."""
    bouncing = lambda step: 1000.0 if step == 6 or step >= 8 else 0.0  # noqa: E731
    with pytest.raises(DivergedLossError) as stop:
        fit(tmp_path, seeded(bouncing), NaNGuard(check_every_n_steps=1, divergence_window=4))
    message = str(stop.value)
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    assert "diverged from global step 6 " in message and "3 of its last 4 values, up to step 9," in message, message
    assert (f"training stopped, but the last checkpoint {checkpoint} (global step 8) was written after the loss first "
            "crossed that line at step 6, so it may hold diverging weights: restart from scratch (or from a checkpoint "
            "of your own from before that step) with a lower lr") in message, message
    assert "last good checkpoint" not in message and "init_weights" not in message
    assert message.count(". ") == 0 and message.endswith(").")  # one sentence
    assert torch.load(checkpoint, weights_only=True)["global_step"] == STEPS_PER_EPOCH


def test_a_diverging_cifar_run_stops_through_the_cli_with_exit_status_1(cifar_dir, tmp_path):
    """The issue's case, small: AdamW at lr 50 on a tiny WRN. Its loss stays finite (no NaN) and grows without bound;
    the guard as configs/cifar.yaml has it (the defaults) stops it at the first checkpoint save, writing none."""
    with pytest.raises(SystemExit) as stop:
        cli.main(["fit", "--config", "configs/cifar.yaml", "--config", "configs/trainer/csv_only.yaml", *TINY_WRN_ARGS,
                  "--data.data_dir", str(cifar_dir), "--data.download", "false", "--data.batch_size", "8",
                  "--trainer.max_epochs", "3", "--trainer.default_root_dir", str(tmp_path / "run"),
                  "--trainer.enable_progress_bar", "false", "--model.init_args.optimizer.init_args.lr", "50"])
    assert isinstance(stop.value, DivergedLossError)
    message = stop.value.code
    assert isinstance(message, str)  # SystemExit with a message: Python prints it and exits with status 1
    pattern = (r"^NaNGuard: the training loss diverged from global step \d \(lr [\d.]+\) on: \d+ of its last "
               r"\d+ values, up to step \d, were above 100 times its first value 2\.\d+ \(the last [\d.e+]+\), as a "
               r"checkpoint was about to be written; training stopped with no checkpoint of the diverged weights "
               r"written, and there is no last good checkpoint \(none yet\): restart with a lower lr "
               r"\(--model.init_args.optimizer.init_args.lr\)\.$")
    assert re.match(pattern, message), message
    assert not list((tmp_path / "run").rglob("*.ckpt"))  # 10 steps an epoch: stopped as epoch 0's were being built


def test_a_loss_spike_that_recovers_is_not_stopped(tmp_path):
    """3 steps far above the line are a minority of the default window of 20: the run goes on, to the same weights
    and steps as without the guard."""
    spiking = spike(range(3, 6))  # 3 steps at 1000 + the loss, above the line of 100 times the first (8.3), then back
    guarded = seeded(spiking)
    fit(tmp_path / "guarded", guarded, NaNGuard(check_every_n_steps=1))
    plain = seeded(spiking)
    fit(tmp_path / "plain", plain, None)
    for (name, a), (_, b) in zip(guarded.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), name
    saved = torch.load(tmp_path / "guarded" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2 * STEPS_PER_EPOCH
    # The spike did cross the line: a window of 4, where 3 steps are a majority, stops at it.
    with pytest.raises(DivergedLossError, match=r"from global step 3 \(lr 0.4, 0.04 per param group\) on: 3 of its "
                                                r"last 4 values, up to step 5,"):
        fit(tmp_path / "narrow", seeded(spiking), NaNGuard(check_every_n_steps=1, divergence_window=4))


def test_divergence_factor_null_lets_a_diverging_run_finish(tmp_path):
    fit(tmp_path, seeded(growing_from(9)), NaNGuard(check_every_n_steps=1, divergence_factor=None))
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2 * STEPS_PER_EPOCH  # to the end, its last loss 10^6 times its first
    assert "NaNGuard" not in saved["callbacks"]  # nothing of the rule is kept


def test_a_resume_keeps_the_first_loss_and_its_window(tmp_path):
    """The line stays where the run started (100 times its first loss, 8.3), so a loss of 1 after a resume is not a
    divergence; a checkpoint without the guard's state (written before it had one) takes the first loss after the
    resume (0.0014 at step 8, line 0.14), where the same loss of 1 stops the run."""
    fit(tmp_path, seeded(), NaNGuard(check_every_n_steps=1), max_epochs=1)
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, weights_only=True)
    assert state["callbacks"]["NaNGuard"]["first_loss"] == pytest.approx(first_loss(), rel=1e-6)
    assert [step for step, _, _ in state["callbacks"]["NaNGuard"]["recent"]] == list(range(STEPS_PER_EPOCH))
    fit(tmp_path / "resumed", seeded(raised_from(9)), NaNGuard(check_every_n_steps=1), ckpt_path=str(checkpoint))
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 16

    del state["callbacks"]["NaNGuard"]
    torch.save(state, tmp_path / "without_state.ckpt")
    with pytest.raises(DivergedLossError, match=r"from global step 9 .* above 100 times its first value 0\.00"):
        fit(tmp_path / "again", seeded(raised_from(9)), NaNGuard(check_every_n_steps=1),
            ckpt_path=str(tmp_path / "without_state.ckpt"))


def test_lr_find_sweeps_far_past_the_line_untouched(cifar_dir, tmp_path):
    """Lightning's range test runs its sweep with its own callback in place of the trainer's, so the guard (in
    configs/cifar.yaml, at its defaults) never sees the loss the sweep drives up."""
    run = cli.main(["lr_find", "--config", "configs/cifar.yaml", "--config", "configs/trainer/csv_only.yaml",
                    *TINY_WRN_ARGS, "--data.data_dir", str(cifar_dir), "--data.download", "false",
                    "--data.batch_size", "8", "--trainer.default_root_dir", str(tmp_path),
                    "--trainer.enable_progress_bar", "false", "--min_lr", "1e-3", "--max_lr", "1e3",
                    "--num_training", "12", "--early_stop_threshold", "null"])
    losses = run.lr_find_result["losses"]
    assert len(losses) == 12  # the whole sweep ran
    assert max(loss for loss in losses if math.isfinite(loss)) > 100 * losses[0], losses  # smoothed, even so


@pytest.mark.parametrize(("field", "value"), [
    ("divergence_factor", 1.0), ("divergence_factor", 0.5), ("divergence_factor", -100.0),
    ("divergence_factor", math.inf), ("divergence_factor", math.nan), ("divergence_factor", True),
    ("divergence_window", 0), ("divergence_window", -3), ("divergence_window", 2.5), ("divergence_window", True),
])
def test_bad_divergence_settings_are_refused_in_one_sentence_naming_the_field(field, value):
    with pytest.raises(ValueError) as refused:
        NaNGuard(**{field: value})
    message = str(refused.value)
    assert message.startswith(f"NaNGuard: {field}={value!r} must be ")
    assert message.count(". ") == 0 and message.endswith(".")  # one sentence
