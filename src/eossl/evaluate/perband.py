"""The per-band probe (RS-BYOL's main figure): how well does the frozen single-channel encoder
describe a place when it sees only band X?

For each pool band X the labelled data have, a band-wise encoder embeds the patches from band
X alone, and a linear probe (logistic regression on standardised features, as in probe.py) is
fitted on the training patches and scored on the test patches. Beside it: the encoder's random
twin on band X, and the spectral baseline of band X alone (its mean and std of log
reflectance). Columns are bands, plus "all used bands" (the encoder's whole input).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..errors import ConfigError
from ..normalization import default_log_flags
from . import results as R
from .base import FIGURES, Context, Evaluation, register_evaluation
from .features import frozen_features, spectral_features
from .probe import CLASS_METRICS, linear_probe

ALL = "all used bands"


def _tensors(ds) -> TensorDataset:
    """A labelled patch set as tensors, so each band's pass does not re-read the scene."""
    return TensorDataset(torch.from_numpy(np.asarray(ds.images(), dtype=np.float32)),
                         torch.as_tensor(np.asarray(ds.labels)))


class _Dicts(torch.utils.data.Dataset):
    def __init__(self, ds: TensorDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        x, y = self.ds[i]
        return {"image": x, "label": y}


@register_evaluation("per-band", position=90)
class PerBand(Evaluation):
    """The frozen band-wise encoder fed one band at a time (``probe_bands``: which; None: every
    pool band the data have)."""

    title = "Per-band linear probe"
    settings = dict(C=1.0, fraction=1.0, probe_bands=None, patch_size=16)
    description = ("The frozen band-wise encoder sees ONE band of the {patch_size} px patches "
                   "at a time (columns); logistic regression on standardised features "
                   "(C = {C}, {fraction:.0%} of the training patches), scored on the test "
                   "patches. '{all}': the encoder's mean embedding over every pool band the "
                   "data have. Spectral baseline: the band's own mean and std of log "
                   "reflectance; random twin: the same band-wise architecture with random "
                   "weights, on the same band.{bands_text}")

    def protocol(self) -> str:
        text = (f" Bands probed: {', '.join(self.probe_bands)}." if self.probe_bands
                else "")
        return self.description.format(**{**self.params(), "C": f"{self.C:g}" if isinstance(
            self.C, float) else self.C}, all=ALL, bands_text=text)

    def applies(self, encoder) -> str | None:
        if encoder.architecture()["type"] != "bandwise":
            return ("not a band-wise encoder: it takes all bands at once, so it cannot be fed "
                    "one band alone")
        return None

    def _data(self, ctx: Context):
        def build():
            return [(f.index, f.train, f.test, _Dicts(_tensors(f.train)),
                     _Dicts(_tensors(f.test))) for f in ctx.patch_folds(self.patch_size)]

        return ctx.cached(("per-band", self.patch_size), build)

    def _bands(self, ctx: Context, encoders: Mapping | None = None) -> list[str]:
        data = ctx.source.bands
        if self.probe_bands:
            absent = [b for b in self.probe_bands if b not in data]
            if absent:
                raise ConfigError(f"--probe-bands: band(s) {', '.join(absent)} are not in the "
                                  f"data (bands: {', '.join(data)})")
            return list(self.probe_bands)
        found = []
        for enc in (encoders or {}).values():
            found += [b for b in enc.wanted_bands if b in data and b not in found]
        return found

    def _probe(self, name, seed, fold, column, order, f_tr, y_tr, f_te, y_te, classes):
        (res,) = linear_probe(f_tr, y_tr, f_te, y_te, fractions=[self.fraction], seeds=[seed],
                              class_names=classes, C=self.C)
        return self.rec(self.tables[0], name, seed, fold, column, order,
                        {} if res.skipped else res.metrics, CLASS_METRICS,
                        n_train=res.n_train, min_per_class=res.min_per_class)

    def baseline(self, ctx: Context, seed: int) -> list[dict]:
        # the bands an encoder would be probed on are those of the pool the data have; without
        # an encoder at hand, every band of the data with a registry role
        out = []
        bands = self._bands(ctx) or list(ctx.source.bands)
        for fold, tr, te, _, _ in ctx.track(self._data(ctx)):
            x_tr, x_te = tr.images(), te.images()
            for order, band in enumerate(bands):
                i = list(tr.bands).index(band)
                log = default_log_flags([band])
                out += self._probe(R.SPECTRAL, seed, fold, band, order,
                                   spectral_features(x_tr[:, i:i + 1], log), np.asarray(
                                       tr.labels), spectral_features(x_te[:, i:i + 1], log),
                                   np.asarray(te.labels), list(tr.classes))
        return out

    def run(self, ctx: Context, encoders: Mapping, seed: int) -> list[dict]:
        out = []
        data = list(ctx.source.bands)
        for fold, tr, te, d_tr, d_te in ctx.track(self._data(ctx)):
            y_tr, y_te, classes = np.asarray(tr.labels), np.asarray(te.labels), list(tr.classes)
            for name, enc in encoders.items():
                full = self.fed(name, enc, data)
                bands = [b for b in self._bands(ctx, {name: enc}) if b in full.used_bands]
                for order, band in enumerate(bands):
                    one = full.for_bands(data, use=[band])
                    f_tr = frozen_features(one, d_tr, device=ctx.device).layer("last")
                    f_te = frozen_features(one, d_te, device=ctx.device).layer("last")
                    out += self._probe(name, seed, fold, band, order, f_tr, y_tr, f_te, y_te,
                                       classes)
                f_tr = frozen_features(full, d_tr, device=ctx.device).layer("last")
                f_te = frozen_features(full, d_te, device=ctx.device).layer("last")
                out += self._probe(name, seed, fold, ALL, len(bands), f_tr, y_tr, f_te, y_te,
                                   classes)
        return out

    def figures(self, records: list[dict], root: Path) -> list[tuple[Path, str]]:
        """The heat map (bands x rows) of the mean accuracy over seeds and folds."""
        recs = [r for r in records if r.get("evaluation") == self.name
                and r.get("table") == self.tables[0] and r["metric"] == "accuracy"
                and r["value"] is not None]
        if not recs:
            return []
        cells: dict[tuple, list] = {}
        for r in recs:
            cells.setdefault((r["column"], r["model"]), []).append(r["value"])
        order = {r["column"]: r["order"] for r in recs}
        bands = sorted({b for b, _ in cells}, key=lambda b: (b == ALL, order[b]))
        models = list(dict.fromkeys(m for _, m in cells))
        grid = np.full((len(bands), len(models)), np.nan)
        for (b, m), v in cells.items():
            grid[bands.index(b), models.index(m)] = float(np.mean(v))
        path = plot_per_band(bands, models, grid, root / FIGURES / "per-band-heatmap.png",
                             title="Per-band linear probe: accuracy, mean over seeds and folds")
        return [(path, "Per-band linear probe as a heat map (accuracy, mean over seeds and "
                       "folds)")]


def plot_per_band(bands: Sequence[str], models: Sequence[str], grid: np.ndarray,
                  path: str | Path, metric: str = "accuracy",
                  title: str = "Per-band linear probe") -> Path:
    """Heat map (bands x models) of the probe score, values written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..report import save_figure

    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(models), 0.9 + 0.36 * len(bands)))
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(models)), models, rotation=20, ha="right", fontsize=8)
    ax.set_yticks(range(len(bands)), bands, fontsize=8)
    lo, hi = np.nanmin(grid), np.nanmax(grid)
    for i in range(len(bands)):
        for j in range(len(models)):
            v = grid[i, j]
            if np.isfinite(v):
                light = hi > lo and (v - lo) / (hi - lo) > 0.6
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if light else "white")
    fig.colorbar(im, ax=ax, label=metric.replace("_", " "))
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path, dpi=100)
