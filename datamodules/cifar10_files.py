"""Reading (and downloading) the official `cifar-10-batches-py` files, safely and with clear errors.

The pickles are read directly, not with torchvision's `CIFAR10` class, because that class rejects copies whose
MD5 differs (e.g. the re-encoded real data used in our tests). They are unpickled with an allow-list: a CIFAR
batch needs only numpy's array reconstruction, so a crafted file cannot run code.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR-10 batch")
        return super().find_class(module, name)


def _load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(
            f"CIFAR-10 file {path} is missing: put the official 'cifar-10-python.tar.gz' contents in "
            f"{path.parent} (or set `data.download: true`)."
        )
    try:
        with open(path, "rb") as f:
            entry = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as err:
        if "is not allowed" in str(err):
            raise ValueError(f"CIFAR-10 file {path} was rejected ({err}); replace it with the official file.") from err
        raise ValueError(f"CIFAR-10 file {path} is corrupt or truncated ({err}); re-extract or re-download it.") from err
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise ValueError(f"CIFAR-10 file {path} is corrupt or truncated ({err}); re-extract or re-download it.") from err
    if not isinstance(entry, dict) or b"data" not in entry or b"labels" not in entry:
        raise ValueError(f"CIFAR-10 file {path} is not a CIFAR batch (no b'data'/b'labels' keys); replace it.")
    data = np.asarray(entry[b"data"])
    labels = np.asarray(entry[b"labels"], dtype=np.int64)
    pixels = int(np.prod(IMAGE_SHAPE))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
        raise ValueError(
            f"CIFAR-10 file {path} holds data of shape {data.shape} and dtype {data.dtype}; expected N×{pixels} "
            "uint8 rows (the official python layout): replace the file."
        )
    if labels.shape != (data.shape[0],):
        raise ValueError(f"CIFAR-10 file {path} has {labels.size} labels for {data.shape[0]} images; replace the file.")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(
            f"CIFAR-10 file {path} has labels in {labels.min()}..{labels.max()}, outside 0..9; replace the file."
        )
    return data.reshape(-1, *IMAGE_SHAPE), labels


def load_label_names(data_dir: str | Path) -> list[str] | None:
    """The class names in `batches.meta` (`label_names`), or None where the file is absent or unreadable."""
    path = Path(data_dir) / FOLDER / "batches.meta"
    try:
        with open(path, "rb") as f:
            names = _ArrayOnlyUnpickler(f, encoding="bytes").load().get(b"label_names")
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError):
        return None
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        return None
    return [name.decode() if isinstance(name, bytes) else str(name) for name in names]


def load_split(data_dir: str | Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images (N,3,32,32) uint8 and labels (N,) int64 of the train or test split under `data_dir`."""
    root = Path(data_dir)
    folder = root / FOLDER
    if not folder.is_dir() and (root / TRAIN_FILES[0]).is_file():
        raise FileNotFoundError(f"data.data_dir {root} is the '{FOLDER}' folder itself: set data.data_dir to the "
                                f"folder that contains it, {root.parent}.")
    if not folder.is_dir() and (root / Path(URL).name).is_file():
        raise FileNotFoundError(f"{root / Path(URL).name} is not extracted: set `data.download: true` (it checks the "
                                f"MD5 and extracts it), or run `tar xzf {Path(URL).name}` in {root}.")
    if not folder.is_dir():
        raise FileNotFoundError(
            f"CIFAR-10 folder {folder} does not exist: set `data.data_dir` to the folder that contains "
            f"'{FOLDER}', or set `data.download: true` to fetch it."
        )
    parts = [_load_batch(folder / name) for name in (TRAIN_FILES if train else TEST_FILES)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def download(data_dir: str | Path, url: str = URL, md5: str = ARCHIVE_MD5) -> None:
    """Fetch and extract the official archive, verified by MD5 (torchvision's helper); clear error when offline."""
    from torchvision.datasets.utils import check_integrity, download_and_extract_archive

    root = Path(data_dir)
    if all((root / FOLDER / name).is_file() for name in TRAIN_FILES + TEST_FILES):
        return
    archive = root / Path(url).name
    try:
        download_and_extract_archive(url, str(root), filename=archive.name, md5=md5)
    except (OSError, RuntimeError) as err:
        if archive.exists() and not check_integrity(str(archive), md5):
            archive.unlink()  # never leave a half-downloaded or wrong archive that looks finished
            raise RuntimeError(
                f"CIFAR-10 archive from {url} failed its MD5 check ({md5}); it was deleted — download it again."
            ) from err
        raise RuntimeError(
            f"Could not download CIFAR-10 from {url} ({err}); download 'cifar-10-python.tar.gz' by hand and "
            f"extract it into {root} so that {root / FOLDER} holds data_batch_1..5 and test_batch."
        ) from err
