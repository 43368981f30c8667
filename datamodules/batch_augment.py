"""Augmentation applied to a whole batch on its device, after the transfer (airbench style).

Each image still gets its own random crop offset and flip, but the work is a handful of tensor ops per batch
instead of a PIL pipeline per sample in DataLoader workers — see benchmarks/cifar_pipeline.py for the ratio.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def normalize(images_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW in 0..255 → float32 normalised per channel."""
    return (images_uint8.float().div_(255.0) - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def random_crop_flip(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Reflect-pad by `pad`, take a random H×W crop per image, flip half the images horizontally.

    Trick named: the crop is one gather with per-image row/column indices, so all images move independently
    in a single kernel; the flip is a `torch.where` against the flipped batch.
    """
    n, _, height, width = images.shape
    device = images.device
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    offset_y = torch.randint(0, 2 * pad + 1, (n,), device=device, generator=generator)
    offset_x = torch.randint(0, 2 * pad + 1, (n,), device=device, generator=generator)
    rows = (offset_y[:, None] + torch.arange(height, device=device))[:, None, :, None]  # N,1,H,1
    cols = (offset_x[:, None] + torch.arange(width, device=device))[:, None, None, :]  # N,1,1,W
    batch_index = torch.arange(n, device=device)[:, None, None, None]
    channel_index = torch.arange(images.shape[1], device=device)[None, :, None, None]
    cropped = padded[batch_index, channel_index, rows, cols]
    flip = torch.rand(n, device=device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)
