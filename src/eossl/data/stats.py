"""Per-band statistics of imagery, computed in one streaming pass.

What the statistics are and how an encoder normalises with them is in eossl.normalization.
Statistics are accumulated in one streaming pass (Chan et al.'s parallel mean/variance update,
float64) plus a fixed-size random reservoir per band for the 2%/98% quantiles, so scenes larger
than memory can be summarised chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import DataError

# BandStats, Normalizer and default_log_flags live in eossl.normalization (the encoder carries
# them, and eossl.models must not import eossl.data); imported here for the data modules.
from ..normalization import BandStats, Normalizer, default_log_flags  # noqa: F401

LINEAR_ROLES = ("sar",)


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
