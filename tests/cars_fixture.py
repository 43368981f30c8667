"""A generated Stanford Cars root built from the real devkit annotations, with small generated JPEGs.

File names, class ids and bounding boxes are real (from ../shared/data/stanford-cars-devkit); the pixels are
generated: a grey background with the bounding box filled in a colour that identifies the class, so crops can
be checked and a net can learn the classes. The labelled test file, which the devkit lacks, is generated from
the real test annotations with assigned classes (`scipy.io.savemat`).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import scipy.io
import torch
from torchvision.io import write_jpeg

FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
MAX_SIDE = 400  # only annotations whose box fits in a small image are used, so the JPEGs stay small


def class_colour(label: int) -> tuple[int, int, int]:
    """A distinct, saturated colour per 0-based class (the box's fill)."""
    return (40 + 53 * label % 200, 220 - 37 * label % 180, 30 + 71 * label % 210)


def _write_image(path: Path, box: tuple[int, int, int, int], label: int, grayscale: bool = False) -> None:
    x1, y1, x2, y2 = box
    image = torch.full((3, y2 + 7, x2 + 11), 128, dtype=torch.uint8)
    image[:, y1 - 1 : y2, x1 - 1 : x2] = torch.tensor(class_colour(label), dtype=torch.uint8).view(3, 1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jpeg(image[:1] if grayscale else image, str(path), quality=95)


def _records(annotations) -> list[dict]:
    return [{f: (str(a[f]) if f == "fname" else int(a[f])) for f in FIELDS if f in a.dtype.names} for a in annotations]


def _small(records: list[dict]) -> list[dict]:
    return [r for r in records if r["bbox_x2"] < MAX_SIDE and r["bbox_y2"] < MAX_SIDE]


def _struct(records: list[dict], fields: tuple[str, ...]) -> np.ndarray:
    array = np.empty(len(records), dtype=[(f, "O") for f in fields])
    for i, r in enumerate(records):
        array[i] = tuple(r[f] for f in fields)
    return array


def pick_annotations(devkit: Path, classes: int, train_per_class: int, test_per_class: int):
    """Real train annotations of the first `classes` classes, and real test annotations given those classes."""
    train_all = _small(_records(scipy.io.loadmat(devkit / "cars_train_annos.mat", squeeze_me=True)["annotations"]))
    train = [r for c in range(1, classes + 1) for r in [a for a in train_all if a["class"] == c][:train_per_class]]
    test = _small(_records(scipy.io.loadmat(devkit / "cars_test_annos.mat", squeeze_me=True)["annotations"]))
    test = test[: classes * test_per_class]
    for i, r in enumerate(test):
        r["class"] = 1 + i % classes
    return train, test


def make_cars_root(root: Path, devkit: Path, layout: str = "torchvision", classes: int = 4,
                   train_per_class: int = 3, test_per_class: int = 2) -> Path:
    """Write a Cars root in `layout` ("torchvision" or "combined"); returns `root` (the data_dir)."""
    train, test = pick_annotations(devkit, classes, train_per_class, test_per_class)
    grey = {train[0]["fname"]}  # one grayscale JPEG, as the real dataset has a few
    if layout == "torchvision":
        base = root / "stanford_cars"
        (base / "devkit").mkdir(parents=True, exist_ok=True)
        shutil.copy(devkit / "cars_meta.mat", base / "devkit" / "cars_meta.mat")
        scipy.io.savemat(base / "devkit" / "cars_train_annos.mat", {"annotations": _struct(train, FIELDS)})
        scipy.io.savemat(base / "cars_test_annos_withlabels.mat", {"annotations": _struct(test, FIELDS)})
        for folder, records in (("cars_train", train), ("cars_test", test)):
            for r in records:
                box = (r["bbox_x1"], r["bbox_y1"], r["bbox_x2"], r["bbox_y2"])
                _write_image(base / folder / r["fname"], box, r["class"] - 1, r["fname"] in grey and folder == "cars_train")
    elif layout == "combined":
        combined = []
        for is_test, records in ((0, train), (1, test)):
            for r in records:
                combined.append({**r, "relative_im_path": f"car_ims/{len(combined) + 1:06d}.jpg", "test": is_test})
        fields = ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")
        class_names = scipy.io.loadmat(devkit / "cars_meta.mat", squeeze_me=True)["class_names"]
        root.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(root / "cars_annos.mat", {"annotations": _struct(combined, fields),
                                                   "class_names": np.array(list(class_names), dtype=object)})
        for r in combined:
            box = (r["bbox_x1"], r["bbox_y1"], r["bbox_x2"], r["bbox_y2"])
            _write_image(root / r["relative_im_path"], box, r["class"] - 1)
    else:
        raise ValueError(f"layout {layout!r}: use 'torchvision' or 'combined'")
    return root
