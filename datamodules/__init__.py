"""LightningDataModules: files on disk → batches (data only, no models)."""
from datamodules.cifar10 import CIFAR10DataModule

__all__ = ["CIFAR10DataModule"]
