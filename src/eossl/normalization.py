"""Per-band statistics and the normalisation an encoder applies to raw values.

Reflectance is heavy-tailed (water ~200 DN next to cloud ~8000 DN), so optical bands are
normalised as standardised log reflectance: ``(log1p(x) - mean) / std``. SAR bands already come
in dB and are standardised linearly. The statistics travel inside every checkpoint and export,
so that a probe, a fine-tune or an embedding run normalises exactly as pretraining did.

This module sits beside :mod:`eossl.bands`, below both ``eossl.data`` (which computes the
statistics) and ``eossl.models`` (whose encoders carry them), so neither imports the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from .errors import DataError

SAR_BANDS = ("VV", "VH", "HH", "HV")


@dataclass
class BandStats:
    """Statistics of one band list, in that band order."""

    bands: list[str]
    mean: list[float]          # of the transformed values (log1p or linear)
    std: list[float]
    q02: list[float]           # of the raw values, for display and colour targets
    q98: list[float]
    log: list[bool] = field(default_factory=list)  # whether each band is log-transformed
    count: int = 0

    def __post_init__(self) -> None:
        if not self.log:
            self.log = [True] * len(self.bands)
        n = len(self.bands)
        for name in ("mean", "std", "q02", "q98", "log"):
            if len(getattr(self, name)) != n:
                raise DataError(f"band statistics: {name} has {len(getattr(self, name))} values "
                                f"for {n} bands")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BandStats":
        return cls(**d)

    def subset(self, bands: Sequence[str]) -> "BandStats":
        from .bands import band_indices

        idx = band_indices(self.bands, bands, source="the band statistics")
        pick = lambda v: [v[i] for i in idx]  # noqa: E731
        return BandStats(list(bands), pick(self.mean), pick(self.std), pick(self.q02),
                         pick(self.q98), pick(self.log), self.count)

    def raw_mean(self) -> list[float]:
        """The raw value of each band that normalises to 0 (its training mean): what a band
        the data lack is filled with, so it carries no information."""
        return [float(np.expm1(m)) if lg else float(m) for m, lg in zip(self.mean, self.log)]


def default_log_flags(bands: Sequence[str]) -> list[bool]:
    """Optical bands are log-transformed; SAR (dB) bands are not."""
    return [b.upper() not in SAR_BANDS for b in bands]


class Normalizer(nn.Module):
    """Raw values (N, C, H, W) -> standardised (log) values, on whatever device the batch is.

    Kept as a module with buffers so it moves with the model (GPU), is saved in the state dict,
    and is exported with the encoder.
    """

    def __init__(self, stats: BandStats | dict) -> None:
        super().__init__()
        if isinstance(stats, dict):
            stats = BandStats.from_dict(stats)
        self.stats = stats
        shape = (1, len(stats.bands), 1, 1)
        self.register_buffer("mean", torch.tensor(stats.mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(stats.std, dtype=torch.float32).view(shape))
        self.register_buffer("log_mask", torch.tensor(stats.log, dtype=torch.bool).view(shape))

    @property
    def bands(self) -> list[str]:
        return list(self.stats.bands)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-3] != self.mean.shape[1]:
            raise DataError(f"normaliser expects {self.mean.shape[1]} bands "
                            f"({', '.join(self.bands)}), got {x.shape[-3]} channels")
        x = x.float()
        x = torch.where(self.log_mask, torch.log1p(x.clamp_min(0)), x)
        return (x - self.mean) / self.std
