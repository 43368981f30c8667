"""CIFAR-10 as uint8 tensors in memory; augmentation per batch on the device after the transfer.

Why no per-sample pipeline: the whole dataset is 180 MB of uint8, so each batch is one fancy-index of a tensor
(`TensorBatchDataset.__getitems__`) and the random crop/flip runs on the GPU (`on_after_batch_transfer`). No
DataLoader workers are needed (`num_workers: 0` is the fast default).

Training order: a `DistributedSampler` built here, for one process too — each epoch is the permutation seeded with
`seed_everything`'s seed + epoch (`PL_GLOBAL_SEED`, as Lightning's own DDP sampler), and each rank takes its
distinct shard of it. Since it is already a DistributedSampler, Lightning injects none under DDP, so the loader
is not re-created. That makes the order replayable, and the loader (`ResumableDataLoader`) saves its position in
every checkpoint: a run resumed mid-epoch trains exactly the batches the uninterrupted run would have.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.transforms import v2

from datamodules import cifar10_files
from datamodules.batch_augment import normalize, random_crop_flip
from datamodules.image_folder import ImageFolder, predict_loader
from datamodules.resumable_loader import POSITION_KEY, ResumableDataLoader, TrainLoaderPosition

# Channel statistics the seed normalised with (sgugger/Adam-experiments train_cifar10.py).
CIFAR10_MEAN = (0.4914, 0.48216, 0.44653)
CIFAR10_STD = (0.24703, 0.24349, 0.26159)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class TensorBatchDataset(Dataset):
    """Images and labels held as tensors; `__getitems__` serves a whole batch with one index operation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices)
        return self.images[index], self.labels[index]


def fit_to_32(image: torch.Tensor) -> torch.Tensor:
    """An image of any size as a 32×32 CIFAR image: shorter side to 32, centre crop (untouched if 32×32)."""
    if image.shape[-2:] == (32, 32):
        return image
    return v2.functional.center_crop(v2.functional.resize(image, 32, antialias=True), [32, 32])


def _already_batched(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch


class CIFAR10DataModule(pl.LightningDataModule):
    """CIFAR-10 from the official python batches in `data_dir/cifar-10-batches-py`.

    Args:
        data_dir: folder holding `cifar-10-batches-py/` (downloaded there when `download` is true).
        batch_size: images per batch and per device (the seed: 128).
        val_split: 0 validates on the test set, as the seed did; N > 0 holds out N training images instead.
        num_workers: DataLoader workers; 0 is fastest since batches are tensor slices.
        download: fetch the official archive (MD5-checked) when the files are missing.
        train_subset: keep only this many training images (a fixed random subset), for CPU-sized runs.
        pad: reflect padding before the random 32×32 crop (the seed: 4).
        eval_batch_size: batch size for validation/test (default: `batch_size`).
        predict_dir: a folder of PNG/JPEG images for `cli.py predict` (`datamodules/image_folder.py`), resized to
            32×32 (shorter side, then centre crop) where they are not; prediction reads no training data.

    Class names: `batches.meta`'s `label_names` when the data has it (else CIFAR-10's), kept in every
    checkpoint (`state_dict`) so that prediction from a checkpoint names the classes without the data.
    """

    num_classes = cifar10_files.NUM_CLASSES

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        val_split: int = 0,
        num_workers: int = 0,
        download: bool = False,
        train_subset: int | None = None,
        pad: int = 4,
        eval_batch_size: int | None = None,
        predict_dir: str | None = None,
    ):
        super().__init__()
        if batch_size <= 0:
            raise ValueError(f"data.batch_size is {batch_size}; set it to a positive number of images.")
        if val_split < 0:
            raise ValueError(f"data.val_split is {val_split}; use 0 (validate on test) or a positive image count.")
        if train_subset is not None and train_subset <= 0:
            raise ValueError(f"data.train_subset is {train_subset}; use a positive image count or null for all.")
        data_dir = str(data_dir)  # saved as a str: a Path would make checkpoints fail to load with weights_only=True
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.batch_size, self.val_split, self.num_workers = batch_size, val_split, num_workers
        self.download, self.train_subset, self.pad = download, train_subset, pad
        self.eval_batch_size = eval_batch_size or batch_size
        self.mean = torch.tensor(CIFAR10_MEAN)
        self.std = torch.tensor(CIFAR10_STD)
        self.train_set = self.val_set = self.test_set = self.predict_set = None
        self.train_position = TrainLoaderPosition()
        self.predict_dir = predict_dir
        self.classes = list(CLASSES)

    def prepare_data(self) -> None:
        predicting = self.trainer is not None and self.trainer.predicting  # images of one's own: no dataset needed
        if self.download and not predicting:
            cifar10_files.download(self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":  # images of one's own: the training data is not needed, nor read
            if self.predict_dir is None:
                raise ValueError("data.predict_dir is not set: give the folder of images to classify, e.g. "
                                 "--data.predict_dir my_images.")
            self.predict_set = ImageFolder(self.predict_dir, fit_to_32)
            return
        if self.train_set is not None:
            return
        self.classes = cifar10_files.load_label_names(self.data_dir) or self.classes
        train_x, train_y = cifar10_files.load_split(self.data_dir, train=True)
        test_x, test_y = cifar10_files.load_split(self.data_dir, train=False)
        order = np.random.default_rng(0).permutation(len(train_y))  # fixed: the same split on every rank and run
        if self.val_split >= len(train_y):
            raise ValueError(
                f"data.val_split is {self.val_split} but there are only {len(train_y)} training images; lower it."
            )
        val_idx, train_idx = order[: self.val_split], order[self.val_split :]
        if self.train_subset is not None:
            train_idx = train_idx[: self.train_subset]
        self.train_set = self._dataset(train_x[train_idx], train_y[train_idx])
        self.test_set = self._dataset(test_x, test_y)
        self.val_set = self._dataset(train_x[val_idx], train_y[val_idx]) if self.val_split else self.test_set

    @staticmethod
    def _dataset(images: np.ndarray, labels: np.ndarray) -> TensorBatchDataset:
        return TensorBatchDataset(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels))

    def _loader_options(self) -> dict[str, Any]:
        # Each loader has its own generator for its workers' base seed, so making an iterator draws nothing from the
        # global one: a resumed run makes them at other times (no sanity check, persistent workers started later).
        return {"num_workers": self.num_workers, "collate_fn": _already_batched,
                "pin_memory": torch.cuda.is_available(), "persistent_workers": self.num_workers > 0,
                "generator": torch.Generator().manual_seed(torch.initial_seed())}

    def train_dataloader(self) -> ResumableDataLoader:
        if len(self.train_set) < self.batch_size:
            raise ValueError(
                f"data.batch_size {self.batch_size} is larger than the {len(self.train_set)} training images; lower it."
            )
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        sampler = DistributedSampler(self.train_set, num_replicas=world_size, rank=rank, shuffle=True,
                                     seed=int(os.environ.get("PL_GLOBAL_SEED", 0)))  # Lightning's DDP default
        return self.train_position.hand_to(
            ResumableDataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, **self._loader_options()))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.eval_batch_size, **self._loader_options())

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.eval_batch_size, **self._loader_options())

    def predict_dataloader(self) -> DataLoader:
        return predict_loader(self.predict_set, self.eval_batch_size, self.num_workers)

    def state_dict(self) -> dict[str, Any]:
        """The class names and the training loader's position (`datamodules/resumable_loader.py`) travel with
        every checkpoint."""
        position = self.train_position.state_dict(self.trainer)
        return {"classes": list(self.classes), **({POSITION_KEY: position} if position is not None else {})}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.classes = list(state_dict.get("classes") or self.classes)
        self.train_position.load_state_dict(state_dict.get(POSITION_KEY), self.trainer)

    def augment(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The training augmentation on a normalised batch: random crop after reflect-padding, random h-flip.

        Public so the model's test-time augmentation uses exactly the training views.
        """
        return random_crop_flip(images, self.pad, generator)

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int):
        images, labels = batch
        self.mean, self.std = self.mean.to(images.device), self.std.to(images.device)
        images = normalize(images, self.mean, self.std)
        if self.trainer is not None and self.trainer.training:
            images = self.augment(images)
        return images, labels
