"""LightningModules (and the callbacks they share); the plain networks they train live in `lightning_modules.nets`."""
from lightning_modules.checkpoint_io import AtomicCheckpointIO
from lightning_modules.elapsed_time import ElapsedTime
from lightning_modules.image_classifier import ImageClassifier
from lightning_modules.language_model import LanguageModel
from lightning_modules.nan_guard import NaNGuard
from lightning_modules.prediction_csv import PredictionCSV
from lightning_modules.preemption import PreemptionCheckpoint
from lightning_modules.resumable_loggers import ResumableCSVLogger, ResumableWandbLogger
from lightning_modules.rng_state import RNGStateCheckpoint

__all__ = ["AtomicCheckpointIO", "ElapsedTime", "ImageClassifier", "LanguageModel", "NaNGuard", "PredictionCSV",
           "PreemptionCheckpoint", "RNGStateCheckpoint", "ResumableCSVLogger", "ResumableWandbLogger"]
