"""Backbones: timm encoders with any number of input bands and a stem sized for EO patches.

Earth-observation patches are small (16-64 px) where ImageNet images are 224 px; a ResNet's
stride-4 stem would leave a 64 px patch 2x2 at the last stage. ``stem_stride`` removes part of
that downsampling by changing strides only, so the weights stay interchangeable with timm's.
"""

from __future__ import annotations

import difflib

import timm
import torch
import torch.nn.functional as F
from timm.models.resnet import ResNet
from torch import nn

from ..errors import ConfigError
from .spectral import SpectralResNet  # also registers spectral_resnet* with timm

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
        self.timm_kwargs = dict(timm_kwargs)
        self.model = timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=0,
                                       global_pool="avg", **timm_kwargs)
        set_stem_stride(self.model, stem_stride, name=name)
        self.out_dim = int(self.model.num_features)

    def spec(self) -> dict:
        """Everything that fixes the architecture (not the weights), as plain data."""
        return {"backbone": self.name, "in_chans": self.in_chans, "stem_stride":
                self.stem_stride, "backbone_kwargs": dict(self.timm_kwargs)}

    def fresh(self, seed: int = 0) -> "Backbone":
        """The same architecture and stem with weights drawn from ``seed`` (timm's own
        initialisation), leaving the global random state as it was."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return Backbone(self.name, in_chans=self.in_chans, stem_stride=self.stem_stride,
                            **self.timm_kwargs)

    @property
    def has_pixel_stem(self) -> bool:
        """Whether a per-pixel spectral stem gives each pixel its own embedding."""
        return isinstance(self.model, SpectralResNet)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map before pooling, (N, D, h, w) for convolutional backbones."""
        return self.model.forward_features(x)

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's feature map, finest first (timm's ``forward_intermediates``; a spectral
        stem's per-pixel map comes first)."""
        maps = self._intermediates(x)
        if self.has_pixel_stem:
            maps.insert(0, self.model.pixel_features(x))
        return maps

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps at distinct resolutions, finest first (what a U-Net decoder reads).

        timm returns one map per stage; with ``stem_stride`` 2 the stem and the first stage
        share a resolution, and smp's decoder needs every skip one step coarser than the last,
        so only the deepest map of each resolution is kept.
        """
        out: list[torch.Tensor] = []
        for f in self._intermediates(x):
            if out and out[-1].shape[-2:] == f.shape[-2:]:
                out[-1] = f
            else:
                out.append(f)
        return out

    def pyramid_channels(self, size: int = 64) -> list[int]:
        """Channel counts of :meth:`pyramid`, found with one tiny forward pass."""
        return _probe_channels(self, self.pyramid, torch.zeros(1, self.in_chans, size, size))

    def _intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not hasattr(self.model, "forward_intermediates"):  # a timm capability, per family
            raise ConfigError(f"backbone {self.name!r}: timm gives it no forward_intermediates, "
                              "so it has no per-stage features (needed by multi-scale probes "
                              "and U-Nets)")
        return list(self.model.forward_intermediates(x, intermediates_only=True))

    def pixel_features(self, x: torch.Tensor, points: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """One embedding per input pixel (N, D, H, W): a spectral stem's own, otherwise the
        last feature map upsampled bilinearly to the input size.

        With ``points`` (N, M, 2 integer row, col per image) only those pixels' embeddings come
        back, (N, D, M): the values the full map holds there, without upsampling the whole map
        (upsampling 512 channels to every pixel was half of the pixel probe's time, which reads
        a few hundred pixels per tile)."""
        if self.has_pixel_stem:
            full = self.model.pixel_features(x)
            return full if points is None else at_points(full, points)
        fmap = self.forward_features(x)
        if fmap.ndim != 4:
            raise ConfigError(f"backbone {self.name!r} gives features of shape "
                              f"{tuple(fmap.shape)}; per-pixel embeddings need a (N, D, h, w) map")
        if points is None:
            return F.interpolate(fmap, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return upsampled_at(fmap, points, x.shape[-2:])

    def extra_repr(self) -> str:
        return f"name={self.name!r}, in_chans={self.in_chans}, stem_stride={self.stem_stride}"


def at_points(full: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(N, D, H, W) maps read at ``points`` (N, M, 2 integer row, col) -> (N, D, M)."""
    points = points.long().to(full.device)
    n = torch.arange(full.shape[0], device=full.device)[:, None]
    return full[n, :, points[..., 0], points[..., 1]].permute(0, 2, 1)


def upsampled_at(fmap: torch.Tensor, points: torch.Tensor, size) -> torch.Tensor:
    """What ``F.interpolate(fmap, size, mode="bilinear", align_corners=False)`` holds at
    ``points`` (N, M, 2 integer row, col of the upsampled grid) -> (N, D, M), computed at those
    points only. grid_sample with align_corners=False puts pixel centres where interpolate does,
    and padding_mode="border" clamps at the edges as interpolate does."""
    h, w = size
    p = points.to(fmap.device, torch.float32)
    gx = (2 * p[..., 1] + 1) / w - 1
    gy = (2 * p[..., 0] + 1) / h - 1
    grid = torch.stack([gx, gy], dim=-1)[:, None].to(fmap.dtype)  # (N, 1, M, 2), x first
    out = F.grid_sample(fmap, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[:, :, 0]


def _probe_channels(module: nn.Module, fn, x: torch.Tensor) -> list[int]:
    """Channel counts of the maps ``fn(x)`` returns, in eval mode and without gradients (the
    module's mode is restored)."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return [int(f.shape[1]) for f in fn(x)]
    finally:
        module.train(was_training)


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
