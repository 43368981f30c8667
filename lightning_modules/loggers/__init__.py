"""Lightning's CSV and W&B loggers, made to continue a resumed run instead of starting another (see resumable.py)."""
from lightning_modules.loggers.resumable import ResumableCSVLogger, ResumableWandbLogger

__all__ = ["ResumableCSVLogger", "ResumableWandbLogger"]
