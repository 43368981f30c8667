"""`WandbSyncRequest`: a live W&B dashboard from a compute node without internet, through `wandb-osh`.

On most clusters the compute nodes cannot reach the internet, so a run there logs to W&B offline and nothing
shows on the dashboard until someone runs `wandb sync` by hand. `wandb-osh` (wandb-offline-sync-hook) splits the
work: on the compute node a hook drops a small request file, naming the run's offline folder, in a folder both
nodes see; on the login node, which has internet, the `wandb-osh` command watches that folder and runs
`wandb sync` in each folder named. This callback is the compute node's half: after each validation (when the
epoch's metrics have just been written) rank 0 calls wandb-osh's own `TriggerWandbSyncHook` with the folder of
this run's W&B logger.

Why not wandb-osh's `TriggerWandbSyncLightningCallback`: it subclasses `lightning.pytorch.Callback` whenever the
`lightning` package can be imported (it falls back to `pytorch_lightning` only where it cannot, with a warning;
their issue #96), and this project runs on `pytorch_lightning`, whose Trainer does not take a `lightning.pytorch`
callback. Environments with both packages are common (GPU images often ship both). Ours is the same few lines
on `pytorch_lightning` — with the hook placed after the metrics are logged
(`on_validation_end`, not `on_validation_epoch_end`), the folder taken from the run's own logger rather than
`wandb.run`, rank 0 only under DDP, and a clear stop when the run has no W&B logger to sync.

Turned on by `configs/trainer/offline_node.yaml` (docs/CLUSTER.md, docs/LOGGING.md).
"""
from __future__ import annotations

import logging
from pathlib import Path

from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.loggers import WandbLogger

log = logging.getLogger(__name__)
DEFAULT_COMMUNICATION_DIR = "~/.wandb_osh_command_dir"  # wandb-osh's own default, on both nodes


class WandbSyncRequest(Callback):
    """After each validation (never the sanity check), rank 0 asks `wandb-osh` to sync this run's W&B folder.

    `communication_dir`: the folder the `wandb-osh` command on the login node watches (`--command-dir`); it must be
    on a filesystem both nodes see. `~` is expanded on the node that runs.
    """

    def __init__(self, communication_dir: str = DEFAULT_COMMUNICATION_DIR):
        self.communication_dir = Path(communication_dir).expanduser()
        self._hook = None
        self._logger: WandbLogger | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not trainer.is_global_zero or self._hook is not None:
            return
        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if not loggers:
            raise ValueError("WandbSyncRequest (configs/trainer/offline_node.yaml) asks wandb-osh to sync this run's "
                             "W&B folder, but the run has no W&B logger: drop offline_node.yaml, or the config that "
                             "removed the W&B logger (e.g. configs/trainer/csv_only.yaml).")
        self._logger = loggers[0]
        offline = self._logger.is_offline() if hasattr(self._logger, "is_offline") else self._logger._offline
        if not offline:
            log.warning("WandbSyncRequest: W&B logs online here, so no sync requests are written "
                        "(configs/trainer/offline_node.yaml is for nodes without internet)")
            return
        from wandb_osh.hooks import TriggerWandbSyncHook  # only where it is used: the package imports wandb

        self._hook = TriggerWandbSyncHook(communication_dir=self.communication_dir)

    def run_folder(self) -> Path:
        """This run's offline W&B folder (`.../wandb/offline-run-<time>-<id>`): `wandb sync` runs in it."""
        return Path(self._logger.experiment.dir).parent.resolve()  # experiment.dir is the folder's files/

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._hook is None or trainer.sanity_checking:
            return
        self._hook(self.run_folder())
