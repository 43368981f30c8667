"""A callback the DDP tests add through the CLI: each rank writes what it saw to $RANK_PROBE_DIR/rank<r>.json."""
from __future__ import annotations

import json
import os
from pathlib import Path

from pytorch_lightning.callbacks import Callback


class RankProbe(Callback):
    def __init__(self):
        self.train_indices: list[int] = []
        self.steps_per_epoch: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module):
        sampler = getattr(trainer.train_dataloader, "sampler", None)
        if trainer.current_epoch == 0 and isinstance(getattr(sampler, "num_replicas", None), int):
            self.train_indices = [int(i) for i in sampler]  # this rank's share of epoch 0 (DistributedSampler)
        self.steps_per_epoch.append(0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps_per_epoch[-1] += 1

    def on_train_end(self, trainer, pl_module):
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "global_step": trainer.global_step,
                  "train_indices": self.train_indices, "steps_per_epoch": self.steps_per_epoch, "val": metrics}
        out = Path(os.environ["RANK_PROBE_DIR"]) / f"rank{trainer.global_rank}.json"
        out.write_text(json.dumps(record))
