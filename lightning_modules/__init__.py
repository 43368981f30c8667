"""LightningModules (and the callback they share); the plain networks they train live in `lightning_modules.nets`."""
from lightning_modules.elapsed_time import ElapsedTime
from lightning_modules.image_classifier import ImageClassifier
from lightning_modules.language_model import LanguageModel

__all__ = ["ElapsedTime", "ImageClassifier", "LanguageModel"]
