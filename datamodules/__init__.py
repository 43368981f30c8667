"""LightningDataModules: files on disk → batches (data only, no models)."""
from datamodules.cifar10 import CIFAR10DataModule
from datamodules.stanford_cars import StanfordCarsDataModule
from datamodules.wikitext2 import WikiText2DataModule

__all__ = ["CIFAR10DataModule", "StanfordCarsDataModule", "WikiText2DataModule"]
