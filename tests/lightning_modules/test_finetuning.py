"""Two-stage fine-tuning through a real Trainer: freezing, per-stage 1cycles with discriminative lrs, resume."""
from __future__ import annotations

from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from datamodules import StanfordCarsDataModule
from lightning_modules import ImageClassifier
from lightning_modules.nets import ResNetWithHead
from optim import FinetuneStage, OneCycleLR

STAGE1, STAGE2 = 1e-2, 3e-3
MULTIPLIERS = [1 / 9, 1 / 3, 1.0]
SCHEDULE = dict(three_phase=True, anneal_strategy="linear", pct_start=0.45, div_factor=10, final_div_factor=100)


def cars_model(stages=None) -> ImageClassifier:
    torch.manual_seed(0)
    stages = stages or [FinetuneStage(epochs=2, lr=STAGE1, frozen_groups=2),
                        FinetuneStage(epochs=4, lr=STAGE2, lr_multipliers=MULTIPLIERS)]
    return ImageClassifier(
        ResNetWithHead(num_classes=196, arch="resnet18", weights=None),
        optimizer=partial(torch.optim.Adam, lr=1.0, betas=(0.95, 0.99), weight_decay=1e-3),  # picklable for DDP
        lr_scheduler=partial(OneCycleLR, **SCHEDULE),
        tta=0,
        stages=stages,
    )


def cars_data(cars_root) -> StanfordCarsDataModule:
    # 10 training images in batches of 2: 5 steps per epoch
    return StanfordCarsDataModule(str(cars_root), batch_size=2, num_workers=0, image_size=32)


def trainer(max_epochs: int, callbacks=(), **kwargs) -> pl.Trainer:
    return pl.Trainer(max_epochs=max_epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
                      callbacks=list(callbacks), num_sanity_val_steps=0, **kwargs)


class RecordGroups(Callback):
    """(global step, stage, [lr per group], [beta1 per group]) right before each optimizer step uses them."""

    def __init__(self):
        self.rows: list[tuple[int, int, list[float], list[float]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        groups = trainer.optimizers[0].param_groups
        self.rows.append((trainer.global_step, pl_module.active_stage,
                          [g["lr"] for g in groups], [g["betas"][0] for g in groups]))


def reference_schedule(peak_lrs: list[float], total_steps: int) -> list[tuple[list[float], list[float]]]:
    """torch's OneCycleLR on a throwaway optimizer: what each stage's groups must see, step by step."""
    optimizer = torch.optim.Adam([{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in peak_lrs],
                                 betas=(0.95, 0.99))
    scheduler = OneCycleLR(optimizer, total_steps, **SCHEDULE)
    values = []
    for _ in range(total_steps):
        values.append(([g["lr"] for g in optimizer.param_groups], [g["betas"][0] for g in optimizer.param_groups]))
        optimizer.step()
        scheduler.step()
    return values


def body_state(model: ImageClassifier) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.net.body.state_dict().items()}


def test_stage_one_freezes_the_body_and_its_batchnorm_statistics(cars_root):
    model = cars_model()
    before_body, before_head = body_state(model), {k: v.clone() for k, v in model.net.head.state_dict().items()}
    with pytest.warns(UserWarning, match="stops before the end of model.stages"):
        trainer(max_epochs=2).fit(model, cars_data(cars_root))
    after = model.net.body.state_dict()
    assert any("running_mean" in k for k in after)
    for name, value in before_body.items():  # weights and BN running_mean/var/num_batches_tracked
        assert torch.equal(value, after[name]), f"body {name} changed in stage 1"
    assert all(p.grad is None and not p.requires_grad for p in model.net.body.parameters())
    head_after = model.net.head.state_dict()
    assert not torch.equal(before_head["4.weight"], head_after["4.weight"])  # the head trained...
    assert not torch.equal(before_head["2.running_mean"], head_after["2.running_mean"])  # ...and its BN tracked


def test_stage_two_groups_follow_their_own_1cycle_at_lr_9_lr_3_lr(cars_root):
    model, recorder = cars_model(), RecordGroups()
    trainer(max_epochs=6, callbacks=[recorder]).fit(model, cars_data(cars_root))
    assert [row[1] for row in recorder.rows] == [0] * 10 + [1] * 20
    expected = reference_schedule([0.0, 0.0, STAGE1], 10) + reference_schedule([STAGE2 * m for m in MULTIPLIERS], 20)
    for (step, _, lrs, betas), (want_lrs, want_betas) in zip(recorder.rows, expected, strict=True):
        assert lrs == pytest.approx(want_lrs, rel=1e-9, abs=1e-15), f"lrs at step {step}"
        assert betas == pytest.approx(want_betas, rel=1e-9), f"beta1 at step {step}"
    # the seed's anchors: each stage starts at lr/10 and ends near lr/1000, beta1 0.95 at both ends
    first_stage2 = recorder.rows[10][2]
    assert first_stage2 == pytest.approx([STAGE2 / 10 / 9, STAGE2 / 10 / 3, STAGE2 / 10])
    assert max(row[2][2] for row in recorder.rows[10:]) == pytest.approx(STAGE2, rel=0.05)
    assert all(p.requires_grad for p in model.net.parameters())


def test_resume_mid_stage_two_continues_that_stages_schedule(cars_root, tmp_path):
    # Uninterrupted run that also saves a checkpoint mid-epoch in stage 2 (after step 17 of 30).
    saver = ModelCheckpoint(dirpath=tmp_path, filename="step{step}", every_n_train_steps=17, save_top_k=-1,
                            auto_insert_metric_name=False)
    full = RecordGroups()
    trainer(max_epochs=6, callbacks=[full, saver]).fit(cars_model(), cars_data(cars_root))
    checkpoint = tmp_path / "step17.ckpt"
    assert torch.load(checkpoint, weights_only=False)["finetune_stage"] == 1
    resumed = RecordGroups()
    fresh = cars_model()
    assert fresh.active_stage == 0
    trainer(max_epochs=6, callbacks=[resumed]).fit(fresh, cars_data(cars_root), ckpt_path=str(checkpoint))
    assert [row[0] for row in resumed.rows] == list(range(17, 30))
    by_step = {row[0]: row for row in full.rows}
    for step, stage, lrs, betas in resumed.rows:
        assert stage == 1
        assert lrs == pytest.approx(by_step[step][2], rel=1e-12), f"lrs at step {step}"
        assert betas == pytest.approx(by_step[step][3], rel=1e-12), f"beta1 at step {step}"


def test_resume_from_the_end_of_stage_one_switches_to_stage_two(cars_root, tmp_path):
    saver = ModelCheckpoint(dirpath=tmp_path, filename="last", enable_version_counter=False)
    with pytest.warns(UserWarning, match="stops before the end"):
        trainer(max_epochs=2, callbacks=[saver]).fit(cars_model(), cars_data(cars_root))
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["finetune_stage"] == 0
    resumed, model = RecordGroups(), cars_model()
    trainer(max_epochs=6, callbacks=[resumed]).fit(model, cars_data(cars_root), ckpt_path=str(tmp_path / "last.ckpt"))
    assert [row[1] for row in resumed.rows] == [1] * 20
    assert resumed.rows[0][2] == pytest.approx([STAGE2 / 10 * m for m in MULTIPLIERS])


def test_stage_epochs_must_cover_max_epochs(cars_root):
    with pytest.raises(ValueError, match=r"add up to 6 epochs but trainer.max_epochs is 7.*--trainer.max_epochs 6"):
        trainer(max_epochs=7).fit(cars_model(), cars_data(cars_root))


def test_stages_need_a_net_with_layer_groups():
    from lightning_modules.nets import WideResNet

    with pytest.raises(ValueError, match="WideResNet has no layer_groups"):
        ImageClassifier(WideResNet(blocks_per_group=1, widen_factor=1), stages=[{"epochs": 1, "lr": 0.1}])
