"""CIFAR-10 datamodule: reading, splits, on-device augmentation and clear errors (the training order, its DDP
sharding and its resumable position: test_resumable_loader.py)."""
from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datamodules import CIFAR10DataModule, cifar10_files
from datamodules.batch_augment import normalize, random_crop_flip
from datamodules.cifar10 import CIFAR10_MEAN, CIFAR10_STD
from tests.conftest import make_cifar_folder, write_cifar_batch


def setup_dm(data_dir: Path, **kwargs) -> CIFAR10DataModule:
    dm = CIFAR10DataModule(data_dir=str(data_dir), batch_size=16, **kwargs)
    dm.setup("fit")
    return dm


def test_reads_all_batches_as_uint8_tensors(cifar_dir):
    dm = setup_dm(cifar_dir)
    assert len(dm.train_set) == 80 and len(dm.test_set) == 40
    images, labels = dm.train_set.images, dm.train_set.labels
    assert images.dtype == torch.uint8 and images.shape == (80, 3, 32, 32)
    assert labels.dtype == torch.int64 and set(labels.tolist()) == set(range(10))
    assert dm.val_set is dm.test_set  # val_split 0: validate on test, as the seed


def test_val_split_holds_out_training_images(cifar_dir):
    dm = setup_dm(cifar_dir, val_split=20)
    assert len(dm.val_set) == 20 and len(dm.train_set) == 60 and dm.val_set is not dm.test_set
    train_rows = {bytes(x.numpy()) for x in dm.train_set.images}
    assert not any(bytes(x.numpy()) in train_rows for x in dm.val_set.images)


def test_train_subset_keeps_a_fixed_subset(cifar_dir):
    first, second = setup_dm(cifar_dir, train_subset=30), setup_dm(cifar_dir, train_subset=30)
    assert len(first.train_set) == 30
    assert torch.equal(first.train_set.images, second.train_set.images)


def test_batches_come_whole_from_one_index_and_cover_the_epoch(cifar_dir):
    dm = setup_dm(cifar_dir)
    batches = list(dm.train_dataloader())
    assert [len(b[1]) for b in batches] == [16] * 5
    seen = torch.cat([b[0] for b in batches]).reshape(80, -1)
    assert torch.equal(seen.sum(0), dm.train_set.images.reshape(80, -1).sum(0))  # a permutation of the data


def test_eval_batches_are_normalised_not_augmented(cifar_dir):
    dm = setup_dm(cifar_dir)
    images, labels = next(iter(dm.val_dataloader()))
    out, out_labels = dm.on_after_batch_transfer((images, labels), 0)  # no trainer: evaluation path
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (images.float() / 255 - mean) / std)
    assert torch.equal(out_labels, labels)


def test_random_crop_flip_takes_a_window_of_the_reflect_padded_image_per_image():
    images = torch.randn(64, 3, 32, 32)
    out = random_crop_flip(images, pad=4, generator=torch.Generator().manual_seed(0))
    padded = F.pad(images, (4, 4, 4, 4), mode="reflect")
    found = []
    for i in range(64):
        matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                   if torch.equal(out[i], (lambda w: w.flip(2) if flip else w)(padded[i, :, dy:dy + 32, dx:dx + 32]))]
        assert matches, f"image {i} is not a crop of its padded input"
        found.append(matches[0])
    assert len({m[:2] for m in found}) > 10, "offsets must differ per image"
    assert 10 < sum(m[2] for m in found) < 54, "about half the images are flipped"


def test_augmentation_runs_in_training_only(cifar_dir):
    class FakeTrainer:
        training = True

    dm = setup_dm(cifar_dir)
    images, labels = next(iter(dm.train_dataloader()))
    plain, _ = dm.on_after_batch_transfer((images, labels), 0)
    dm.trainer = FakeTrainer()
    augmented, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert augmented.shape == plain.shape and not torch.equal(augmented, plain)


# --- bad input: one clear sentence naming the file and the fix -----------------------------------------

def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py does not exist: set `data.data_dir`"):
        setup_dm(tmp_path / "nowhere")


def test_missing_file(cifar_dir):
    (cifar_dir / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"data_batch_3 is missing"):
        setup_dm(cifar_dir)


def test_truncated_pickle(cifar_dir):
    path = cifar_dir / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match=r"test_batch is corrupt or truncated"):
        setup_dm(cifar_dir)


def test_wrong_array_shape(cifar_dir):
    write_cifar_batch(cifar_dir / "cifar-10-batches-py" / "data_batch_1", np.zeros((4, 3, 16, 16), np.uint8), [0] * 4)
    with pytest.raises(ValueError, match=r"data_batch_1 holds data of shape \(4, 768\)"):
        setup_dm(cifar_dir)


def test_labels_out_of_range(cifar_dir):
    write_cifar_batch(cifar_dir / "cifar-10-batches-py" / "data_batch_2", np.zeros((2, 3, 32, 32), np.uint8), [3, 10])
    with pytest.raises(ValueError, match=r"data_batch_2 has labels in 3..10, outside 0..9"):
        setup_dm(cifar_dir)


def test_pickle_that_runs_code_is_rejected_without_running_it(cifar_dir, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (cifar_dir / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps({b"data": Exploit()}))
    with pytest.raises(ValueError, match=r"global 'posix.system' is not allowed"):
        setup_dm(cifar_dir)
    assert not marker.exists()


def test_batch_size_larger_than_the_training_set(cifar_dir):
    dm = CIFAR10DataModule(data_dir=str(cifar_dir), batch_size=500)
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"data.batch_size 500 is larger than the 80 training images"):
        dm.train_dataloader()


# --- download: verified by MD5, tested against a local archive (the `serve` fixture is in conftest) -----


def make_archive(tmp_path: Path) -> tuple[Path, str]:
    source = make_cifar_folder(tmp_path / "source")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_download_extracts_a_verified_archive(tmp_path, serve):
    archive, md5 = make_archive(tmp_path)
    cifar10_files.download(tmp_path / "data", url=f"{serve}/{archive.name}", md5=md5)
    images, labels = cifar10_files.load_split(tmp_path / "data", train=True)
    assert images.shape == (80, 3, 32, 32) and len(labels) == 80


def test_download_with_wrong_checksum_is_rejected_and_deleted(tmp_path, serve):
    archive, _ = make_archive(tmp_path)
    with pytest.raises(RuntimeError, match=r"failed its MD5 check"):
        cifar10_files.download(tmp_path / "data", url=f"{serve}/{archive.name}", md5="0" * 32)
    assert not (tmp_path / "data" / "cifar-10-python.tar.gz").exists()


def test_download_failure_says_where_to_put_the_files(tmp_path, serve):
    with pytest.raises(RuntimeError, match=r"download 'cifar-10-python.tar.gz' by hand and extract it into"):
        cifar10_files.download(tmp_path / "data", url=f"{serve}/absent.tar.gz")


def test_official_url_and_md5_are_the_published_ones():
    assert cifar10_files.URL == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert cifar10_files.ARCHIVE_MD5 == "c58f30108f718f92721af3b95e74349a"
