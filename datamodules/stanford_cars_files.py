"""Stanford Cars on disk: find the layout, say exactly what is missing, read annotations and decode images.

Two layouts are accepted, because users have one or the other:
- torchvision's (`torchvision.datasets.StanfordCars`): `ROOT/stanford_cars/devkit/{cars_meta.mat,
  cars_train_annos.mat}`, `ROOT/stanford_cars/cars_test_annos_withlabels.mat`, `cars_train/`, `cars_test/`;
- the original combined release the seed used: `ROOT/car_ims/` + `ROOT/cars_annos.mat` (all 16,185 images,
  a `test` flag per image, class names inside).
The original host is offline and torchvision cannot download either, so a missing file is an error that lists
what is missing, where to get it and where to put it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image

# torchvision 0.29 deprecates its decoders in favour of TorchCodec, warning on every image; the decoders still
# work and need no extra package, so keep them (the issue asked for torchvision.io) and say it once, here.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

NUM_CLASSES = 196
MIRRORS = ("images: https://www.kaggle.com/datasets/jessicali9530/stanford-cars-dataset; devkit and "
           "cars_test_annos_withlabels.mat: the links in https://github.com/pytorch/vision/issues/7545")
TORCHVISION_FILES = ("devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "cars_train/")
LABELLED_TEST_FILES = ("cars_test_annos_withlabels.mat", "cars_test/")
COMBINED_FILES = ("cars_annos.mat", "car_ims/")

Box = tuple[int, int, int, int]  # x1, y1, x2, y2: 1-based and inclusive, as in the MATLAB annotations


@dataclass
class CarsSplit:
    """Image paths, 0-based labels and bounding boxes of one split, index-aligned."""

    name: str  # "train" or "test"
    paths: list[str]
    labels: list[int]
    boxes: list[Box]


def loadmat(path: Path) -> dict:
    import scipy.io  # imported here: only Stanford Cars needs scipy

    try:
        return scipy.io.loadmat(str(path), squeeze_me=True)
    except (ValueError, OSError, TypeError) as err:
        raise ValueError(f"{path} is not a readable MATLAB annotation file ({err}); download it again.") from err


def is_combined_layout(data_dir: Path) -> bool:
    return (data_dir / "cars_annos.mat").exists() or (data_dir / "car_ims").is_dir()


def _missing(base: Path, names: tuple[str, ...]) -> list[str]:
    return [str(base / n) for n in names if not ((base / n).is_dir() if n.endswith("/") else (base / n).is_file())]


def check_files(data_dir: Path, need_test_labels: bool, why_test: str) -> None:
    """Raise one clear error naming every missing file of the layout found in `data_dir`."""
    if is_combined_layout(data_dir):
        missing = _missing(data_dir, COMBINED_FILES)
        layout = f"the original release: {data_dir}/car_ims/*.jpg and {data_dir}/cars_annos.mat"
    else:
        base = data_dir / "stanford_cars"
        missing = _missing(base, TORCHVISION_FILES)
        test_missing = _missing(base, LABELLED_TEST_FILES) if need_test_labels else []
        if test_missing and not missing:
            raise FileNotFoundError(
                f"Stanford Cars: {why_test} needs the labelled test split, but {', '.join(test_missing)} "
                f"missing ({MIRRORS}); place it there, or set data.val_split N to validate on N held-out "
                "training images (and --test_after_fit false)."
            )
        missing += test_missing
        layout = (f"torchvision's: {base}/devkit/{{cars_meta.mat, cars_train_annos.mat}}, "
                  f"{base}/cars_test_annos_withlabels.mat, {base}/cars_train/*.jpg, {base}/cars_test/*.jpg "
                  f"(or the original release: {data_dir}/car_ims/ + {data_dir}/cars_annos.mat)")
    if missing:
        raise FileNotFoundError(f"Stanford Cars is incomplete in data.data_dir={data_dir}: missing "
                                f"{', '.join(missing)}; get the files ({MIRRORS}) and place them in {layout}.")


def _split_from_annotations(name: str, annotations, image_dir: Path, name_field: str) -> CarsSplit:
    split = CarsSplit(name, [], [], [])
    for a in np.atleast_1d(annotations):  # squeeze_me turns a one-image file into a scalar
        split.paths.append(str(image_dir / str(a[name_field])))
        split.labels.append(int(a["class"]) - 1)  # the annotations count classes from 1
        split.boxes.append((int(a["bbox_x1"]), int(a["bbox_y1"]), int(a["bbox_x2"]), int(a["bbox_y2"])))
    return split


def read_combined(data_dir: Path) -> tuple[CarsSplit, CarsSplit, list[str]]:
    """(train, test, class names) from `cars_annos.mat`, split by its per-image `test` flag."""
    mat = loadmat(data_dir / "cars_annos.mat")
    annotations = np.atleast_1d(mat["annotations"])
    train = _split_from_annotations("train", [a for a in annotations if not int(a["test"])], data_dir,
                                    "relative_im_path")
    test = _split_from_annotations("test", [a for a in annotations if int(a["test"])], data_dir, "relative_im_path")
    return train, test, [str(n) for n in mat["class_names"]]


def read_torchvision(data_dir: Path, with_test: bool) -> tuple[CarsSplit, CarsSplit | None, list[str]]:
    """(train, test or None, class names) from the files `torchvision.datasets.StanfordCars` reads.

    Read here too because torchvision keeps neither the bounding boxes nor a public list of paths and labels,
    which the bbox crop, the held-out split and the missing-image check need.
    """
    base = data_dir / "stanford_cars"
    train = _split_from_annotations("train", loadmat(base / "devkit" / "cars_train_annos.mat")["annotations"],
                                    base / "cars_train", "fname")
    test = None
    if with_test:
        test = _split_from_annotations("test", loadmat(base / "cars_test_annos_withlabels.mat")["annotations"],
                                       base / "cars_test", "fname")
    return train, test, [str(n) for n in loadmat(base / "devkit" / "cars_meta.mat")["class_names"]]


def check_split(split_name: str, paths: list[str], labels: list[int]) -> None:
    """Every annotated image exists and every label is a valid class, or one error naming the first problems."""
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"Stanford Cars {split_name}: {len(missing)} annotated images are missing, e.g. "
                                f"{', '.join(missing[:3])}; re-extract the image archive into that folder.")
    bad = sorted({label for label in labels if not 0 <= label < NUM_CLASSES})
    if bad:
        raise ValueError(f"Stanford Cars {split_name}: class ids {[b + 1 for b in bad[:5]]} are outside 1..196 in "
                         "the annotations; the annotation file is not the Stanford Cars one.")


class DecodeImage:
    """Path → uint8 RGB CHW tensor with `torchvision.io` (grayscale/CMYK JPEGs become RGB), optionally cropped.

    A picklable class rather than a lambda, so DataLoader workers can receive it.
    """

    def __init__(self, boxes: dict[str, Box] | None = None):
        self.boxes = boxes

    def __call__(self, path: str) -> torch.Tensor:
        image = decode_image(path, mode=ImageReadMode.RGB)
        if self.boxes is None:
            return image
        x1, y1, x2, y2 = self.boxes[path]
        height, width = image.shape[-2:]
        # 1-based inclusive → 0-based half-open, clamped (a few boxes touch or cross the image border).
        left, top = min(max(x1 - 1, 0), width - 1), min(max(y1 - 1, 0), height - 1)
        return image[:, top:max(min(y2, height), top + 1), left:max(min(x2, width), left + 1)]
