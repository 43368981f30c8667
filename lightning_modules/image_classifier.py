"""ImageClassifier: cross-entropy training of any image net, with 1cycle and test-time augmentation.

Serves CIFAR-10 (WRN-22) and Stanford Cars (ResNet50 + fastai head): the task is chosen by the datamodule, the
net and the config, never by a subclass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import pytorch_lightning as pl
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.hparams import save_hyperparameters_for_reload
from optim import OneCycleLR, apply_lr_multipliers, param_groups


def _default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=3e-3, betas=(0.95, 0.99), eps=1e-8, weight_decay=0.1)


def _default_scheduler(optimizer: torch.optim.Optimizer, total_steps: int) -> OneCycleLR:
    return OneCycleLR(optimizer, total_steps, pct_start=0.4625, anneal_strategy="linear", div_factor=10,
                      final_div_factor=100, three_phase=True)


class ImageClassifier(pl.LightningModule):
    """Args:
        net: the network (an `nn.Module` from `lightning_modules/nets/`), its `num_classes` linked from the data.
        optimizer: a `torch.optim` class with its arguments, called with the param groups.
        lr_scheduler: a scheduler called with the optimizer and `total_steps` (the 1cycle), stepped every batch.
        tta: number of augmented views averaged with the plain image at test time (0 disables; the seed: 4).
        tta_seed: seed of the TTA views, so `test/acc_tta` is reproducible.
        decay_norm_and_bias: False excludes norm weights and biases from weight decay (the seed decays all).
        channels_last: use channels-last memory format on GPU (faster convolutions with tensor cores).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable = _default_optimizer,
        lr_scheduler: LRSchedulerCallable = _default_scheduler,
        tta: int = 4,
        tta_seed: int = 0,
        decay_norm_and_bias: bool = True,
        channels_last: bool = True,
    ):
        super().__init__()
        save_hyperparameters_for_reload(self)
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        self.tta, self.tta_seed = tta, tta_seed
        self.decay_norm_and_bias, self.channels_last = decay_norm_and_bias, channels_last
        num_classes = self._num_classes(net)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc_tta = MulticlassAccuracy(num_classes, average="micro")

    @staticmethod
    def _num_classes(net: nn.Module) -> int:
        last_linear = [m for m in net.modules() if isinstance(m, nn.Linear)]
        if not last_linear:
            raise ValueError("model.net has no nn.Linear classifier layer; ImageClassifier needs one to count classes.")
        return last_linear[-1].out_features

    def setup(self, stage: str) -> None:
        # Runs before Lightning moves the model to its device (a move keeps the memory format), so ask the
        # strategy where the model is going rather than where it is.
        if self.channels_last and self.trainer.strategy.root_device.type == "cuda":
            self.net.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last and images.is_cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.train_acc(logits, labels)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.val_acc(logits, labels)
        self.log("val/loss", F.cross_entropy(logits, labels), sync_dist=True)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.test_acc(logits, labels)
        self.log("test/loss", F.cross_entropy(logits, labels), sync_dist=True)
        self.log("test/acc", self.test_acc)
        if self.tta > 0:
            self.test_acc_tta(self._tta_probabilities(images, logits, batch_idx), labels)
            self.log("test/acc_tta", self.test_acc_tta)

    def _tta_probabilities(self, images: torch.Tensor, logits: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """Mean softmax of the plain image and `tta` views made by the datamodule's training augmentation."""
        augment = getattr(self.trainer.datamodule, "augment", None)
        if augment is None:
            raise RuntimeError("model.tta > 0 needs a datamodule with an `augment(images, generator)` method; set model.tta: 0.")
        generator = torch.Generator(device=images.device).manual_seed(self.tta_seed * 1_000_003 + batch_idx)
        probabilities = logits.softmax(dim=1)
        for _ in range(self.tta):
            probabilities = probabilities + self(augment(images, generator)).softmax(dim=1)
        return probabilities / (self.tta + 1)

    def configure_optimizers(self):
        groups = param_groups(self.net, decay_norm_and_bias=self.decay_norm_and_bias)
        optimizer = apply_lr_multipliers(self.optimizer_factory(groups))
        scheduler = self.scheduler_factory(optimizer, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
