"""The CIFAR-10 pipeline benchmark runs and compares like with like; timing is never asserted here."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # benchmarks/ is not installed; plain `pytest` may not put the repo root on sys.path
    sys.path.insert(0, str(REPO))

from benchmarks import cifar_pipeline  # noqa: E402
from datamodules.batch_augment import normalize, random_crop_flip  # noqa: E402
from datamodules.cifar10 import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402

MEAN, STD = torch.tensor(CIFAR10_MEAN), torch.tensor(CIFAR10_STD)
LOW, HIGH = (0 - MEAN) / STD, (1 - MEAN) / STD  # the normalised range of 0..255 pixels, per channel


def test_run_measures_both_sides_with_matching_outputs():
    result = cifar_pipeline.run(images=512, repeats=1)
    for side in ("ours", "baseline"):
        assert len(result["seconds"][side]) == 1
        assert result["images_per_s"][side] > 0
        out = result["outputs"][side]
        assert out["shape"] == [128, 3, 32, 32] and out["dtype"] == "float32"
        assert LOW.min().item() - 1e-4 <= out["min"] and out["max"] <= HIGH.max().item() + 1e-4
    assert result["ratio"] > 0 and result["passed"] == (result["ratio"] >= result["target"])
    assert set(result["machine"]) >= {"cpu", "cores", "torch", "device"}
    text = cifar_pipeline.markdown(result)
    assert text.startswith("## CIFAR-10 input pipeline") and "| ours |" in text and "| baseline |" in text


def test_unaugmented_outputs_are_identical():
    """Without crop/flip the two pipelines must produce the same tensors, so the benchmark compares equal work."""
    x, y = cifar_pipeline.synthetic_cifar(64)
    dataset = cifar_pipeline.PILDataset(x, y, cifar_pipeline.baseline_transform(augment=False))
    baseline = torch.stack([dataset[i][0] for i in range(len(dataset))])
    ours = normalize(x, MEAN, STD)
    assert baseline.dtype == ours.dtype == torch.float32 and baseline.shape == ours.shape
    torch.testing.assert_close(ours, baseline, atol=1e-5, rtol=0)


def test_augmented_outputs_agree_per_channel():
    """Both augmentations only move pixels (reflect crop, flip), so per-channel statistics barely change."""
    x, y = cifar_pipeline.synthetic_cifar(256)
    dataset = cifar_pipeline.PILDataset(x, y, cifar_pipeline.baseline_transform(augment=True))
    baseline = torch.stack([dataset[i][0] for i in range(len(dataset))])
    ours = random_crop_flip(normalize(x, MEAN, STD), pad=4, generator=torch.Generator().manual_seed(0))
    assert baseline.shape == ours.shape == (256, 3, 32, 32)
    torch.testing.assert_close(ours.mean(dim=(0, 2, 3)), baseline.mean(dim=(0, 2, 3)), atol=0.02, rtol=0)
    torch.testing.assert_close(ours.std(dim=(0, 2, 3)), baseline.std(dim=(0, 2, 3)), atol=0.02, rtol=0)
