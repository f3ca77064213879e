"""Backbones: timm encoders with any number of input bands and a stem sized for EO patches.

Earth-observation patches are small (16-64 px) where ImageNet images are 224 px; a ResNet's
stride-4 stem would leave a 64 px patch 2x2 at the last stage. ``stem_stride`` removes part of
that downsampling by changing strides only, so the weights stay interchangeable with timm's.
"""

from __future__ import annotations

import difflib

import timm
import torch
from timm.models.resnet import ResNet
from torch import nn

from ..errors import ConfigError

STEM_STRIDES = (1, 2, 4)


class Backbone(nn.Module):
    """A timm model without classifier: ``forward`` gives pooled (N, out_dim) embeddings.

    Only strides and parameter-free modules are changed for ``stem_stride`` < 4, never weight
    shapes, so ``backbone.model.state_dict()`` loads into a plain
    ``timm.create_model(name, in_chans=C, num_classes=0)`` (or, with a classifier head,
    ``load_state_dict(..., strict=False)``); that model must then be given the same stem stride
    (e.g. ``set_stem_stride(model, 2)``) to compute the same features.
    """

    def __init__(self, name: str = "resnet18", in_chans: int = 3, stem_stride: int = 2,
                 **timm_kwargs) -> None:
        super().__init__()
        _check_name(name)
        if not isinstance(in_chans, int) or in_chans < 1:
            raise ConfigError(f"backbone {name!r}: in_chans must be a positive integer, "
                              f"got {in_chans!r}")
        self.name = name
        self.in_chans = in_chans
        self.stem_stride = stem_stride
        self.model = timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=0,
                                       global_pool="avg", **timm_kwargs)
        set_stem_stride(self.model, stem_stride, name=name)
        self.out_dim = int(self.model.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map before pooling, (N, D, h, w) for convolutional backbones."""
        return self.model.forward_features(x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, in_chans={self.in_chans}, stem_stride={self.stem_stride}"


def set_stem_stride(model: nn.Module, stem_stride: int, name: str | None = None) -> nn.Module:
    """Set the total stride of a timm ResNet stem in place (4 = timm's, 2 = no max-pool, 1 =
    neither); non-ResNets only accept their native stem (4)."""
    name = name or type(model).__name__
    if stem_stride not in STEM_STRIDES:
        raise ConfigError(f"backbone {name!r}: stem_stride must be one of "
                          f"{', '.join(map(str, STEM_STRIDES))}, got {stem_stride!r}")
    if stem_stride == 4:
        return model
    if not isinstance(model, ResNet):
        # Other families (ConvNeXt patchify stems, ViT patch embeddings, EfficientNet) have no
        # parameter-free stride to remove, so a smaller stride would change their weights.
        raise ConfigError(f"backbone {name!r}: stem_stride={stem_stride} is only supported for "
                          f"timm ResNets; use stem_stride=4 (the model's native stem)")
    if not isinstance(model.maxpool, nn.MaxPool2d):
        # Anti-aliased or convolutional stem pools carry their own stride or weights.
        raise ConfigError(f"backbone {name!r}: its stem pool is {type(model.maxpool).__name__}, "
                          f"not a max-pool; use stem_stride=4")
    model.maxpool = nn.Identity()
    if stem_stride == 1:
        conv = model.conv1 if isinstance(model.conv1, nn.Conv2d) else next(
            m for m in model.conv1.modules() if isinstance(m, nn.Conv2d))  # deep stems
        conv.stride = (1, 1)
    return model


def build_backbone(name: str = "resnet18", in_chans: int = 3, stem_stride: int = 2,
                   **timm_kwargs) -> Backbone:
    """Build a randomly initialised backbone (no downloads); ``timm_kwargs`` go to timm."""
    return Backbone(name, in_chans=in_chans, stem_stride=stem_stride, **timm_kwargs)


def _check_name(name: str) -> None:
    if isinstance(name, str) and timm.is_model(name):
        return
    close = difflib.get_close_matches(str(name), timm.list_models(), n=5)
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(f"unknown backbone {name!r}: not a timm model name (see "
                      f"timm.list_models()){hint}")
