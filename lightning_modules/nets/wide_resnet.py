"""Wide-ResNet for CIFAR, as the seed trained it (fastai 0.7 `models/cifar10/wideresnet.py`, `wrn_22`).

Pre-activation basic blocks (BN → ReLU → conv), a 1×1 conv shortcut where the shape changes, and the
residual branch scaled by `residual_scale` before it is added to the shortcut.

`residual_scale` defaults to 0.2 because that is what the seed ran: the fastai 0.7 file used by
sgugger/Adam-experiments multiplies the second conv by 0.2 (a trick from the DAWNBench submission that lets a
deep net behave like a shallow one early in training, so the 1cycle's high learning rates stay stable).
fastai v1's `wrn_22` dropped the factor; pass `residual_scale: 1.0` to get that variant.
"""
from __future__ import annotations

import torch
from torch import nn


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False)


class PreActBlock(nn.Module):
    """BN-ReLU shared by branch and shortcut, conv3×3, (dropout), BN-ReLU-conv3×3, scaled, plus shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, drop_p: float, residual_scale: float):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv1 = _conv(in_channels, out_channels, 3, stride)
        self.drop = nn.Dropout(drop_p) if drop_p > 0 else nn.Identity()
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv(out_channels, out_channels, 3)
        needs_projection = in_channels != out_channels or stride != 1
        self.shortcut = _conv(in_channels, out_channels, 1, stride) if needs_projection else nn.Identity()
        self.residual_scale = residual_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = torch.relu(self.bn(x))
        branch = self.drop(self.conv1(activated))
        branch = self.conv2(torch.relu(self.bn2(branch)))
        return self.shortcut(activated) + branch * self.residual_scale


class WideResNet(nn.Module):
    """WRN with `num_groups` groups of `blocks_per_group` blocks; group i has `start_channels * 2**i * widen_factor`.

    Defaults give the seed's WRN-22 (3 groups × 3 blocks × 2 convs + stem + head = 22 layers, widen 6):
    16 → 96 → 192 → 384 channels, stride 2 at groups 2 and 3.
    """

    def __init__(
        self,
        num_classes: int = 10,
        num_groups: int = 3,
        blocks_per_group: int = 3,
        widen_factor: int = 6,
        start_channels: int = 16,
        drop_p: float = 0.0,
        residual_scale: float = 0.2,
        in_channels: int = 3,
    ):
        super().__init__()
        widths = [start_channels] + [start_channels * (2**i) * widen_factor for i in range(num_groups)]
        layers: list[nn.Module] = [_conv(in_channels, widths[0], 3)]
        for group in range(num_groups):
            for block in range(blocks_per_group):
                stride = 2 if group > 0 and block == 0 else 1
                block_in = widths[group] if block == 0 else widths[group + 1]
                layers.append(PreActBlock(block_in, widths[group + 1], stride, drop_p, residual_scale))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.BatchNorm2d(widths[-1]),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(widths[-1], num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
