"""A torchvision ResNet body with fastai's classification head, as the seed fine-tuned on Stanford Cars.

Head (fastai `create_head`): concat(adaptive avg pool, adaptive max pool) → flatten → BN → Dropout 0.25 →
Linear(2·features, 512) → ReLU → BN(512) → Dropout 0.5 → Linear(512, num_classes). Concatenating both pools
gives the head twice the features for free; the BN layers let it train at the high 1cycle learning rates.
"""
from __future__ import annotations

import urllib.error

import torch
import torchvision
from torch import nn

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
# jsonargparse hands `--model.init_args.net.init_args.weights null` (a nested subclass argument) over as the
# string "None"; all of these mean "no pretrained weights".
NO_WEIGHTS = (None, "None", "null", "none", "")


class AdaptiveConcatPool2d(nn.Module):
    """Average and max pooling to 1×1, concatenated on the channel axis (fastai)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([nn.functional.adaptive_avg_pool2d(x, 1), nn.functional.adaptive_max_pool2d(x, 1)], dim=1)


def fastai_head(
    in_features: int, num_classes: int, hidden: int = 512, dropout: tuple[float, float] = (0.25, 0.5)
) -> nn.Sequential:
    return nn.Sequential(
        AdaptiveConcatPool2d(),
        nn.Flatten(),
        nn.BatchNorm1d(2 * in_features),
        nn.Dropout(dropout[0]),
        nn.Linear(2 * in_features, hidden),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(hidden),
        nn.Dropout(dropout[1]),
        nn.Linear(hidden, num_classes),
    )


def load_resnet(arch: str, weights: str | None) -> nn.Module:
    """A torchvision ResNet; ImageNet weights are downloaded (hash-checked by torch.hub) or read from its cache."""
    if arch not in RESNETS:
        raise ValueError(f"model.init_args.net.init_args.arch is '{arch}'; choose one of {', '.join(RESNETS)}.")
    if weights in NO_WEIGHTS:
        return torchvision.models.get_model(arch)
    available = torchvision.models.get_model_weights(arch)
    if weights not in available.__members__:
        raise ValueError(f"model.init_args.net.init_args.weights is '{weights}'; choose one of "
                         f"{', '.join(available.__members__)} or null.")
    url = available[weights].url
    try:
        return torchvision.models.get_model(arch, weights=available[weights])
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        cache = f"{torch.hub.get_dir()}/checkpoints/{url.rsplit('/', 1)[-1]}"
        raise RuntimeError(
            f"Could not get the {arch} {weights} weights from {url} ({err}); download that file and place it at "
            f"{cache} (or set `model.init_args.net.init_args.weights: null` to train from scratch)."
        ) from err


class ResNetWithHead(nn.Module):
    """`body` = the ResNet without its pool and fc; `head` = fastai's. `layer_groups()` gives the seed's 3 groups."""

    def __init__(self, num_classes: int = 196, arch: str = "resnet50", weights: str | None = "IMAGENET1K_V1",
                 hidden: int = 512, dropout: tuple[float, float] = (0.25, 0.5)):
        super().__init__()
        resnet = load_resnet(arch, weights)
        self.body = nn.Sequential(*list(resnet.children())[:-2])
        self.head = fastai_head(resnet.fc.in_features, num_classes, hidden, dropout)

    def layer_groups(self) -> list[nn.Module]:
        """fastai 0.7's split for ResNets: stem..layer2, layer3..layer4, head (lrs [lr/9, lr/3, lr] in stage 2)."""
        return [self.body[:6], self.body[6:], self.head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
