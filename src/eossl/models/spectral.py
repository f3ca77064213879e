"""The spectral-stem backbone: a per-pixel MLP over the spectrum in front of a timm ResNet.

The stem (1x1 convolutions) gives every pixel an embedding from its own spectrum; the ResNet
turns the map of pixel embeddings into one pooled patch embedding. Both live in one timm model
(``spectral_resnet18/34/50``, registered with timm below), so ``build_backbone`` builds it by
name like any other backbone, from pretraining (methods/spectral.py) to a random-init twin.

Why this shape keeps memory bounded for any band count: the band axis is collapsed by the first
1x1 convolution, so everything after it (the whole ResNet) costs the same for 13 or 200 bands;
the only band-dependent tensors are the input and the stem's first layer (C x hidden weights).
"""

from __future__ import annotations

import torch
from timm.models import register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from ..errors import ConfigError

__all__ = ["SpectralStem", "SpectralResNet"]


class SpectralStem(nn.Module):
    """Per-pixel MLP over the spectrum as two 1x1 convolutions: (N, C, H, W) -> (N, D, H, W).

    No normalisation layer: the pixel task feeds it masked spectra and the object task clean
    views, and BatchNorm statistics pooled over both would match neither at inference; the
    inputs are already standardised per band by the Normalizer.
    """

    def __init__(self, in_chans: int, pixel_dim: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_chans, hidden, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, pixel_dim, 1), nn.ReLU(inplace=True))
        self.in_chans, self.out_dim = in_chans, pixel_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SpectralResNet(ResNet):
    """A timm ResNet whose input is the spectral stem's per-pixel embedding map.

    ``forward`` / ``forward_features`` / ``forward_intermediates`` take standardised bands like
    any backbone; ``pixel_features`` returns the stem output (N, pixel_dim, H, W) at full
    resolution.
    """

    def __init__(self, in_chans: int = 3, pixel_dim: int = 64, pixel_hidden: int = 128,
                 **kwargs) -> None:
        super().__init__(in_chans=pixel_dim, **kwargs)
        self.spectral = SpectralStem(in_chans, pixel_dim, pixel_hidden)

    def pixel_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.spectral(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward_features(self.spectral(x))

    def forward_intermediates(self, x: torch.Tensor, *args, **kwargs):
        # The per-scale maps a U-Net decoder reads (models/unet.py): the ResNet stages see the
        # stem's pixel embeddings, exactly as in forward_features.
        return super().forward_intermediates(self.spectral(x), *args, **kwargs)


def _spectral_resnet(block, layers, pretrained: bool = False, **kwargs) -> SpectralResNet:
    if pretrained:
        raise ConfigError("spectral_resnet backbones have no published weights; use "
                          "pretrained=False and pretrain with `eossl pretrain --method spectral`")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)  # timm's factory passes these; they only matter for downloads
    return SpectralResNet(block=block, layers=layers, **kwargs)


# Registered with timm (its documented extension point) rather than special-cased where
# checkpoints are read: build_backbone("spectral_resnet18", in_chans=C) works everywhere.
@register_model
def spectral_resnet18(pretrained: bool = False, **kwargs) -> SpectralResNet:
    """Spectral stem (1x1 convs) + ResNet-18."""
    return _spectral_resnet(BasicBlock, (2, 2, 2, 2), pretrained, **kwargs)


@register_model
def spectral_resnet34(pretrained: bool = False, **kwargs) -> SpectralResNet:
    """Spectral stem (1x1 convs) + ResNet-34."""
    return _spectral_resnet(BasicBlock, (3, 4, 6, 3), pretrained, **kwargs)


@register_model
def spectral_resnet50(pretrained: bool = False, **kwargs) -> SpectralResNet:
    """Spectral stem (1x1 convs) + ResNet-50."""
    return _spectral_resnet(Bottleneck, (3, 4, 6, 3), pretrained, **kwargs)
