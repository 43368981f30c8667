from __future__ import annotations

import torch
from torch import nn

from lightning_modules.nets import WideResNet


def wrn_param_count(num_classes: int, groups: int, blocks: int, k: int, start: int = 16) -> int:
    """Parameters of fastai's WRN counted by hand: convs (no bias), BN (weight+bias), 1×1 shortcuts, linear."""
    widths = [start] + [start * 2**i * k for i in range(groups)]
    total = 3 * start * 9  # stem conv
    for g in range(groups):
        c_in, c_out = widths[g], widths[g + 1]
        for b in range(blocks):
            ni = c_in if b == 0 else c_out
            total += 2 * ni + ni * c_out * 9 + 2 * c_out + c_out * c_out * 9
            if ni != c_out:
                total += ni * c_out  # 1×1 shortcut
    return total + 2 * widths[-1] + widths[-1] * num_classes + num_classes


def test_wrn22_matches_the_seed_architecture():
    net = WideResNet()  # defaults are the seed's wrn_22
    count = sum(p.numel() for p in net.parameters())
    assert count == wrn_param_count(10, 3, 3, 6) == 9_658_458
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 1 + 3 * 3 * 2
    assert sorted({c.out_channels for c in convs}) == [16, 96, 192, 384]
    shortcuts = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert [(s.in_channels, s.out_channels, s.stride) for s in shortcuts] == [(16, 96, (1, 1)), (96, 192, (2, 2)),
                                                                              (192, 384, (2, 2))]


def test_forward_shapes_and_downsampling():
    net = WideResNet(num_classes=7, blocks_per_group=1, widen_factor=1).eval()
    x = torch.randn(2, 3, 32, 32)
    assert net.features(x).shape == (2, 64, 8, 8)
    assert net(x).shape == (2, 7)


def test_residual_scale_multiplies_the_branch_only():
    torch.manual_seed(0)
    net = WideResNet(blocks_per_group=1, widen_factor=1, residual_scale=1.0).eval()
    block = net.features[1]
    x = torch.randn(2, 16, 32, 32)
    full = block(x)
    block.residual_scale = 0.0
    shortcut_only = block(x)
    block.residual_scale = 0.2
    scaled = block(x)
    torch.testing.assert_close(scaled, shortcut_only + 0.2 * (full - shortcut_only), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(full, shortcut_only)
