"""The two LightningModules. Their plain networks live in `nets/`, what the Trainer is given besides them in
`callbacks/` (callbacks and the checkpoint plugin) and `loggers/`."""
from lightning_modules.image_classifier import ImageClassifier
from lightning_modules.language_model import LanguageModel

__all__ = ["ImageClassifier", "LanguageModel"]
