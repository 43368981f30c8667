"""ResNet body + fastai head (Stanford Cars net): shapes, head layout, layer groups, weights from a local cache."""
from __future__ import annotations

import urllib.error

import pytest
import torch
from torch import nn

from lightning_modules.nets import ResNetWithHead
from lightning_modules.nets import resnet_head


def test_resnet50_head_is_fastais():
    net = ResNetWithHead(num_classes=196, arch="resnet50", weights=None)
    layers = [type(m).__name__ for m in net.head]
    assert layers == ["AdaptiveConcatPool2d", "Flatten", "BatchNorm1d", "Dropout", "Linear", "ReLU", "BatchNorm1d",
                      "Dropout", "Linear"]
    assert net.head[2].num_features == 4096 and (net.head[4].in_features, net.head[4].out_features) == (4096, 512)
    assert net.head[3].p == 0.25 and net.head[7].p == 0.5 and net.head[-1].out_features == 196


def test_forward_and_layer_groups_cover_every_parameter_once():
    net = ResNetWithHead(num_classes=5, arch="resnet18", weights=None).eval()
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    groups = net.layer_groups()
    ids = [id(p) for g in groups for p in g.parameters()]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    assert isinstance(groups[0][-1], nn.Sequential) and groups[1][0] is net.body[6]  # layer2 | layer3


def test_imagenet_weights_load_from_the_torch_hub_cache(tmp_path, monkeypatch):
    """Point torch.hub at a local cache holding the exact file name torchvision asks for: no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = resnet_head.torchvision.models.resnet18()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    net = ResNetWithHead(num_classes=3, arch="resnet18", weights="IMAGENET1K_V1")
    torch.testing.assert_close(net.body[0].weight, reference.conv1.weight)


def test_failed_weights_download_names_the_file_and_the_cache_path(tmp_path, monkeypatch):
    """The download itself is replaced by a failing stand-in (tests never touch the network)."""
    import torchvision.models._api as weights_api

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    asked = []

    def offline(url, *args, **kwargs):
        asked.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(weights_api, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=r"download that file and place it at .*hub/checkpoints/resnet18-f37072fd.pth"):
        ResNetWithHead(arch="resnet18", weights="IMAGENET1K_V1")
    assert asked == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"arch is 'resnet7'; choose one of resnet18"):
        ResNetWithHead(arch="resnet7", weights=None)


def test_unknown_weights_name_is_a_clear_error():
    with pytest.raises(ValueError, match=r"weights is 'IMAGENET9'; choose one of IMAGENET1K_V1"):
        ResNetWithHead(arch="resnet18", weights="IMAGENET9")


def test_downloaded_weights_with_the_wrong_checksum_are_refused_and_not_cached(tmp_path, monkeypatch):
    """torch.hub checks the SHA256 prefix in the file name (resnet18-f37072fd.pth); a stand-in server sends bytes
    that fail it (tests never touch the network)."""
    import email.message
    import io

    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    served = []

    class Response(io.BytesIO):
        def info(self) -> email.message.Message:
            return email.message.Message()

    def serve(request, *args, **kwargs):
        served.append(request.full_url)
        return Response(b"not the resnet18 weights" * 100)

    monkeypatch.setattr(torch.hub, "urlopen", serve)
    with pytest.raises(RuntimeError, match=r"resnet18 IMAGENET1K_V1 weights .*\(invalid hash value \(expected "
                                           r"\"f37072fd\""):
        ResNetWithHead(arch="resnet18", weights="IMAGENET1K_V1")
    assert served == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]
    assert not any((tmp_path / "hub" / "checkpoints").iterdir())  # no cached file, no .partial left behind
