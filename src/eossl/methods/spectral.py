"""Spectral-spatial pretext tasks (Zhang & Han 2023): masked spectral reconstruction per pixel
plus multi-view identification (NT-Xent) per patch, through one shared encoder.

The encoder is a *spectral stem* (1x1 convolutions: a per-pixel MLP over the spectrum, giving a
per-pixel embedding) followed by a timm ResNet that turns the map of pixel embeddings into one
pooled patch embedding: the ``spectral_resnet*`` backbones of :mod:`eossl.models.spectral`, so
the standard encoder rebuilds it from a checkpoint with no special case (``Encoder(x)`` gives
the pooled embedding, ``Encoder.pixel_features`` the per-pixel one). The pixel task runs on
``pixels_per_image`` sampled pixels per patch, so its cost is O(batch x pixels x bands)
whatever the crop size.
"""

from __future__ import annotations

import math

import torch
from lightly.loss import NTXentLoss
from torch import nn

from ..errors import ConfigError
from ..models.heads import simclr_projection_head
from ..models.spectral import SpectralStem
from ..views import ContrastiveViews
from . import register_method
from .base import PretextMethod, float32_loss

__all__ = ["SpectralSpatial", "BandDropout", "spectral_mask", "masked_mse"]


# --------------------------------------------------------------------------------------------
# Pretext parts


def spectral_mask(n_pixels: int, n_bands: int, ratio: float = 0.5, group_size: int = 1,
                  device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean (n_pixels, n_bands) mask, True = hidden, with an independent draw per pixel.

    Bands are masked in contiguous groups of ``group_size`` (1 = single bands); per pixel
    exactly ``round(ratio * n_groups)`` groups are hidden, at least one and at most all but
    one, so something is always hidden and something always visible.
    """
    if not 0 < ratio < 1:
        raise ConfigError(f"mask_ratio must be in (0, 1), got {ratio}")
    if group_size < 1:
        raise ConfigError(f"mask_group_size must be >= 1, got {group_size}")
    if n_bands < 2:
        raise ConfigError(f"masked spectral reconstruction needs >= 2 bands, got {n_bands}")
    n_groups = math.ceil(n_bands / group_size)
    if n_groups < 2:
        raise ConfigError(f"mask_group_size {group_size} leaves {n_groups} group for "
                          f"{n_bands} bands; need at least 2 groups")
    k = min(n_groups - 1, max(1, round(ratio * n_groups)))
    scores = torch.rand(n_pixels, n_groups, device=device, generator=generator)
    rank = scores.argsort(dim=1).argsort(dim=1)  # a random permutation per pixel
    group_mask = rank < k
    return group_mask.repeat_interleave(group_size, dim=1)[:, :n_bands]


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked entries only (MAE-style)."""
    m = mask.to(pred.dtype)
    return ((pred - target) ** 2 * m).sum() / m.sum().clamp_min(1.0)


class BandDropout(nn.Module):
    """With probability ``p`` per sample, set a random ``share`` of bands to 0 (the band mean
    after standardisation): the "band dropout" view augmentation of the object task."""

    def __init__(self, p: float = 0.5, share: float = 0.2) -> None:
        super().__init__()
        if not 0 <= p <= 1 or not 0 <= share < 1:
            raise ConfigError(f"band dropout: need 0 <= p <= 1 and 0 <= share < 1, got {p}, "
                              f"{share}")
        self.p, self.share = p, share

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        drop = torch.rand(n, c, 1, 1, device=x.device) < self.share
        apply = torch.rand(n, 1, 1, 1, device=x.device) < self.p
        return torch.where(drop & apply, torch.zeros((), dtype=x.dtype, device=x.device), x)


@register_method("spectral")
class SpectralSpatial(PretextMethod):
    """Spectral-spatial: masked spectral reconstruction per pixel + NT-Xent between views.

    L = L_pixel + object_weight x L_object. ``backbone`` is a ResNet name; the spectral stem is
    added in front of it (``resnet18`` -> ``spectral_resnet18``). Pixel task: ``mask_ratio`` of
    each sampled pixel's bands (in groups of ``mask_group_size``) are replaced by a learned
    per-band mask value, the stem embeds the pixel and a 1x1 decoder predicts the full
    spectrum; MSE on the hidden bands. Object task: two ContrastiveViews (+ band dropout) of
    each patch, SimCLR projector, NT-Xent at ``temperature`` (paper choice 0.1).
    """

    def __init__(self, bands: list[str], stats: dict, *, backbone: str = "spectral_resnet18",
                 pixel_dim: int = 64, pixel_hidden: int = 128, mask_ratio: float = 0.5,
                 mask_group_size: int = 1, pixels_per_image: int | None = 256,
                 object_weight: float = 1.0, temperature: float = 0.1, proj_dim: int = 128,
                 band_dropout_p: float = 0.5, band_dropout_share: float = 0.2,
                 views: dict | None = None, gather_distributed: bool = False,
                 backbone_kwargs: dict | None = None, **kwargs) -> None:
        if not backbone.startswith("spectral_"):
            backbone = f"spectral_{backbone}"
        if object_weight < 0 or temperature <= 0:
            raise ConfigError(f"spectral: need object_weight >= 0 and temperature > 0, got "
                              f"{object_weight}, {temperature}")
        if pixels_per_image is not None and pixels_per_image < 1:
            raise ConfigError(f"spectral: pixels_per_image must be >= 1 or null (all pixels), "
                              f"got {pixels_per_image}")
        spectral_mask(1, len(bands), mask_ratio, mask_group_size)  # validates the mask options
        bk = dict(backbone_kwargs or {})
        bk.update(pixel_dim=int(pixel_dim), pixel_hidden=int(pixel_hidden))
        super().__init__(bands, stats, backbone=backbone, backbone_kwargs=bk, **kwargs)
        c = len(bands)
        # Learned stand-in for a hidden band (BERT/MAE mask token), so "hidden" is not
        # confused with "exactly the band mean"; only used during pretraining.
        self.mask_token = nn.Parameter(torch.zeros(c))
        self.pixel_decoder = nn.Sequential(nn.Conv2d(pixel_dim, pixel_hidden, 1),
                                           nn.ReLU(inplace=True), nn.Conv2d(pixel_hidden, c, 1))
        self.projection_head = simclr_projection_head(self.backbone.out_dim, None, proj_dim)
        self.criterion = NTXentLoss(temperature=temperature,
                                    gather_distributed=gather_distributed)
        self.views = ContrastiveViews(self.hparams.crop_size, **(views or {}))
        self.band_dropout = BandDropout(band_dropout_p, band_dropout_share)

    @property
    def stem(self) -> SpectralStem:
        return self.backbone.model.spectral

    def sample_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """(N * P, C) spectra of P random pixels per image (all pixels if P is None)."""
        n, c, h, w = x.shape
        flat = x.flatten(2)  # (N, C, H*W)
        p = self.hparams.pixels_per_image
        if p is None or p >= h * w:
            return flat.transpose(1, 2).reshape(-1, c)
        idx = torch.rand(n, h * w, device=x.device).argsort(dim=1)[:, :p]
        picked = flat.gather(2, idx[:, None, :].expand(n, c, p))
        return picked.transpose(1, 2).reshape(-1, c)

    def pixel_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked spectral reconstruction on sampled pixels of a standardised batch."""
        spectra = self.sample_pixels(x)
        mask = spectral_mask(len(spectra), spectra.shape[1], self.hparams.mask_ratio,
                             self.hparams.mask_group_size, device=x.device)
        visible = torch.where(mask, self.mask_token.to(spectra.dtype).expand_as(spectra),
                              spectra)
        emb = self.stem(visible[:, :, None, None])          # (M, D, 1, 1)
        pred = self.pixel_decoder(emb)[:, :, 0, 0]           # (M, C)
        return masked_mse(pred, spectra, mask), mask

    def object_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v0, v1 = (self.band_dropout(v) for v in self.views.pair(x))
        z0 = self.projection_head(self.backbone(v0))
        z1 = self.projection_head(self.backbone(v1))
        return float32_loss(self.criterion, z0, z1), z0

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x = self.normalizer(batch["image"])
        l_pix, mask = self.pixel_loss(x)
        w = float(self.hparams.object_weight)
        if w > 0:
            l_obj, z = self.object_loss(x)
            loss = l_pix + w * l_obj
            self.log("train/loss_object", l_obj)
            self.log_collapse(z)
        else:
            loss = l_pix
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/loss_pixel", l_pix)
        self.log("train/mask_share", mask.float().mean())
        return loss
