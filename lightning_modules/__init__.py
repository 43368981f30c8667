"""LightningModules; the plain networks they train live in `lightning_modules.nets`."""
from lightning_modules.image_classifier import ImageClassifier

__all__ = ["ImageClassifier"]
