"""Images/s of our CIFAR-10 training input pipeline against the usual torchvision per-sample PIL pipeline.

Why: `datamodules/cifar10.py` drops DataLoader workers and PIL in favour of one tensor index per batch and a
batched crop/flip on the device (`datamodules/batch_augment.py`). This measures whether that is worth it.

(A) ours: `TensorBatchDataset` + DataLoader(num_workers=0, `_already_batched`), then `normalize` and
    `random_crop_flip(pad=4)` on the device, exactly as `CIFAR10DataModule.on_after_batch_transfer` does.
(B) baseline: a torchvision-CIFAR10-style Dataset (HWC uint8 array → `Image.fromarray` per sample) with
    RandomCrop(32, 4, reflect) + RandomHorizontalFlip + ToTensor + Normalize, 2 workers, default collate.

Fairness: both sides get the same synthetic uint8 images, the same batch size, shuffling, pin_memory rule and
device. One repetition is one full epoch, timed from building the DataLoader to the last batch being ready on
the device (CUDA synchronised), so B's worker start-up and A's loader creation both count. Each side gets one
untimed warm-up epoch; repetitions alternate which side goes first; medians are reported.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # runnable as a script from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from datamodules.batch_augment import normalize, random_crop_flip
from datamodules.cifar10 import CIFAR10_MEAN, CIFAR10_STD, TensorBatchDataset, _already_batched

BATCH_SIZE = 128
PAD = 4
BASELINE_WORKERS = 2
TARGET_RATIO = 10.0


class PILDataset(Dataset):
    """The per-sample baseline, shaped like `torchvision.datasets.CIFAR10`: HWC uint8 array, PIL per item."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: transforms.Compose):
        self.data = np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())  # torchvision stores N×H×W×C
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def synthetic_cifar(images: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random N×3×32×32 uint8 images and labels: the pipelines' cost does not depend on pixel content."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=generator)
    y = torch.randint(0, 10, (images,), generator=generator)
    return x, y


def baseline_transform(augment: bool = True) -> transforms.Compose:
    """The torchvision training transform; `augment=False` keeps only ToTensor + Normalize (for tests)."""
    steps = [transforms.RandomCrop(32, padding=PAD, padding_mode="reflect"), transforms.RandomHorizontalFlip()]
    tail = [transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)]
    return transforms.Compose((steps if augment else []) + tail)


def ours_epoch(dataset: TensorBatchDataset, device: torch.device, augment: bool = True):
    """Yield (images, labels) on `device` for one shuffled epoch, as the datamodule + Lightning hook produce."""
    loader = DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=0,
                        collate_fn=_already_batched, pin_memory=device.type == "cuda")
    mean, std = torch.tensor(CIFAR10_MEAN, device=device), torch.tensor(CIFAR10_STD, device=device)
    for images, labels in loader:
        images = normalize(images.to(device, non_blocking=True), mean, std)
        yield (random_crop_flip(images, PAD) if augment else images), labels.to(device, non_blocking=True)


def baseline_epoch(dataset: PILDataset, device: torch.device):
    """Yield (images, labels) on `device` for one shuffled epoch of the per-sample PIL pipeline."""
    loader = DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=BASELINE_WORKERS,
                        pin_memory=device.type == "cuda")
    for images, labels in loader:
        yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def _time_epoch(epoch, device: torch.device) -> tuple[float, int, torch.Tensor]:
    """Seconds for a full epoch (loader creation and first-batch start-up included), images seen, last batch."""
    start = time.perf_counter()
    seen, last = 0, None
    for images, _ in epoch():
        seen += len(images)
        last = images
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, seen, last


def machine(device: torch.device) -> dict:
    """What the numbers were measured on; absolute rates only mean something next to this."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None  # load skews CPU numbers
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "device": str(device), "gpu": gpu,
            "torch_threads": torch.get_num_threads(), "load_1min": load}


def run(images: int = 10000, repeats: int = 5) -> dict:
    """Warm up both pipelines, then time `repeats` alternating full epochs of each; rates in images/s."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    x, y = synthetic_cifar(images)
    # Datasets are built once, outside the timing, as torchvision's CIFAR10 loads its arrays once per run.
    tensor_dataset, pil_dataset = TensorBatchDataset(x, y), PILDataset(x, y, baseline_transform())
    sides = {"ours": lambda: ours_epoch(tensor_dataset, device),
             "baseline": lambda: baseline_epoch(pil_dataset, device)}

    outputs = {}
    for name, epoch in sides.items():  # warm-up: allocator, kernels, page cache, imports in workers
        _, _, last = _time_epoch(epoch, device)
        outputs[name] = {"shape": list(last.shape), "dtype": str(last.dtype).removeprefix("torch."),
                         "min": last.min().item(), "max": last.max().item()}

    seconds = {name: [] for name in sides}
    for rep in range(repeats):
        order = ("ours", "baseline") if rep % 2 == 0 else ("baseline", "ours")
        for name in order:
            elapsed, seen, _ = _time_epoch(sides[name], device)
            assert seen == images, f"{name} saw {seen} of {images} images"
            seconds[name].append(elapsed)

    rates = {name: [images / s for s in secs] for name, secs in seconds.items()}
    ratios = [a / b for a, b in zip(rates["ours"], rates["baseline"])]  # paired: same repetition
    ratio = statistics.median(ratios)
    return {
        "images": images, "repeats": repeats, "batch_size": BATCH_SIZE, "baseline_workers": BASELINE_WORKERS,
        "machine": machine(device),
        "seconds": seconds,
        "images_per_s": {name: statistics.median(r) for name, r in rates.items()},
        "images_per_s_all": rates,
        "ratios": ratios, "ratio": ratio, "target": TARGET_RATIO, "passed": ratio >= TARGET_RATIO,
        "outputs": outputs,
    }


def markdown(result: dict) -> str:
    """The docs/BENCHMARKS.md section for one `run` result."""
    m = result["machine"]
    where = f"{m['device']} ({m['gpu']})" if m["gpu"] else m["device"]
    lines = [
        "## CIFAR-10 input pipeline",
        "",
        "Training input pipelines compared, one full shuffled epoch each, batch size "
        f"{result['batch_size']}, batches ending on `{m['device']}`:",
        "",
        "- **ours**: `TensorBatchDataset` + DataLoader(num_workers=0, `_already_batched`), then `normalize` and "
        "`random_crop_flip(pad=4)` per batch on the device (`datamodules/batch_augment.py`).",
        "- **baseline**: torchvision per-sample PIL transforms (RandomCrop(32, 4, reflect), RandomHorizontalFlip, "
        f"ToTensor, Normalize) in a DataLoader with {result['baseline_workers']} workers, default collate.",
        "",
        f"Data: {result['images']} synthetic uint8 images (3×32×32). Each repetition times DataLoader creation "
        "through the last batch on the device, so worker start-up counts; one untimed warm-up epoch per side; "
        f"{result['repeats']} repetitions alternating which side runs first; medians reported.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, device {where}, torch {m['torch']}, "
        f"torchvision {m['torchvision']}, Python {m['python']}, {m['torch_threads']} torch threads; "
        f"1-minute load average {m['load_1min']} at start.",
        "",
        "| pipeline | images/s (median) | min | max | epoch s (median) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in ("ours", "baseline"):
        rates, secs = result["images_per_s_all"][name], result["seconds"][name]
        lines.append(f"| {name} | {result['images_per_s'][name]:,.0f} | {min(rates):,.0f} | {max(rates):,.0f} "
                     f"| {statistics.median(secs):.3f} |")
    verdict = "PASS" if result["passed"] else "FAIL"
    lines += [
        "",
        f"Median ratio ours/baseline (paired per repetition): **{result['ratio']:.1f}×** "
        f"(range {min(result['ratios']):.1f}–{max(result['ratios']):.1f}×); target ≥ {result['target']:.0f}×: "
        f"**{verdict}**.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000, help="synthetic training images per epoch")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per side (after one warm-up)")
    args = parser.parse_args()
    print(markdown(run(args.images, args.repeats)))


if __name__ == "__main__":
    main()
