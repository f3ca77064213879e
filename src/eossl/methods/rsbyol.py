"""RS-BYOL / RSDnet (Jain et al. 2022): BYOL whose "augmentation" is a change of band or sensor.

Two views of one location are drawn from a pool of bands (default: the ten Sentinel-2 bands at
10-20 m plus Sentinel-1 VV and VH), one band per view ("single", a 1-channel encoder) or a
triple ("three", a 3-channel encoder), then cropped, flipped, rotated and blurred. An optical
view and a radar view of one place must map to one embedding, so the encoder learns what the
sensors agree on. Everything else (projector, predictor, EMA target with tau 0.996 -> 1,
symmetrised loss) is BYOL (methods/byol.py).

The encoder sees 1 (or 3) channels, so downstream it is a
:class:`~eossl.models.bandwise.BandwiseEncoder` that picks pool bands from any band stack by
name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..bands import band_indices, find_in
from ..errors import ConfigError, DataError
from ..models.bandwise import REDUCES, BandwiseEncoder
from ..views import ContrastiveViews
from . import register_method
from .byol import BYOL

#: Sentinel-2 bands at 10-20 m and Sentinel-1 polarisations (the paper's pool).
DEFAULT_POOL: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11",
                                 "B12", "VV", "VH")
SAR_BANDS = ("VV", "VH", "HH", "HV")
MODES = {"single": 1, "three": 3}


def resolve_pool(data_bands: Sequence[str], pool: Sequence[str] | str | None = None,
                 ms_only: bool = False, mode: str = "single") -> list[str]:
    """The pool as names of ``data_bands``; ConfigError for a band the data lacks."""
    if isinstance(pool, str):
        pool = [b.strip() for b in pool.split(",") if b.strip()]
    names = list(DEFAULT_POOL if pool is None else pool)
    if ms_only:  # the paper's MS-only ablation: optical bands only
        names = [b for b in names if b.upper() not in SAR_BANDS]
    out = []
    for b in names:
        hit = find_in(b, list(data_bands))  # the data's own spelling (bands.py)
        if hit is not None:
            out.append(hit)
        else:
            raise ConfigError(f"rsbyol pool band {b!r} is not in the data; the data's bands: "
                              f"{', '.join(data_bands)} (set model.pool to bands it has, or "
                              "model.ms_only: true for data without SAR)")
    if len(set(out)) != len(out):
        raise ConfigError(f"rsbyol pool names a band twice: {', '.join(names)}")
    need = MODES.get(mode, 1)
    if len(out) < max(need, 1):
        raise ConfigError(f"rsbyol mode {mode!r} needs at least {need} pool bands, got "
                          f"{len(out)} ({', '.join(out) or 'none'})")
    return out


def spatial_views(size: int, scale: Sequence[float] = (0.2, 1.0), blur_p: float = 0.5,
                  blur_sigma: Sequence[float] = (0.1, 2.0), rot90: bool = True) -> nn.Module:
    """The spatial half of RS-BYOL's views (the spectral half is the band draw): random resized
    crop, flips, 90-degree rotations and Gaussian blur, per sample, for any channel count;
    ContrastiveViews with its band jitter and grayscale off."""
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ConfigError(f"rsbyol: crop scale must satisfy 0 < min <= max <= 1, got {scale}")
    return ContrastiveViews(size, scale=tuple(scale), jitter_p=0.0, gray_p=0.0, blur_p=blur_p,
                            blur_sigma=tuple(blur_sigma), rot90=rot90)


class BandViews(nn.Module):
    """One view per call: each sample draws ``k`` distinct pool bands (uniformly, independently
    of the other view, so two views may share a band), then a spatial augmentation."""

    def __init__(self, bands: Sequence[str], pool: Sequence[str], k: int, spatial: nn.Module):
        super().__init__()
        self.k, self.spatial = k, spatial
        self.register_buffer("pool_index", torch.as_tensor(band_indices(bands, pool)),
                             persistent=False)

    def draw(self, n: int, device) -> torch.Tensor:
        """(n, k) channel indices into the input: k distinct pool bands per sample."""
        p = len(self.pool_index)
        pick = torch.rand(n, p, device=device).argsort(dim=1)[:, :self.k]
        return self.pool_index.to(device)[pick]

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        n, _, h, w = x.shape
        index = self.draw(n, x.device) if index is None else index
        v = x.gather(1, index[:, :, None, None].expand(n, self.k, h, w))
        return self.spatial(v)


@register_method("rsbyol")
class RSBYOL(BYOL):
    """RS-BYOL: BYOL with views drawn from a band/sensor pool (single band or band triple).

    Options: ``mode`` "single" (1-channel encoder, paper's main setting) or "three";
    ``pool`` (band names, default the 10 S2 bands at 10-20 m + VV, VH); ``ms_only`` (drop SAR
    from the pool: the paper's MS-only ablation); ``reduce`` ("concat" or "mean": how the
    downstream BandwiseEncoder combines per-band features); ``scale``/``blur_p`` (spatial
    views). BYOL's options (head sizes, ``ema_momentum``) pass through.
    """

    def __init__(self, bands: list[str], stats: dict, *, mode: str = "single",
                 pool: Sequence[str] | str | None = None, ms_only: bool = False,
                 reduce: str = "mean", scale: Sequence[float] = (0.2, 1.0),
                 blur_p: float = 0.5, **kwargs) -> None:
        if mode not in MODES:
            raise ConfigError(f"rsbyol: unknown mode {mode!r}; expected one of: "
                              f"{', '.join(MODES)}")
        if reduce not in REDUCES:
            raise ConfigError(f"rsbyol: unknown reduce {reduce!r}; expected one of: "
                              f"{', '.join(REDUCES)}")
        resolved = resolve_pool(list(bands), pool, ms_only, mode)  # fail before building nets
        super().__init__(bands, stats, **kwargs)
        self.pool = resolved
        spatial = spatial_views(self.hparams.crop_size, scale=scale, blur_p=blur_p)
        self.band_views = BandViews(list(bands), self.pool, MODES[mode], spatial)
        self._val_encoder: list = []  # plain list: not a registered submodule

    def view_channels(self) -> int:
        return MODES[self.hparams.mode]

    def make_views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.band_views(x), self.band_views(x)

    # ---------------------------------------------------------------- downstream encoder
    def encoder(self) -> BandwiseEncoder:
        return BandwiseEncoder(self.backbone, self.normalizer.stats, self.pool,
                               reduce=self.hparams.reduce, name=self.method_name,
                               metadata=self.eossl_metadata()).to(self.device)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        # The online kNN probe feeds all bands; the 1/3-channel backbone needs the wrapper.
        if dataloader_idx > 1:
            raise DataError("kNN probe expects two validation loaders [reference, query], got "
                            f"a loader with index {dataloader_idx}")
        if not self._val_encoder or self._val_encoder[0].index.device != self.device:
            self._val_encoder[:] = [self.encoder()]
        with torch.no_grad():
            f = nn.functional.normalize(self._val_encoder[0](batch["image"]).float(), dim=1)
        feats, labels = self._knn.setdefault(dataloader_idx, ([], []))
        feats.append(f)
        labels.append(batch["label"])

    def eossl_metadata(self) -> dict:
        meta = super().eossl_metadata()
        meta["in_chans"] = self.view_channels()
        meta["encoder"] = {"type": "bandwise", "pool": list(self.pool),
                           "mode": self.hparams.mode, "reduce": self.hparams.reduce}
        return meta
