"""Per-band statistics and the normalisation every stage shares.

Reflectance is heavy-tailed (water ~200 DN next to cloud ~8000 DN), so optical bands are
normalised as standardised log reflectance: ``(log1p(x) - mean) / std``. SAR bands already come
in dB and are standardised linearly. The statistics travel inside every checkpoint and export,
so that a probe, a fine-tune or an embedding run normalises exactly as pretraining did.

Statistics are accumulated in one streaming pass (Chan et al.'s parallel mean/variance update,
float64) plus a fixed-size random reservoir per band for the 2%/98% quantiles, so scenes larger
than memory can be summarised chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import DataError

LINEAR_ROLES = ("sar",)


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
        from ..bands import band_indices

        idx = band_indices(self.bands, bands, source="the band statistics")
        pick = lambda v: [v[i] for i in idx]  # noqa: E731
        return BandStats(list(bands), pick(self.mean), pick(self.std), pick(self.q02),
                         pick(self.q98), pick(self.log), self.count)


class StatsAccumulator:
    """Streaming accumulator of per-band moments and quantile reservoirs."""

    def __init__(self, bands: Sequence[str], log: Sequence[bool] | None = None,
                 reservoir: int = 200_000, seed: int = 0) -> None:
        self.bands = list(bands)
        self.log = np.asarray(log if log is not None else [True] * len(bands), dtype=bool)
        self.n = 0
        self.mean = np.zeros(len(bands))
        self.m2 = np.zeros(len(bands))
        self.reservoir = reservoir
        self.samples: list[np.ndarray] = []
        self.rng = np.random.default_rng(seed)

    def update(self, chunk: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add a (C, ...) chunk of raw values; ``valid`` masks out nodata pixels."""
        c = np.asarray(chunk, dtype=np.float64).reshape(len(self.bands), -1)
        if valid is not None:
            c = c[:, np.asarray(valid).reshape(-1)]
        c = c[:, np.isfinite(c).all(axis=0)]
        if c.shape[1] == 0:
            return
        raw = c
        t = np.where(self.log[:, None], np.log1p(np.clip(c, 0, None)), c)
        nb = t.shape[1]
        mb = t.mean(axis=1)
        m2b = ((t - mb[:, None]) ** 2).sum(axis=1)
        delta = mb - self.mean
        tot = self.n + nb
        self.mean = self.mean + delta * nb / tot
        self.m2 = self.m2 + m2b + delta ** 2 * self.n * nb / tot
        self.n = tot
        k = min(nb, max(1, self.reservoir // 10))
        self.samples.append(raw[:, self.rng.choice(nb, size=k, replace=False)])
        if sum(s.shape[1] for s in self.samples) > 2 * self.reservoir:
            allv = np.concatenate(self.samples, axis=1)
            self.samples = [allv[:, self.rng.choice(allv.shape[1], self.reservoir, replace=False)]]

    def finish(self) -> BandStats:
        if self.n < 2:
            raise DataError("band statistics: fewer than two valid pixels; is the imagery all "
                            "nodata?")
        std = np.sqrt(self.m2 / (self.n - 1))
        std = np.where(std < 1e-6, 1.0, std)
        allv = np.concatenate(self.samples, axis=1)
        q02, q98 = np.quantile(allv, [0.02, 0.98], axis=1)
        return BandStats(self.bands, self.mean.tolist(), std.tolist(), q02.tolist(),
                         q98.tolist(), self.log.tolist(), int(self.n))


def compute_stats(chunks: Iterable[np.ndarray], bands: Sequence[str],
                  log: Sequence[bool] | None = None) -> BandStats:
    """Statistics over an iterable of (C, ...) raw arrays (e.g. windows of a scene)."""
    acc = StatsAccumulator(bands, log)
    for ch in chunks:
        acc.update(ch)
    return acc.finish()


def default_log_flags(bands: Sequence[str]) -> list[bool]:
    """Optical bands are log-transformed; SAR (dB) bands are not."""
    return [b.upper() not in ("VV", "VH", "HH", "HV") for b in bands]


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
