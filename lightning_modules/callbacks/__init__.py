"""What the Trainer is given besides the model: callbacks for crashes, preemption, exact resume, run time,
prediction files and W&B sync requests from offline nodes, and the checkpoint plugin that writes atomically.
docs/RELIABILITY.md says what each guards."""
from lightning_modules.callbacks.checkpoint_io import AtomicCheckpointIO
from lightning_modules.callbacks.elapsed_time import ElapsedTime
from lightning_modules.callbacks.nan_guard import NaNGuard
from lightning_modules.callbacks.prediction_csv import PredictionCSV
from lightning_modules.callbacks.preemption import PreemptionCheckpoint
from lightning_modules.callbacks.rng_state import RNGStateCheckpoint
from lightning_modules.callbacks.wandb_sync_request import WandbSyncRequest

__all__ = ["AtomicCheckpointIO", "ElapsedTime", "NaNGuard", "PredictionCSV", "PreemptionCheckpoint",
           "RNGStateCheckpoint", "WandbSyncRequest"]
