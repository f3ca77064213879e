"""View builders: random augmentations of NORMALISED batches (N, C, H, W), any C, any device.

Geometric ops and blur come from kornia (channel-agnostic, batched, per-sample parameters).
Colour jitter and grayscale are hand-written here because kornia's versions assume three RGB
channels (HSV conversions, fixed luminance weights), which mean nothing for 13 or 200 bands.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn

from .errors import ConfigError, DataError


class BandJitter(nn.Module):
    """Per-band brightness/contrast jitter, the multispectral stand-in for colour jitter.

    Each band of each selected sample gets its own contrast gain (around the band's spatial
    mean) and brightness shift. On standardised log reflectance a shift is a multiplicative
    gain on reflectance (illumination, atmosphere), and independent per-band changes alter the
    spectral shape the way hue/saturation jitter alters an RGB colour.
    """

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, p: float = 0.8) -> None:
        super().__init__()
        if brightness < 0 or not 0 <= contrast < 1 or not 0 <= p <= 1:
            raise ConfigError(f"band jitter: need brightness >= 0, 0 <= contrast < 1 and "
                              f"0 <= p <= 1; got {brightness}, {contrast}, {p}")
        self.brightness, self.contrast, self.p = brightness, contrast, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        kw = dict(device=x.device, dtype=x.dtype)
        shift = (torch.rand(n, c, 1, 1, **kw) * 2 - 1) * self.brightness
        gain = 1 + (torch.rand(n, c, 1, 1, **kw) * 2 - 1) * self.contrast
        mean = x.mean(dim=(-2, -1), keepdim=True)
        jittered = (x - mean) * gain + mean + shift
        apply = torch.rand(n, 1, 1, 1, device=x.device) < self.p
        return torch.where(apply, jittered, x)


class BandGrayscale(nn.Module):
    """With probability p per sample, replace every band by the band mean.

    The multispectral analogue of RandomGrayscale: removes all spectral information so the
    network must also rely on texture; no RGB luminance weights exist for arbitrary bands.
    """

    def __init__(self, p: float = 0.2) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gray = x.mean(dim=1, keepdim=True).expand_as(x)
        apply = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < self.p
        return torch.where(apply, gray, x)


class RandomRot90(nn.Module):
    """Rotate each sample by k x 90 degrees, k uniform in {0, 1, 2, 3} (square inputs).

    Built on torch.rot90 rather than kornia's RandomRotation90, which warps by interpolation
    (float noise, slower) and rounds a continuous draw, making k = 0 and 3 half as likely.
    Overhead imagery has no canonical "up", so all four rotations are valid views.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != x.shape[-2]:
            raise DataError(f"90-degree rotations need square patches, got {tuple(x.shape[-2:])}")
        k = torch.randint(0, 4, (x.shape[0], 1, 1, 1), device=x.device)
        out = x
        for r in (1, 2, 3):  # torch.where keeps it sync-free on GPU
            out = torch.where(k == r, torch.rot90(x, r, dims=(-2, -1)), out)
        return out


def _blur_kernel(size: int) -> int:
    """Odd kernel of about 10% of the view side, as in SimCLR/MoCo v2, at least 3."""
    k = max(3, int(round(0.1 * size)))
    return k if k % 2 else k + 1


class ContrastiveViews(nn.Module):
    """One MoCo v2 / SimCLR-style view per call, with independent random parameters per sample.

    Random resized crop, horizontal and vertical flips (+ 90-degree rotations): orientation is
    arbitrary from orbit; then per-band jitter, band-mean grayscale and Gaussian blur.
    """

    def __init__(self, size: int, scale: tuple[float, float] = (0.2, 1.0), jitter_p: float = 0.8,
                 brightness: float = 0.4, contrast: float = 0.4, gray_p: float = 0.2,
                 blur_p: float = 0.5, rot90: bool = True,
                 blur_sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        super().__init__()
        if not isinstance(size, int) or size < 1:
            raise ConfigError(f"views: size must be a positive integer, got {size!r}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ConfigError(f"views: crop scale must satisfy 0 < min <= max <= 1, got {scale}")
        self.size = size
        ops: list[nn.Module] = [
            K.RandomResizedCrop((size, size), scale=tuple(scale)),
            K.RandomHorizontalFlip(),
            K.RandomVerticalFlip(),
        ]
        if rot90:
            ops.append(RandomRot90())
        ops += [
            BandJitter(brightness, contrast, p=jitter_p),
            BandGrayscale(p=gray_p),
            K.RandomGaussianBlur(_blur_kernel(size), sigma=tuple(blur_sigma), p=blur_p),
        ]
        self.ops = nn.Sequential(*ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise DataError(f"views expect a batch (N, C, H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise DataError(f"views expect a floating-point (normalised) batch, got {x.dtype}")
        return self.ops(x)


VIEWS = {"contrastive": ContrastiveViews}


def build_views(name: str, **kwargs) -> nn.Module:
    """View builder by name, so configs can pick a family without imports."""
    if name not in VIEWS:
        raise ConfigError(f"unknown views {name!r}; expected one of: {', '.join(sorted(VIEWS))}")
    return VIEWS[name](**kwargs)
