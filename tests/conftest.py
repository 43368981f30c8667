"""Shared fixtures: generated CIFAR folders (tiny, learnable) and the real-data location."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("WANDB_MODE", "offline")  # tests never touch the network
os.environ.setdefault("WANDB_SILENT", "true")
# `make test` runs two pytest processes (pytest-xdist), one per core: each, and every process its tests start, keeps
# to one thread, so the two never fight over the cores (two threads each made the suite 1.5x slower, measured).
# Set before torch is imported, so the children inherit it too.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SHARED_TOOLS = REPO.parent / "shared" / "tools"
# CLI overrides that shrink configs/cifar.yaml's WRN-22 to a WRN-10-1, for fast CLI-driven tests.
TINY_WRN_ARGS = ["--model.init_args.net.init_args.widen_factor", "1",
                 "--model.init_args.net.init_args.blocks_per_group", "1"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files holding slow tests run first. Under `make test` each worker takes whole files from a queue in this
    order, so the long ones start early and the end is a queue of short ones that both workers share, rather than
    one worker left alone with a 40-second file. The order inside a file is kept."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


def write_cifar_batch(path: Path, images: np.ndarray, labels: list[int] | np.ndarray) -> None:
    """One batch file in the official layout: {b'data': N×3072 uint8, b'labels': [int]}."""
    with open(path, "wb") as f:
        pickle.dump({b"data": images.reshape(len(images), -1), b"labels": [int(v) for v in labels],
                     b"batch_label": b"generated"}, f)


def make_cifar_folder(root: Path, train_per_class: int = 8, test_per_class: int = 4, seed: int = 0) -> Path:
    """A generated `cifar-10-batches-py` whose classes differ in colour, so a net can learn them quickly."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def split(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(10), per_class)
        rng.shuffle(labels)
        base = np.stack([np.full((3, 32, 32), 25 * c, np.int64) for c in range(10)])  # class = brightness
        noise = rng.integers(-20, 21, size=(len(labels), 3, 32, 32))
        return np.clip(base[labels] + noise, 0, 255).astype(np.uint8), labels

    train_x, train_y = split(train_per_class)
    for i, part in enumerate(np.array_split(np.arange(len(train_y)), 5), start=1):
        write_cifar_batch(folder / f"data_batch_{i}", train_x[part], train_y[part])
    test_x, test_y = split(test_per_class)
    write_cifar_batch(folder / "test_batch", test_x, test_y)
    return root


@pytest.fixture(autouse=True)
def own_wandb_service_per_process():
    """A process that starts W&B exports WANDB_SERVICE, and every child it spawns then shares that service instead
    of starting its own; a `cli.py` subprocess would hand its run to pytest's service and exit before its history
    is written (or find its own run id "in use" when it resumes). Users' processes do not inherit a test runner's
    service, so neither do the subprocesses of these tests."""
    os.environ.pop("WANDB_SERVICE", None)
    yield
    os.environ.pop("WANDB_SERVICE", None)


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    return make_cifar_folder(tmp_path / "cifar")


@pytest.fixture(scope="session")
def real_cifar_archive() -> Path:
    archive = SHARED_DATA / "cifar10-jpg.tar.gz"
    if not archive.is_file():
        pytest.skip(f"real CIFAR-10 not available: {archive} is absent (it ships in ../shared/data on project machines)")
    return archive


@pytest.fixture(scope="session")
def real_cifar_subset(real_cifar_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """500 train + 100 test real images a class, converted to the official layout by the shared tool (~4 s), once
    per test run for every test that reads real CIFAR-10."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("real_cifar")
    subprocess.run([sys.executable, str(SHARED_TOOLS / "cifar10_from_jpg.py"), str(out), "--archive",
                    str(real_cifar_archive), "--train-per-class", "500", "--test-per-class", "100"],
                   check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def cars_devkit() -> Path:
    devkit = SHARED_DATA / "stanford-cars-devkit"
    if not (devkit / "cars_train_annos.mat").is_file():
        pytest.skip(f"Stanford Cars devkit not available: {devkit} is absent (it ships in ../shared/data on project machines)")
    return devkit


@pytest.fixture(scope="session")
def cars_root(cars_devkit: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision-layout Cars root (4 classes × 3 train, 8 test images), shared read-only by the tests."""
    from tests.cars_fixture import make_cars_root

    return make_cars_root(tmp_path_factory.mktemp("cars"), cars_devkit)


@pytest.fixture
def serve(tmp_path, monkeypatch):
    """Serve `tmp_path` over HTTP on the loopback interface, so the real download code path runs offline."""
    import functools
    import http.server
    import threading

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
