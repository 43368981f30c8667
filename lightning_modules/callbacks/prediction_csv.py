"""PredictionCSV: `cli.py predict` writes one CSV — each image's path and its top-k classes with probabilities.

Lightning's `BasePredictionWriter` is the hook; this decides the file: one row per image in file order,
`path, class_1, prob_1, …, class_k, prob_k`, the class names those the datamodule carries (restored from the
checkpoint, so no training data is needed), written to `<name>.tmp` beside the target and renamed into place so a
crash never leaves half a table. Predictions come from `ImageClassifier.predict_step`: the softmax of the plain
image, or its average with the model's `tta` views.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter


class PredictionCSV(BasePredictionWriter):
    """Writes `path` (CSV) at the end of prediction, with the `top_k` classes of every image."""

    def __init__(self, path: str | os.PathLike, top_k: int = 5) -> None:
        super().__init__(write_interval="epoch")
        if top_k <= 0:
            raise ValueError(f"top_k is {top_k}; ask for at least the top class (1).")
        self.path, self.top_k, self.rows = Path(path), top_k, 0

    def write_on_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions: Any,
                           batch_indices: Any) -> None:
        outputs = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        indices = torch.cat([out["indices"] for out in outputs]).tolist()
        probs = torch.cat([out["probs"] for out in outputs])
        data = trainer.datamodule
        classes = list(getattr(data, "classes", None) or [f"class_{i}" for i in range(probs.shape[1])])
        top = probs.topk(min(self.top_k, probs.shape[1]), dim=1)
        header = ["path"] + [name for k in range(top.indices.shape[1]) for name in (f"class_{k + 1}", f"prob_{k + 1}")]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        with temporary.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(header)
            for row in sorted(range(len(indices)), key=lambda r: indices[r]):
                cells = [str(data.predict_set.paths[indices[row]])]
                for k in range(top.indices.shape[1]):
                    cells += [classes[top.indices[row, k]], f"{top.values[row, k].item():.6f}"]
                writer.writerow(cells)
        os.replace(temporary, self.path)
        self.rows = len(indices)
