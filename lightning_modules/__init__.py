"""LightningModules; the plain networks they train live in `lightning_modules.nets`."""
from lightning_modules.image_classifier import ImageClassifier
from lightning_modules.language_model import LanguageModel

__all__ = ["ImageClassifier", "LanguageModel"]
