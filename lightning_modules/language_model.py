"""LanguageModel: AWD-LSTM / QRNN training with AR/TAR, per-batch lr scaling, perplexity, and the neural cache.

What it does that a generic module would not, and why:
- the hidden state is carried from batch to batch (detached: Lightning 2.x has no truncated BPTT) and reset at
  each epoch start and before every evaluation, so a row of the stream is read as one continuous text;
- the loss adds activation regularisation (AR, α·mean(h²) on the dropped last-layer output) and temporal
  activation regularisation (TAR, β·mean((h_t − h_{t−1})²) on the raw one), as AWD-LSTM;
- the lr of each training batch is scaled by seq_len/bptt (a short sequence gets a proportionally smaller
  step), on top of the 1cycle, which is closed-form so the scaling never accumulates;
- perplexities are exp of the token-weighted mean loss over the whole split (not a mean of batch perplexities);
- at test time (and optionally validation) the neural cache pointer of Grave et al. also gives `test/ppl_cache`;
- the carried state is saved in every checkpoint (each DDP rank's, since each reads its own rows) and put back at
  the first training batch after a resume, so a run stopped mid-epoch continues the same text with the same state
  (bit-identical on CPU with the resumable loaders of `datamodules/`; tests/test_mid_epoch_resume.py).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import pytorch_lightning as pl
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics.aggregation import MeanMetric

from lightning_modules.compile import compile_net
from lightning_modules import metric_names as names
from lightning_modules.hparams import save_hyperparameters_for_reload
from lightning_modules.muon_split import announce_muon_split
from lightning_modules.net_weights import load_net_weights
from lightning_modules.schedule_free import ScheduleFreeHooks, ScheduleFreePoints
from lightning_modules.nets.awd_lstm import detach_state
from lightning_modules.neural_cache import MIXING, NeuralCache
from optim import RNNOneCycleLR, build_optimizer


HIDDEN_CHECKPOINT_KEY = "carried_hidden"


def move_state(state: Any, device: torch.device) -> Any:
    """The carried state (tensors in lists and tuples, or None) detached and on `device`."""
    if isinstance(state, torch.Tensor):
        return state.detach().to(device)
    if isinstance(state, (list, tuple)):
        return type(state)(move_state(s, device) for s in state)
    return state


def _default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=5e-3, betas=(0.8, 0.99), weight_decay=1.2e-6)


def _default_scheduler(optimizer: torch.optim.Optimizer, total_steps: int) -> RNNOneCycleLR:
    return RNNOneCycleLR(optimizer, total_steps)


SPLIT_METRICS = {"val": (names.VAL_LOSS, names.VAL_PPL, names.VAL_PPL_CACHE),  # loss, ppl, ppl with the cache
                 "test": (names.TEST_LOSS, names.TEST_PPL, names.TEST_PPL_CACHE)}


class LanguageModel(ScheduleFreeHooks, pl.LightningModule):
    """Args:
        net: an `RNNLanguageNet` (AWDLSTM, QRNNLanguageNet); its `vocab_size` is linked from the data.
        optimizer, lr_scheduler: as in ImageClassifier; the scheduler gets `total_steps` and is stepped per batch.
        alpha, beta: AR and TAR weights (the seed: 3 and 1.5 for the AWD-LSTM, 2 and 1 for the QRNN).
        bptt: the mean training sequence length the lr scaling refers to (linked from the data).
        cache: evaluate `test/ppl_cache` with the neural cache (needs data.eval_batch_size 1).
        cache_window, cache_theta, cache_lambda: the cache's size, flatness and mixing weight (the seed's
            WikiText-2 values: 3785, 0.662, 0.1279; `scripts/tune_cache.py` searches them for a trained model).
        cache_mixing: which positions the cache mixes: "all" (the seed's `my_cache_pointer`, every position after
            the stream's first) or "after_window" (Salesforce `pointer.py`); `lightning_modules/neural_cache.py`.
        cache_in_validation: also log `val/ppl_cache` every validation (slower).
        compile: `torch.compile` the net in place (`lightning_modules/compile.py`), with shapes dynamic from the
            start since every batch has its own length; the same outputs and state_dict keys. On CPU expect
            little from it: the LSTM and QRNN recurrences stay eager.
        init_weights: a checkpoint whose net weights a new `fit` starts from, with a fresh optimizer and 1cycle
            (`lightning_modules/net_weights.py`); ignored when the fit resumes a checkpoint.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable = _default_optimizer,
        lr_scheduler: LRSchedulerCallable = _default_scheduler,
        alpha: float = 3.0,
        beta: float = 1.5,
        bptt: int = 70,
        cache: bool = True,
        cache_window: int = 3785,
        cache_theta: float = 0.662,
        cache_lambda: float = 0.1279,
        cache_mixing: str = "all",
        cache_in_validation: bool = False,
        compile: bool = False,
        init_weights: str | None = None,
    ):
        super().__init__()
        save_hyperparameters_for_reload(self)
        for name, value in (("alpha", alpha), ("beta", beta), ("cache_lambda", cache_lambda)):
            if value < 0:
                raise ValueError(f"model.init_args.{name} is {value}; it must be ≥ 0.")
        if bptt <= 0 or cache_window <= 0:
            raise ValueError(f"model.init_args.bptt ({bptt}) and cache_window ({cache_window}) must be positive.")
        self.net = net
        self.schedule_free = ScheduleFreePoints(self, bn_batches=0)  # schedule-free optimizers; the nets have no BatchNorm
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        self.alpha, self.beta, self.bptt = alpha, beta, bptt
        self.cache_enabled, self.cache_in_validation = cache, cache_in_validation
        self.compile_enabled = compile  # not `self.compile`: that is nn.Module's method
        self.init_weights = init_weights
        if cache_mixing not in MIXING:
            raise ValueError(f"model.init_args.cache_mixing is {cache_mixing!r}; use one of {MIXING}.")
        self.cache_settings = dict(window=cache_window, theta=cache_theta, lambdah=cache_lambda, mixing=cache_mixing)
        self.losses = nn.ModuleDict({name: MeanMetric() for name in ("val", "test", "val_cache", "test_cache")})
        self.hidden = None  # the state carried across batches of the current loop
        self.restored_hidden: list | None = None  # a resumed checkpoint's carried state, used at the next batch
        self.cache: NeuralCache | None = None

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.init_weights and self.trainer.ckpt_path is None:
            load_net_weights(self.net, self.init_weights)
        if self.compile_enabled:
            compile_net(self.net, dynamic=True)

    # --- training -------------------------------------------------------------------------------------------

    def on_train_epoch_start(self) -> None:
        self.hidden = None

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        if self.restored_hidden is not None:  # here, not in a hook: the sanity check and epoch starts reset it
            self.hidden, self.restored_hidden = move_state(self.restored_hidden, inputs.device), None
        out = self.net(inputs, self.hidden)
        self.hidden = detach_state(out.hidden)
        loss = F.cross_entropy(self.net.decoder(out.output).flatten(0, 1), targets.flatten())
        ar = self.alpha * out.output.pow(2).mean()
        tar = self.beta * (out.raw_output[:, 1:] - out.raw_output[:, :-1]).pow(2).mean()
        self._set_lr(inputs.shape[1])
        self.log(names.TRAIN_LOSS, loss, prog_bar=True)
        return loss + ar + tar

    def _set_lr(self, seq_len: int | None = None) -> None:
        """Each group's lr = its scheduled lr × seq_len / bptt for a batch of `seq_len` (AWD-LSTM), or the scheduled
        lr itself (None, after the step)."""
        scheduler = self.lr_schedulers()
        if scheduler is None:
            return
        for group, scheduled in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr()):
            group["lr"] = scheduled if seq_len is None else scheduled * seq_len / self.bptt

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The step at the batch's scaled lr, then the scheduled lr back in the groups before the scheduler steps:
        torch's chainable schedulers (LinearLR, CosineAnnealingLR) compute the next lr from the group's current one,
        so a scaled lr left there would carry into every later step."""
        super().optimizer_step(*args, **kwargs)
        self._set_lr()

    # --- evaluation -----------------------------------------------------------------------------------------

    def _start_eval(self, with_cache: bool) -> None:
        self.hidden = None
        self.cache = NeuralCache(**self.cache_settings) if with_cache else None

    def on_validation_epoch_start(self) -> None:
        self._start_eval(self.cache_enabled and self.cache_in_validation)

    def on_test_epoch_start(self) -> None:
        self._start_eval(self.cache_enabled)

    def on_validation_epoch_end(self) -> None:
        self._log_perplexities("val")
        self.hidden = None  # training resumes with its own fresh state

    def on_test_epoch_end(self) -> None:
        self._log_perplexities("test")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def score(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluation of one batch of streams from the carried state (then carried on): log p_vocab of each target
        [B, T] (float32) and the last layer's raw output [B, T, H], what the neural cache reads."""
        out = self.net(inputs, self.hidden)
        self.hidden = detach_state(out.hidden)
        log_probs = F.log_softmax(self.net.decoder(out.output).float(), dim=-1)
        return log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1), out.raw_output

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> None:
        inputs, targets = batch
        target_log_probs, raw_output = self.score(inputs, targets)
        self.losses[split].update(-target_log_probs.mean(), weight=targets.numel())
        if self.cache is not None:
            if inputs.shape[0] != 1:
                raise ValueError(f"the neural cache reads one stream: set data.eval_batch_size 1 (it is "
                                 f"{inputs.shape[0]}) or model.init_args.cache false.")
            mixed = self.cache.log_probs(target_log_probs[0], raw_output[0].float(), targets[0])
            self.losses[f"{split}_cache"].update(-mixed.mean(), weight=targets.numel())

    def _log_perplexities(self, split: str) -> None:
        loss_name, ppl_name, ppl_cache_name = SPLIT_METRICS[split]
        loss = self.losses[split].compute()
        self.log(loss_name, loss, sync_dist=False)
        self.log(ppl_name, torch.exp(loss), prog_bar=split == "val", sync_dist=False)
        self.losses[split].reset()
        if self.cache is not None:
            cache_loss = self.losses[f"{split}_cache"].compute()
            self.log(ppl_cache_name, torch.exp(cache_loss), sync_dist=False)
            self.losses[f"{split}_cache"].reset()
        self.cache = None

    # --- checkpoints ------------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Every rank's carried state, on the CPU (rank 0 writes the file; `all_gather_object` runs on every rank
        while a checkpoint is built, as in RNGStateCheckpoint). At an epoch end it is None: validation reset it."""
        local = move_state(self.hidden, torch.device("cpu"))
        if self.trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(ranks, local)
        else:
            ranks = [local]
        checkpoint[HIDDEN_CHECKPOINT_KEY] = ranks
        self.schedule_free.save(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.schedule_free.load(checkpoint)
        ranks = checkpoint.get(HIDDEN_CHECKPOINT_KEY) or [None]
        self.restored_hidden = ranks[self.global_rank % len(ranks)]  # another world size: the shards differ anyway

    # --- optimisation ---------------------------------------------------------------------------------------

    def configure_optimizers(self):
        optimizer = build_optimizer(self.optimizer_factory, [{"params": list(self.net.parameters())}], self.net)
        announce_muon_split(self, optimizer)
        scheduler = self.scheduler_factory(optimizer, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
