"""View builders: random augmentations of NORMALISED batches (N, C, H, W), any C, any device.

Crop boxes and blur come from kornia (channel-agnostic, batched, per-sample parameters); the
crop, flips and rotations are composed into one resampling per view (``ContrastiveViews``).
Colour jitter and grayscale are hand-written here because kornia's versions assume three RGB
channels (HSV conversions, fixed luminance weights), which mean nothing for 13 or 200 bands.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from kornia.filters import get_gaussian_kernel1d
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

    def draw(self, n: int, c: int, **kw) -> tuple[torch.Tensor, torch.Tensor]:
        """(gain, shift), each (n, c, 1, 1); samples not drawn for jitter get gain 1, shift 0."""
        shift = (torch.rand(n, c, 1, 1, **kw) * 2 - 1) * self.brightness
        gain = 1 + (torch.rand(n, c, 1, 1, **kw) * 2 - 1) * self.contrast
        apply = torch.rand(n, 1, 1, 1, device=kw.get("device")) < self.p
        return torch.where(apply, gain, 1.0), torch.where(apply, shift, 0.0)

    @staticmethod
    def apply(x: torch.Tensor, gain: torch.Tensor, shift: torch.Tensor, *,
              out: torch.Tensor | None = None) -> torch.Tensor:
        """(x - mean) * gain + mean + shift as one pass: x * gain + (mean * (1 - gain) + shift);
        with gain 1 and shift 0 it returns x unchanged. ``mean``: per sample and band, over
        space."""
        bias = x.mean(dim=(-2, -1), keepdim=True) * (1 - gain) + shift
        return torch.addcmul(bias, x, gain, out=out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gain, shift = self.draw(*x.shape[:2], device=x.device, dtype=x.dtype)
        return self.apply(x, gain, shift)


class BandGrayscale(nn.Module):
    """With probability p per sample, replace every band by the band mean.

    The multispectral analogue of RandomGrayscale: removes all spectral information so the
    network must also rely on texture; no RGB luminance weights exist for arbitrary bands.
    """

    def __init__(self, p: float = 0.2) -> None:
        super().__init__()
        self.p = p

    def draw(self, n: int) -> torch.Tensor:
        """Indices of the samples to turn gray (drawn on the CPU: no device sync to read)."""
        return (torch.rand(n) < self.p).nonzero().flatten()

    @staticmethod
    def apply_(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Turn samples ``index`` of ``x`` gray in place (only those samples are read)."""
        if len(index):
            index = index.to(x.device)
            x[index] = x[index].mean(dim=1, keepdim=True).expand(-1, x.shape[1], -1, -1)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = self.draw(x.shape[0])
        return self.apply_(x.clone(), index) if len(index) else x


def _blur_kernel(size: int) -> int:
    """Odd kernel of about 10% of the view side, as in SimCLR/MoCo v2, at least 3."""
    k = max(3, int(round(0.1 * size)))
    return k if k % 2 else k + 1


BLUR_CHUNK_ELEMENTS = 2 ** 19  # ~2 MB of float32: a chunk of samples stays in the CPU's cache


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Gaussian blur of each sample of ``x`` (m, C, H, W) with its own ``sigma`` (m,), kernel
    ``kernel`` px, reflected borders: kornia's ``gaussian_blur2d`` with a sigma per sample,
    the same result to float rounding (tests/test_views.py).

    Written as ``kernel`` shifted multiply-adds per axis, over a few samples at a time on a
    CPU so that they stay in cache: kornia's version runs one convolution grouped per sample
    and band, which took about twice as long on a CPU (64 13-band 64 px images, the two timed
    in turns).
    """
    r, (h, w) = kernel // 2, x.shape[-2:]
    weights = get_gaussian_kernel1d(kernel, sigma[:, None].to(x))[:, None, None, None, :]
    out = torch.empty_like(x)
    per_sample = x[0].numel() * (h + 2 * r) * (w + 2 * r) // max(h * w, 1)
    chunk = max(1, BLUR_CHUNK_ELEMENTS // max(per_sample, 1)) if x.device.type == "cpu" \
        else len(x)
    for i in range(0, len(x), chunk):
        wt = weights[i:i + chunk]
        pad = F.pad(x[i:i + chunk], (r, r, r, r), mode="reflect")
        rows = pad[..., 0:w] * wt[..., 0]
        for t in range(1, kernel):
            rows.addcmul_(pad[..., t:t + w], wt[..., t])
        block = torch.mul(rows[..., 0:h, :], wt[..., 0], out=out[i:i + chunk])
        for t in range(1, kernel):
            block.addcmul_(rows[..., t:t + h, :], wt[..., t])
    return out


def crop_affine(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 2, 3) affine_grid matrices that sample kornia's ``RandomResizedCrop`` boxes.

    ``boxes``: (B, 4, 2) corners (x, y) as kornia's crop generator returns them. kornia crops
    the integer box [x1, x2] x [y1, y2] (ends included) and resizes it bilinearly with
    align_corners=True, i.e. output column j reads input column x1 + j (x2 - x1) / (S - 1);
    ``grid_sample(align_corners=True)`` with these matrices reads the same positions.
    """
    box = boxes.long().to(torch.float64)
    x1, x2, y1, y2 = box[:, 0, 0], box[:, 1, 0], box[:, 0, 1], box[:, 3, 1]
    wd, hd = max(width - 1, 1), max(height - 1, 1)
    theta = torch.zeros(len(box), 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = (x2 - x1) / wd, (x1 + x2) / wd - 1
    theta[:, 1, 1], theta[:, 1, 2] = (y2 - y1) / hd, (y1 + y2) / hd - 1
    return theta


def sampling_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size, size, 2) ``grid_sample`` positions: ``affine_grid(theta, align_corners=True)``
    as broadcast multiply-adds (affine_grid's batched matmul with a 3-wide matrix took twice
    as long on a CPU), except that a 1-px view reads the crop's first pixel (as kornia's resize
    does) where affine_grid, which warns about that case, would read its centre."""
    lin = torch.linspace(-1.0, 1.0, size, device=theta.device, dtype=theta.dtype)
    a = theta[:, None, None, :, :]                                  # (B, 1, 1, 2, 3)
    return (lin[None, None, :, None] * a[..., 0] + lin[None, :, None, None] * a[..., 1]
            + a[..., 2])


def dihedral(theta: torch.Tensor, rot90: bool = True) -> torch.Tensor:
    """Compose each (2, 3) sampling matrix with a uniform draw from the dihedral group D4 of
    the output square (the 4 rotations and 4 reflections: orientation is arbitrary from orbit),
    or from {identity, horizontal flip, vertical flip, both} without ``rot90``.

    A horizontal flip, a vertical flip (p 0.5 each) and a transposition (p 0.5) reach each
    element of D4 exactly once, the same distribution as flips followed by k x 90 degrees with
    k uniform; applied to the output coordinates they cost nothing in the resampling.
    """
    b = len(theta)
    sign = torch.where(torch.rand(b, 2) < 0.5, -1.0, 1.0).to(theta.dtype)  # (u, v) flips
    d = torch.diag_embed(sign)
    if rot90:
        swap = torch.rand(b) < 0.5
        d = torch.where(swap[:, None, None], d.flip(-1), d)  # u <-> v: a transposition
    out = theta.clone()
    out[:, :, :2] = theta[:, :, :2] @ d
    return out


class ContrastiveViews(nn.Module):
    """MoCo v2 / SimCLR-style views with independent random parameters per sample.

    Random resized crop, horizontal and vertical flips (+ 90-degree rotations): orientation is
    arbitrary from orbit; then per-band jitter, band-mean grayscale and Gaussian blur.

    ``forward(x)`` makes one view, ``pair(x)`` two independent views in one pass (what the
    two-view methods call). The distributions are those of kornia's ``RandomResizedCrop``
    (its box sampler is used), ``RandomHorizontalFlip``/``RandomVerticalFlip`` (p 0.5), k x 90
    degree rotations (k uniform) and ``RandomGaussianBlur`` (p 0.5, sigma uniform per sample),
    but the geometry is one resampling: crop, flips and rotation are composed into
    one affine matrix per sample and read by a single ``grid_sample`` over every view of the
    batch, instead of a resize per sample and a pass over the batch per flip and rotation
    (benchmarks/views.py compares the costs). Jitter is one fused multiply-add, grayscale and
    blur touch only the samples drawn for them. Views keep the input's dtype with autocast
    off, so they are the same whatever the training precision.
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
        if not 0 <= blur_p <= 1 or not 0 < blur_sigma[0] <= blur_sigma[1]:
            raise ConfigError(f"views: need 0 <= blur_p <= 1 and 0 < blur sigma min <= max, got "
                              f"{blur_p}, {blur_sigma}")
        self.size, self.rot90 = size, rot90
        self.crop = K.RandomResizedCrop((size, size), scale=tuple(scale))  # its box sampler
        self.jitter = BandJitter(brightness, contrast, p=jitter_p)
        self.gray = BandGrayscale(p=gray_p)
        self.blur_p, self.blur_sigma = blur_p, tuple(blur_sigma)
        self.blur_kernel = _blur_kernel(size)
        if blur_p > 0 and size <= self.blur_kernel // 2:
            raise ConfigError(f"views: a {size}-px view is too small for the "
                              f"{self.blur_kernel}-px blur; set blur_p to 0")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.draw(x, 1)[0]

    def pair(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independent views of ``x`` (the query/key or the two SimCLR/BYOL views)."""
        v = self.draw(x, 2)
        return v[0], v[1]

    def draw(self, x: torch.Tensor, views: int) -> torch.Tensor:
        """(views, N, C, size, size): ``views`` independent views of every sample of ``x``."""
        if x.ndim != 4:
            raise DataError(f"views expect a batch (N, C, H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise DataError(f"views expect a floating-point (normalised) batch, got {x.dtype}")
        n, c, h, w = x.shape
        s, b = self.size, views * n
        # Random parameters are drawn on the CPU (no device sync to read them; the same views
        # for a seed on any device), view by view, sample by sample.
        boxes = self.crop.forward_parameters(torch.Size((b, c, h, w)))["src"]
        theta = dihedral(crop_affine(boxes, h, w), self.rot90)
        gain, shift = self.jitter.draw(b, c)
        gray = self.gray.draw(b)
        blur = (torch.rand(b) < self.blur_p).nonzero().flatten()
        sigma = torch.empty(len(blur)).uniform_(*self.blur_sigma)
        with torch.autocast(x.device.type, enabled=False):
            theta = theta.to(x.device, x.dtype)
            grid = sampling_grid(theta, s)
            # every view of sample i reads x[i]: stack the views' grids along the height and
            # sample once per input image, (N, C, views * s, s)
            grid = grid.view(views, n, s, s, 2).transpose(0, 1).reshape(n, views * s, s, 2)
            crops = F.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                  align_corners=True)
            crops = crops.view(n, c, views, s, s).permute(2, 0, 1, 3, 4)
            out = torch.empty(views, n, c, s, s, device=x.device, dtype=x.dtype)
            out = BandJitter.apply(crops, gain.to(x).view(views, n, c, 1, 1),
                                   shift.to(x).view(views, n, c, 1, 1), out=out)
            flat = BandGrayscale.apply_(out.view(b, c, s, s), gray)
            if len(blur):
                index = blur.to(x.device)
                flat[index] = gaussian_blur(flat[index], sigma, self.blur_kernel)
        return out


VIEWS = {"contrastive": ContrastiveViews}


def build_views(name: str, **kwargs) -> nn.Module:
    """View builder by name, so configs can pick a family without imports."""
    if name not in VIEWS:
        raise ConfigError(f"unknown views {name!r}; expected one of: {', '.join(sorted(VIEWS))}")
    return VIEWS[name](**kwargs)
