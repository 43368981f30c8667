"""Stanford Cars (196 classes, 8,144 train / 8,041 test images) for fine-tuning an ImageNet ResNet.

Images differ in size, so they are decoded (`torchvision.io`) and augmented per sample in DataLoader workers
with `torchvision.transforms.v2` on uint8 tensors, and batched as uint8 224×224: a quarter of the bytes of
float32 to move to the device, where `on_after_batch_transfer` applies the ImageNet normalisation.
Test-time augmentation (`augment`) runs on the device on the normalised centre crops.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets import StanfordCars
from torchvision.transforms import v2

from datamodules import stanford_cars_files as files
from datamodules.batch_augment import normalize, random_affine_flip_lighting
from datamodules.image_folder import ImageFolder, predict_loader

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the pretrained ResNet's input statistics
IMAGENET_STD = (0.229, 0.224, 0.225)


class CarImages(Dataset):
    """Images listed by path (the combined release), decoded and transformed like torchvision's StanfordCars."""

    def __init__(self, split: files.CarsSplit, classes: list[str], transform, loader: files.DecodeImage):
        self.paths, self.labels, self.classes = split.paths, split.labels, classes
        self.transform, self.loader = transform, loader

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.loader(self.paths[index])), self.labels[index]


def train_transform(image_size: int, max_zoom: float, max_rotation: float, lighting: float) -> v2.Compose:
    """The seed's `tfms_from_model(..., aug_tfms=transforms_side_on, max_zoom=1.05)`, on uint8 tensors.

    Shorter side resized to size·U(1, max_zoom), rotation ±max_rotation°, random size×size crop, horizontal
    flip, brightness and contrast ±lighting. (fastai 0.7 reflected the rotation border; torchvision fills
    black, mostly cropped away.)
    """
    return v2.Compose([
        v2.RandomResize(image_size, int(image_size * max_zoom) + 1, antialias=True),
        v2.RandomRotation(max_rotation),
        v2.RandomCrop(image_size),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(brightness=lighting, contrast=lighting),
    ])


def eval_transform(image_size: int) -> v2.Compose:
    """Shorter side to `image_size`, centre crop (fastai 0.7's validation transform)."""
    return v2.Compose([v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)])


class StanfordCarsDataModule(pl.LightningDataModule):
    """Stanford Cars from either layout (see `datamodules/stanford_cars_files.py`) under `data_dir`.

    Args:
        data_dir: folder holding `stanford_cars/` (torchvision layout) or `car_ims/` + `cars_annos.mat`.
        batch_size: images per batch and per device (the seed: 128).
        val_split: 0 validates on the test split, as the seed did; N > 0 holds out N training images instead.
        num_workers: DataLoader workers that decode and augment (JPEG decoding is the bottleneck: use many).
        image_size: side of the square crops (the seed: 224).
        crop_to_bbox: crop each image to its annotated bounding box first (the seed used whole images).
        max_zoom, max_rotation, lighting: the seed's augmentation strengths (1.05, 10°, 0.05).
        eval_batch_size: batch size for validation/test (default: `batch_size`).
        predict_dir: a folder of PNG/JPEG images for `cli.py predict` (`datamodules/image_folder.py`), given the
            evaluation transform (shorter side to `image_size`, centre crop); prediction reads no training data.

    The class names (from `cars_meta.mat` or `cars_annos.mat`) are kept in every checkpoint (`state_dict`), so
    prediction from a checkpoint names the classes without the dataset.
    """

    num_classes = files.NUM_CLASSES

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        val_split: int = 0,
        num_workers: int = 8,
        image_size: int = 224,
        crop_to_bbox: bool = False,
        max_zoom: float = 1.05,
        max_rotation: float = 10.0,
        lighting: float = 0.05,
        eval_batch_size: int | None = None,
        predict_dir: str | None = None,
    ):
        super().__init__()
        for name, value in (("batch_size", batch_size), ("image_size", image_size)):
            if value <= 0:
                raise ValueError(f"data.{name} is {value}; set it to a positive number.")
        if val_split < 0:
            raise ValueError(f"data.val_split is {val_split}; use 0 (validate on test) or a positive image count.")
        if max_zoom < 1:
            raise ValueError(f"data.max_zoom is {max_zoom}; use 1 (no zoom) or more (the seed: 1.05).")
        data_dir = str(data_dir)  # saved as a str: a Path would make checkpoints fail to load with weights_only=True
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.batch_size, self.val_split, self.num_workers = batch_size, val_split, num_workers
        self.crop_to_bbox, self.eval_batch_size = crop_to_bbox, eval_batch_size or batch_size
        self.train_tf = train_transform(image_size, max_zoom, max_rotation, lighting)
        self.eval_tf = eval_transform(image_size)
        self.max_zoom, self.max_rotation, self.lighting = max_zoom, max_rotation, lighting
        self.mean, self.std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.classes: list[str] = []
        self.train_set = self.val_set = self.test_set = self.predict_set = None
        self.predict_dir = predict_dir

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":  # images of one's own: the dataset is not needed, nor read
            if self.predict_dir is None:
                raise ValueError("data.predict_dir is not set: give the folder of images to classify, e.g. "
                                 "--data.predict_dir my_images.")
            self.predict_set = ImageFolder(self.predict_dir, self.eval_tf)
            return
        need_test = stage in ("test", "predict") or (self.val_split == 0 and stage in ("fit", "validate", None))
        why = "testing" if stage in ("test", "predict") else "validation (data.val_split: 0 validates on test)"
        files.check_files(self.data_dir, need_test_labels=need_test, why_test=why)
        if files.is_combined_layout(self.data_dir):
            train, test, self.classes = files.read_combined(self.data_dir)
            loader = files.DecodeImage(self._boxes(train, test))
            make = lambda split, tf: CarImages(split, self.classes, tf, loader)  # noqa: E731
        else:
            base = self.data_dir / "stanford_cars"
            has_test = (base / "cars_test_annos_withlabels.mat").is_file() and (base / "cars_test").is_dir()
            train, test, self.classes = files.read_torchvision(self.data_dir, with_test=need_test or has_test)
            make = self._torchvision_dataset
        files.check_split("train", train.paths, train.labels)
        order = np.random.default_rng(0).permutation(len(train.paths))  # fixed: the same split everywhere
        if self.val_split >= len(order):
            raise ValueError(f"data.val_split is {self.val_split} but there are only {len(order)} training "
                             "images; lower it.")
        val_idx, train_idx = order[: self.val_split].tolist(), order[self.val_split :].tolist()
        self.train_set = Subset(make(train, self.train_tf), train_idx)
        if test is not None:
            files.check_split("test", test.paths, test.labels)
            self.test_set = make(test, self.eval_tf)
        self.val_set = Subset(make(train, self.eval_tf), val_idx) if self.val_split else self.test_set

    def _boxes(self, *splits: files.CarsSplit) -> dict[str, files.Box] | None:
        if not self.crop_to_bbox:
            return None
        return {p: b for split in splits for p, b in zip(split.paths, split.boxes)}

    def _torchvision_dataset(self, split: files.CarsSplit, transform) -> StanfordCars:
        """torchvision's own class reads its layout; our loader decodes with torchvision.io (and crops)."""
        loader = files.DecodeImage(self._boxes(split))
        return StanfordCars(str(self.data_dir), split=split.name, transform=transform, loader=loader)

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        # Training drops the last incomplete batch: a batch of one image would break the head's BatchNorm1d.
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=self.num_workers > 0,
                          drop_last=shuffle)

    def train_dataloader(self) -> DataLoader:
        if len(self.train_set) < self.batch_size:
            raise ValueError(f"data.batch_size {self.batch_size} is larger than the {len(self.train_set)} "
                             "training images; lower it.")
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return predict_loader(self.predict_set, self.eval_batch_size, self.num_workers)

    def state_dict(self) -> dict[str, Any]:
        return {"classes": list(self.classes)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.classes = list(state_dict.get("classes") or self.classes)

    def augment(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training-like views of normalised centre crops, on the device (for the model's TTA): zoom, rotation,
        flip and lighting of the seed's strengths in one `grid_sample`."""
        return random_affine_flip_lighting(images, self.mean, self.std, self.max_zoom, self.max_rotation,
                                           self.lighting, generator)

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int):
        images, labels = batch
        self.mean, self.std = self.mean.to(images.device), self.std.to(images.device)
        return normalize(images, self.mean, self.std), labels
