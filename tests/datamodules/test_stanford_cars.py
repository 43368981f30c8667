"""Stanford Cars datamodule on a generated root built from the real devkit annotations (tests/cars_fixture.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import scipy.io
import torch

from datamodules import StanfordCarsDataModule
from datamodules.batch_augment import random_affine_flip_lighting
from tests.cars_fixture import class_colour, make_cars_root, pick_annotations


def _module(root: Path, **kwargs) -> StanfordCarsDataModule:
    return StanfordCarsDataModule(str(root), **{"batch_size": 2, "num_workers": 0, "image_size": 32, **kwargs})


def _labels(dataset) -> list[int]:
    return [int(dataset[i][1]) for i in range(len(dataset))]


def test_labels_are_zero_based_and_class_names_come_from_cars_meta(cars_root, cars_devkit):
    train, test = pick_annotations(cars_devkit, classes=4, train_per_class=3, test_per_class=2)
    dm = _module(cars_root)
    dm.setup("fit")
    assert dm.val_set is dm.test_set  # val_split 0 validates on the test split, like the seed
    assert sorted(_labels(dm.train_set)) == sorted(r["class"] - 1 for r in train)
    assert _labels(dm.test_set) == [r["class"] - 1 for r in test]
    names = [str(n) for n in scipy.io.loadmat(cars_devkit / "cars_meta.mat", squeeze_me=True)["class_names"]]
    assert dm.classes == names and len(dm.classes) == 196 == dm.num_classes
    assert dm.classes[0] == "AM General Hummer SUV 2000"


def test_combined_layout_splits_by_test_flag(cars_devkit, tmp_path):
    train, test = pick_annotations(cars_devkit, classes=4, train_per_class=3, test_per_class=2)
    dm = _module(make_cars_root(tmp_path, cars_devkit, layout="combined"))
    dm.setup("fit")
    assert sorted(_labels(dm.train_set)) == sorted(r["class"] - 1 for r in train)
    assert _labels(dm.test_set) == [r["class"] - 1 for r in test]
    assert len(dm.classes) == 196 and dm.classes[1] == "Acura RL Sedan 2012"


@pytest.mark.parametrize("layout", ["torchvision", "combined"])
def test_bbox_crop_keeps_only_the_box(cars_devkit, tmp_path, layout):
    train, test = pick_annotations(cars_devkit, classes=4, train_per_class=3, test_per_class=2)
    root = make_cars_root(tmp_path, cars_devkit, layout=layout)
    dm = _module(root, crop_to_bbox=True)
    dm.setup("fit")
    path = dm.test_set.paths[0] if layout == "combined" else dm.test_set._samples[0][0]
    cropped = dm.test_set.loader(path)
    box = test[0]
    assert cropped.shape == (3, box["bbox_y2"] - box["bbox_y1"] + 1, box["bbox_x2"] - box["bbox_x1"] + 1)
    colour = torch.tensor(class_colour(box["class"] - 1), dtype=torch.float)
    assert (cropped.float().mean(dim=(1, 2)) - colour).abs().max() < 6  # only the box's colour (JPEG noise aside)
    plain = _module(root)
    plain.setup("fit")
    assert plain.test_set.loader(path).shape == (3, box["bbox_y2"] + 7, box["bbox_x2"] + 11)  # the whole image


def test_grayscale_jpeg_becomes_rgb(cars_root):
    dm = _module(cars_root)
    dm.setup("fit")
    images = [dm.train_set.dataset[i][0] for i in range(len(dm.train_set.dataset))]
    assert all(image.shape == (3, 32, 32) and image.dtype == torch.uint8 for image in images)


def test_batches_are_uint8_crops_normalised_on_transfer(cars_root):
    dm = _module(cars_root, image_size=40)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 40, 40) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    normalised, _ = dm.on_after_batch_transfer((images, labels), 0)
    expected = (images.float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(normalised, expected)


def test_eval_transform_is_deterministic_and_train_transform_is_not(cars_root):
    dm = _module(cars_root)
    dm.setup("fit")
    assert torch.equal(dm.test_set[0][0], dm.test_set[0][0])
    torch.manual_seed(0)
    views = [dm.train_set[0][0] for _ in range(6)]
    assert any(not torch.equal(views[0], v) for v in views[1:])


def test_val_split_holds_out_training_images(cars_root):
    dm = _module(cars_root, val_split=3)
    dm.setup("fit")
    assert len(dm.val_set) == 3 and len(dm.train_set) == len(dm.train_set.dataset) - 3
    assert set(dm.val_set.indices).isdisjoint(dm.train_set.indices)


def _copy_without(root: Path, tmp_path: Path, *relative: str) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    for name in relative:
        target = copy / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return copy


def test_missing_files_are_all_named_with_mirrors_and_layout(cars_root, tmp_path):
    copy = _copy_without(cars_root, tmp_path, "stanford_cars/devkit/cars_meta.mat", "stanford_cars/cars_train")
    with pytest.raises(FileNotFoundError) as error:
        _module(copy).setup("fit")
    message = str(error.value)
    assert "cars_meta.mat" in message and "cars_train" in message and "cars_train_annos.mat," not in message
    assert "kaggle.com" in message and "pytorch/vision/issues/7545" in message and "car_ims" in message


def test_empty_data_dir_lists_every_file(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        _module(tmp_path).setup("fit")
    for name in ("cars_meta.mat", "cars_train_annos.mat", "cars_test_annos_withlabels.mat", "cars_train"):
        assert name in str(error.value)


def test_combined_layout_missing_images_folder(cars_devkit, tmp_path):
    root = make_cars_root(tmp_path / "c", cars_devkit, layout="combined")
    shutil.rmtree(root / "car_ims")
    with pytest.raises(FileNotFoundError, match="car_ims"):
        _module(root).setup("fit")


def test_without_labelled_test_file_val_split_zero_says_what_to_do(cars_root, tmp_path):
    copy = _copy_without(cars_root, tmp_path, "stanford_cars/cars_test_annos_withlabels.mat")
    with pytest.raises(FileNotFoundError, match=r"cars_test_annos_withlabels\.mat.*data\.val_split N"):
        _module(copy).setup("fit")
    held_out = _module(copy, val_split=2)
    held_out.setup("fit")  # trains and validates without the test labels
    assert len(held_out.val_set) == 2 and held_out.test_set is None
    with pytest.raises(FileNotFoundError, match="testing needs the labelled test split"):
        _module(copy, val_split=2).setup("test")


def test_missing_image_for_an_annotation(cars_root, tmp_path):
    first = sorted((cars_root / "stanford_cars" / "cars_train").iterdir())[0].name
    copy = _copy_without(cars_root, tmp_path, f"stanford_cars/cars_train/{first}")
    with pytest.raises(FileNotFoundError, match=f"1 annotated images are missing, e.g. .*{first}"):
        _module(copy).setup("fit")


def test_tta_augment_with_zero_strength_is_identity_or_flip():
    images = torch.randn(8, 3, 16, 16)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    out = random_affine_flip_lighting(images, mean, std, max_zoom=1.0, max_rotation=0.0, lighting=0.0,
                                      generator=torch.Generator().manual_seed(0))
    flipped = [torch.allclose(o, i.flip(-1), atol=1e-5) for o, i in zip(out, images)]
    kept = [torch.allclose(o, i, atol=1e-5) for o, i in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_tta_augment_lighting_matches_pixel_space_formula():
    """x·(1+c) + (mean·c + b)/std in normalised space equals p·(1+c) + b on pixels."""
    pixels = torch.rand(4, 3, 8, 8)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    normalised = (pixels - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    generator = torch.Generator().manual_seed(3)
    out = random_affine_flip_lighting(normalised, mean, std, 1.0, 0.0, 0.05, generator)
    back = out * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)
    for image, source in zip(back, pixels):  # each image: an affine function p·(1+c) + b, with |c|, |b| ≤ 0.05
        if not torch.allclose(image, image.flip(-1)):
            source = source if torch.corrcoef(torch.stack([image.flatten(), source.flatten()]))[0, 1] > 0.99 \
                else source.flip(-1)
        slope, intercept = torch.linalg.lstsq(torch.stack([source.flatten(), torch.ones(source.numel())], 1),
                                              image.flatten()[:, None]).solution.flatten()
        assert abs(slope - 1) <= 0.05 + 1e-4 and abs(intercept) <= 0.05 + 1e-4
        torch.testing.assert_close(image, source * slope + intercept, atol=1e-4, rtol=0)
