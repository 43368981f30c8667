"""Plain `nn.Module` networks (torch/torchvision only, no Lightning)."""
from lightning_modules.nets.awd_lstm import AWDLSTM
from lightning_modules.nets.qrnn import QRNNLanguageNet
from lightning_modules.nets.resnet_head import ResNetWithHead
from lightning_modules.nets.wide_resnet import WideResNet

__all__ = ["AWDLSTM", "QRNNLanguageNet", "ResNetWithHead", "WideResNet"]
