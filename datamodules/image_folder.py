"""Images of one's own, for `cli.py predict --data.predict_dir DIR`: every PNG/JPEG under DIR, any size, RGB or
grayscale, decoded and given the task's evaluation transform, batched as uint8 like the training data.

Why a dataset of its own: the task datasets read labelled splits (CIFAR's pickles, Cars' annotations), which a user
predicting on their photos does not have; and prediction must not need the training data at all (the class names
travel in the checkpoint, `datamodules/cifar10.py` and `stanford_cars.py`'s `state_dict`).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image

EXTENSIONS = (".png", ".jpg", ".jpeg")


def image_files(folder: str | Path) -> list[Path]:
    """Every PNG/JPEG under `folder` (recursively, sorted), or a one-sentence error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"data.predict_dir {folder} is not a folder: point it at a folder of PNG or JPEG "
                                "images.")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
    if not files:
        raise ValueError(f"data.predict_dir {folder} holds no PNG or JPEG images (looked for {', '.join(EXTENSIONS)} "
                         "in it and its subfolders): put the images to classify there.")
    return files


class ImageFolder(Dataset):
    """(uint8 image [3, H, W] after `transform`, its index); `paths[index]` names the file."""

    def __init__(self, folder: str | Path, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.paths, self.transform = image_files(folder), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.paths[index]
        try:
            with warnings.catch_warnings():  # torchvision 0.29's decoders warn they are deprecated; they still work
                warnings.simplefilter("ignore", DeprecationWarning)
                image = decode_image(str(path), mode=ImageReadMode.RGB)  # grayscale and RGBA become RGB
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"data.predict_dir: {path} cannot be read as an image ({str(error).splitlines()[0]}); "
                             "remove it or replace it with a PNG or JPEG file.") from error
        return self.transform(image), index


def predict_loader(dataset: ImageFolder, batch_size: int, num_workers: int = 0) -> DataLoader:
    """Batches in file order (the CSV keeps it), stacked as uint8 like the training batches."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=torch.cuda.is_available())
