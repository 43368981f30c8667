"""ImageClassifier: cross-entropy training of any image net, with 1cycle, fine-tuning stages and TTA.

Serves CIFAR-10 (WRN-22, one 1cycle) and Stanford Cars (ResNet50 + fastai head, two fine-tuning stages): the
task is chosen by the datamodule, the net and the config, never by a subclass.

Fine-tuning stages (`stages`), and why they are built this way: torch's `OneCycleLR` writes its bookkeeping
(`initial_lr`, `max_lr`, `min_lr`) into the param groups it is built with, so a group added later (Lightning's
`BaseFinetuning.unfreeze_and_add_param_group`) is never scheduled. Here the optimizer always holds every layer
group (frozen ones at lr 0), and at a stage boundary `on_train_epoch_start` unfreezes and asks the strategy to
run `configure_optimizers` again: a fresh optimizer and a fresh 1cycle over that stage's steps, as fastai 0.7
built a new optimizer for each `fit` call. The active stage is saved in the checkpoint and restored before
Lightning rebuilds the optimizer on resume, so the saved optimizer and scheduler state load into the optimizer
of the stage they came from, and that stage's schedule simply continues.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
import pytorch_lightning as pl
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.compile import compile_net
from lightning_modules import metric_names as names
from lightning_modules.hparams import save_hyperparameters_for_reload
from lightning_modules.muon_split import announce_muon_split
from lightning_modules.net_weights import load_net_weights
from lightning_modules.schedule_free import ScheduleFreeHooks, ScheduleFreePoints
from optim import (FinetuneStage, OneCycleLR, apply_lr_multipliers, as_stages, build_optimizer, param_groups, set_trainable,
                   stage_at_epoch)
from optim.muon import optimizer_class

STAGE_CHECKPOINT_KEY = "finetune_stage"


def _default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=3e-3, betas=(0.95, 0.99), eps=1e-8, weight_decay=0.1)


def _default_scheduler(optimizer: torch.optim.Optimizer, total_steps: int) -> OneCycleLR:
    return OneCycleLR(optimizer, total_steps, pct_start=0.4625, anneal_strategy="linear", div_factor=10,
                      final_div_factor=100, three_phase=True)


class ImageClassifier(ScheduleFreeHooks, pl.LightningModule):
    """Args:
        net: the network (an `nn.Module` from `lightning_modules/nets/`), its `num_classes` linked from the data.
        optimizer: a `torch.optim` class with its arguments, called with the param groups.
        lr_scheduler: a scheduler called with the optimizer and `total_steps` (the 1cycle), stepped every batch.
        tta: number of augmented views averaged with the plain image at test time (0 disables; the seed: 4).
        tta_seed: seed of the TTA views, so `test/acc_tta` is reproducible.
        decay_norm_and_bias: False excludes norm weights and biases from weight decay (the seed decays all).
        channels_last: channels-last memory format for the net and its input batches (NHWC: the layout tensor-core
            convolutions want). null (default): on CUDA only; true: on every device, the CPU included (how the
            GPU settings are checked on a CPU); false: never.
        compile: `torch.compile` the net in place with inductor (`lightning_modules/compile.py`): the same
            outputs and state_dict keys, a checkpoint loads either way; the first steps pay the compilation.
        stages: fine-tuning stages (see `optim.FinetuneStage`), each its own optimizer and 1cycle over its own
            epochs; they add up to `trainer.max_epochs` (fewer stops early), and the net needs `layer_groups()`. Each stage's
            `lr` replaces the optimizer's. null: one stage, everything trainable, the optimizer's lr.
        init_weights: a checkpoint whose net weights a new `fit` starts from, with a fresh optimizer and 1cycle
            (`lightning_modules/net_weights.py`); ignored when the fit resumes a checkpoint.
        schedule_free_bn_batches: with a schedule-free optimizer, the training batches over which BatchNorm
            statistics are recomputed at the evaluation point before each evaluation and checkpoint
            (`lightning_modules/schedule_free.py`); 0 keeps the statistics gathered while training.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable = _default_optimizer,
        lr_scheduler: LRSchedulerCallable = _default_scheduler,
        tta: int = 4,
        tta_seed: int = 0,
        decay_norm_and_bias: bool = True,
        channels_last: bool | None = None,
        stages: list[FinetuneStage] | None = None,
        compile: bool = False,
        init_weights: str | None = None,
        schedule_free_bn_batches: int = 8,
    ):
        super().__init__()
        save_hyperparameters_for_reload(self)
        self.net = net
        self.schedule_free = ScheduleFreePoints(self, schedule_free_bn_batches)
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        self.tta, self.tta_seed = tta, tta_seed
        self.decay_norm_and_bias, self.channels_last = decay_norm_and_bias, channels_last
        self.uses_channels_last = False  # decided in `setup`, once the device is known
        self.predict_tta = False  # `cli.py predict --predict_tta true`: average the tta views in predictions
        self.compile_enabled = compile  # not `self.compile`: that is nn.Module's method
        self.init_weights = init_weights
        self.stages = as_stages(stages)
        self.active_stage = 0  # index into `stages` whose optimizer currently exists (saved in checkpoints)
        if self.stages is not None and not callable(getattr(net, "layer_groups", None)):
            raise ValueError(f"model.stages needs a net with layer groups; {type(net).__name__} has no "
                             "layer_groups() method (use e.g. ResNetWithHead, or set model.stages: null).")
        if self.stages is not None and getattr(optimizer_class(optimizer), "splits_hidden_matrices", False):
            raise ValueError("model.optimizer MuonWithAuxAdamW does not combine with model.stages: each stage has one lr "
                             "where Muon needs two, and Muon is not made for weights pretrained with AdamW; fine-tune "
                             "with configs/optim/cars_adamw.yaml, or set model.stages: null.")
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
        if stage == "fit" and self.init_weights and self.trainer.ckpt_path is None:
            load_net_weights(self.net, self.init_weights)
        # Runs before Lightning moves the model to its device (a move keeps the memory format), so ask the
        # strategy where the model is going rather than where it is.
        on_cuda = self.trainer.strategy.root_device.type == "cuda"
        self.uses_channels_last = self.channels_last or (self.channels_last is None and on_cuda)
        if self.uses_channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.compile_enabled:  # after channels_last; lazy, so it compiles on the device of the first batch
            compile_net(self.net)
        if stage == "fit" and self.stages is not None:
            self._apply_stage()  # before DDP wraps the model: DDP only syncs parameters that require grad then
            # Frozen BatchNorm layers are in eval mode on purpose; Lightning would warn about them at fit start.
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.uses_channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        # `update`, not `self.train_acc(...)` + `self.log(metric)` per step: the call also computes a per-batch
        # value nobody reads, and logging the Metric object moves it to the device on every step (together about
        # 1.5 ms per step; benchmarks/lightning_overhead.py). The epoch's value is logged once, below.
        self.train_acc.update(logits.detach(), labels)
        self.log(names.TRAIN_LOSS, loss, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        # An epoch resumed from a checkpoint taken after its last batch trains no batch here: nothing to report
        # (compute() would warn and log 0).
        if self.train_acc.update_count > 0:
            self.log(names.TRAIN_ACC, self.train_acc.compute())  # compute() syncs the state across DDP ranks
        self.train_acc.reset()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.val_acc(logits, labels)
        self.log(names.VAL_LOSS, F.cross_entropy(logits, labels), sync_dist=True)
        self.log(names.VAL_ACC, self.val_acc, prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.test_acc(logits, labels)
        self.log(names.TEST_LOSS, F.cross_entropy(logits, labels), sync_dist=True)
        self.log(names.TEST_ACC, self.test_acc)
        if self.tta > 0:
            self.test_acc_tta(self._tta_probabilities(images, logits, batch_idx), labels)
            self.log(names.TEST_ACC_TTA, self.test_acc_tta)

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Class probabilities of images of one's own (`cli.py predict`): the softmax, or with `predict_tta` its
        average with the model's `tta` augmented views, as `test/acc_tta` computes it."""
        images, indices = batch
        logits = self(images)
        if self.predict_tta and self.tta > 0:
            probs = self._tta_probabilities(images, logits, batch_idx)
        else:
            probs = logits.softmax(dim=1)
        return {"indices": indices.cpu(), "probs": probs.float().cpu()}

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

    # --- fine-tuning stages ------------------------------------------------------------------------------

    def _apply_stage(self) -> None:
        if self.stages is not None:
            set_trainable(self.net.layer_groups(), self.stages[self.active_stage].frozen_groups)

    def on_train_epoch_start(self) -> None:
        if self.stages is None:
            return
        wanted = stage_at_epoch(self.stages, self.current_epoch)
        if wanted != self.active_stage:
            self.active_stage = wanted
            self._apply_stage()
            self._rewrap_ddp()
            self.trainer.strategy.setup_optimizers(self.trainer)  # calls configure_optimizers for the new stage
        self._apply_stage()  # frozen BatchNorm back to eval after validation/model.train()
        self.log(names.TRAIN_STAGE, float(self.active_stage + 1), on_step=False, on_epoch=True)

    def _rewrap_ddp(self) -> None:
        """DDP records which parameters need gradient sync when it wraps the model: wrap again after unfreezing."""
        from pytorch_lightning.strategies import DDPStrategy

        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy) and strategy.model is not self:
            strategy.model = strategy._setup_model(self)
            strategy._register_ddp_hooks()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[STAGE_CHECKPOINT_KEY] = self.active_stage
        self.schedule_free.save(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Runs before the optimizers are rebuilt on resume, so they are built for the checkpoint's stage.
        self.active_stage = int(checkpoint.get(STAGE_CHECKPOINT_KEY, 0))
        self.schedule_free.load(checkpoint)
        if self.stages is not None and self.active_stage >= len(self.stages):
            raise ValueError(f"the checkpoint was taken in fine-tuning stage {self.active_stage + 1} but "
                             f"model.stages has {len(self.stages)}; resume with the stages it was trained with.")
        self._apply_stage()

    def _stage_steps(self, stage: FinetuneStage) -> int:
        """Optimizer steps in `stage`: its epochs × Lightning's steps per epoch (devices, accumulation, limits).

        `trainer.max_epochs` below the stages' total stops the run early with the schedule unchanged (a time
        limit, a cluster job); resume with `--ckpt_path last` and the full `max_epochs` to finish it.
        """
        total_epochs = sum(s.epochs for s in self.stages)
        max_epochs, max_steps = self.trainer.max_epochs, self.trainer.max_steps
        if max_steps not in (-1, None) or max_epochs is None or not 0 < max_epochs <= total_epochs:
            raise ValueError(f"model.stages add up to {total_epochs} epochs but trainer.max_epochs is {max_epochs} "
                             f"(max_steps {max_steps}); set --trainer.max_epochs {total_epochs} and leave max_steps "
                             "unset, or change the stages.")
        if max_epochs < total_epochs and self.active_stage == stage_at_epoch(self.stages, 0):
            rank_zero_warn(f"trainer.max_epochs {max_epochs} stops before the end of model.stages "
                           f"({total_epochs} epochs); resume with --ckpt_path last --trainer.max_epochs "
                           f"{total_epochs} to finish the schedule.")
        return int(self.trainer.estimated_stepping_batches // max_epochs * stage.epochs)

    def configure_optimizers(self):
        if self.stages is None:
            groups = param_groups(self.net, decay_norm_and_bias=self.decay_norm_and_bias)
            optimizer = apply_lr_multipliers(build_optimizer(self.optimizer_factory, groups, self.net))
            total_steps = self.trainer.estimated_stepping_batches
        else:
            stage = self.stages[self.active_stage]
            layer_groups = self.net.layer_groups()
            groups = param_groups(layer_groups, stage.group_multipliers(len(layer_groups)),
                                  decay_norm_and_bias=self.decay_norm_and_bias, include_frozen=True)
            optimizer = apply_lr_multipliers(build_optimizer(self.optimizer_factory, groups, self.net), lr=stage.lr)
            total_steps = self._stage_steps(stage)
        announce_muon_split(self, optimizer)
        scheduler = self.scheduler_factory(optimizer, total_steps=total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
