"""ImageClassifier through a real Trainer: the 1cycle as seen by the optimizer, param groups, and TTA."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

import cli
from datamodules import CIFAR10DataModule
from lightning_modules import ImageClassifier
from lightning_modules.nets import WideResNet
from tests.conftest import TINY_WRN_ARGS
from tests.optim.test_one_cycle import seed_formula



def quiet_trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **kwargs)


class RecordSchedule(Callback):
    """Reads lr and beta1 from the optimizer right before each training step uses them."""

    def __init__(self):
        self.values: list[tuple[float, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        group = trainer.optimizers[0].param_groups[0]
        self.values.append((group["lr"], group["betas"][0]))


def test_cifar_config_schedule_is_the_seeds_1cycle_stepped_every_batch(cifar_dir, tmp_path):
    # 80 images / batch 8 = 10 steps per epoch, 16 epochs = 160 steps (peak on step 73 exactly)
    run = cli.main(["--config", "configs/cifar.yaml", *TINY_WRN_ARGS, "--data.data_dir", str(cifar_dir),
                    "--data.download", "false", "--data.batch_size", "8", "--trainer.max_epochs", "16",
                    "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                    "--trainer.default_root_dir", str(tmp_path), "--trainer.limit_val_batches", "1"], run=False)
    recorder = RecordSchedule()
    run.trainer.callbacks.append(recorder)
    run.trainer.fit(run.model, run.datamodule)
    assert len(recorder.values) == 160
    for step, (lr, beta1) in enumerate(recorder.values):
        want_lr, want_beta = seed_formula(step, 160, 3e-3)
        assert lr == pytest.approx(want_lr, rel=1e-9), f"lr at step {step}"
        assert beta1 == pytest.approx(want_beta, rel=1e-9), f"beta1 at step {step}"
    assert recorder.values[0] == pytest.approx((3e-4, 0.95))
    assert recorder.values[73] == pytest.approx((3e-3, 0.85))
    assert recorder.values[146] == pytest.approx((3e-4, 0.95))
    assert recorder.values[-1] == pytest.approx((3e-6, 0.95))


def small_model(**kwargs) -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(WideResNet(blocks_per_group=1, widen_factor=1), **kwargs)


def test_norm_and_bias_excluded_from_decay_when_asked(cifar_dir):
    model = small_model(decay_norm_and_bias=False)
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(model, CIFAR10DataModule(str(cifar_dir), batch_size=16))
    optimizer = trainer.optimizers[0]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == \
        sum(p.numel() for p in model.parameters())


class FlipViews(CIFAR10DataModule):
    """A datamodule whose augmentation is a deterministic flip, so TTA can be recomputed by hand."""

    calls = 0

    def augment(self, images, generator=None):
        FlipViews.calls += 1
        return images.flip(3)


def test_tta_averages_softmax_of_plain_and_augmented_views(cifar_dir):
    dm = FlipViews(str(cifar_dir), batch_size=16)
    model = small_model(tta=4)
    quiet_trainer(max_epochs=2).fit(model, dm)
    FlipViews.calls = 0
    metrics = quiet_trainer().test(model, dm)[0]
    assert FlipViews.calls == 4 * 3  # 4 views × 3 test batches (40 images / 16)
    model.eval()
    images, labels = dm.test_set.images, dm.test_set.labels
    with torch.no_grad():
        x, _ = dm.on_after_batch_transfer((images, labels), 0)
        plain = model(x).softmax(1)
        expected_probs = (plain + 4 * model(x.flip(3)).softmax(1)) / 5
    assert metrics["test/acc"] == pytest.approx((plain.argmax(1) == labels).float().mean().item())
    assert metrics["test/acc_tta"] == pytest.approx((expected_probs.argmax(1) == labels).float().mean().item())


def test_tta_zero_logs_no_tta_metric(cifar_dir):
    metrics = quiet_trainer().test(small_model(tta=0), CIFAR10DataModule(str(cifar_dir), batch_size=16))[0]
    assert "test/acc" in metrics and "test/acc_tta" not in metrics


def test_tta_without_an_augmenting_datamodule_is_a_clear_error():
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=4)
    with pytest.raises(RuntimeError, match="model.tta > 0 needs a datamodule with an `augment"):
        quiet_trainer().test(small_model(tta=2), dataloaders=loader)


def test_checkpoint_made_by_the_cli_reloads_without_any_config(cifar_dir, tmp_path):
    run = cli.main(["--config", "configs/cifar.yaml", *TINY_WRN_ARGS, "--data.data_dir", str(cifar_dir),
                    "--data.download", "false", "--data.batch_size", "16", "--trainer.max_epochs", "1",
                    "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                    "--trainer.default_root_dir", str(tmp_path), "--test_after_fit", "false"], run=False)
    run.trainer.fit(run.model, run.datamodule)
    path = tmp_path / "last.ckpt"
    run.trainer.save_checkpoint(path)
    reloaded = ImageClassifier.load_from_checkpoint(path)
    assert isinstance(reloaded.net, WideResNet) and reloaded.hparams.tta == 4
    for name, tensor in run.model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor)


def test_channels_last_is_applied_when_the_model_is_headed_for_a_gpu():
    class FakeStrategy:
        root_device = torch.device("cuda")

    class FakeTrainer:
        strategy = FakeStrategy()

    model = small_model()
    model._trainer = FakeTrainer()
    model.setup("fit")
    conv = model.net.features[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    FakeStrategy.root_device = torch.device("cpu")
    cpu_model = small_model()
    cpu_model._trainer = FakeTrainer()
    cpu_model.setup("fit")
    assert cpu_model.net.features[0].weight.is_contiguous()


class CountLoggedAccuracy(Callback):
    def __init__(self):
        self.values: list[float] = []

    # Callbacks' on_train_epoch_end runs before the module's, which logs the value: read it afterwards.
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch > 0:
            self.values.append(float(trainer.callback_metrics["train/acc"]))

    def on_train_end(self, trainer, pl_module):
        self.values.append(float(trainer.callback_metrics["train/acc"]))


def test_train_accuracy_is_logged_once_per_epoch_over_the_whole_epoch(cifar_dir):
    """A net that always answers class 0, never updated: train/acc must be the share of class 0 in the epoch."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    torch.nn.init.zeros_(net[1].weight)
    with torch.no_grad():
        net[1].bias.copy_(torch.arange(10, 0, -1).float())  # class 0 always wins
    model = ImageClassifier(net, optimizer=lambda p: torch.optim.SGD(p, lr=0.0), tta=0)
    data = CIFAR10DataModule(str(cifar_dir), batch_size=16)
    recorder = CountLoggedAccuracy()
    quiet_trainer(max_epochs=2, limit_val_batches=0, callbacks=[recorder]).fit(model, data)
    share_of_class_0 = (data.train_set.labels == 0).float().mean().item()
    assert recorder.values == pytest.approx([share_of_class_0] * 2)
