"""The per-band probe (RS-BYOL's main figure): how well does the frozen single-channel encoder
describe a place when it sees only band X?

For each pool band X present in the labelled data, every band-wise encoder (RS-BYOL) embeds
the patches from band X alone, and a linear probe (logistic regression, as in probe.py) is
fitted on the training block and scored on the test block. Two references per band sit beside
it: a randomly initialised copy of the same encoder on band X, and the spectral baseline of band
X alone (its mean and std of log reflectance). Output: records, a Markdown table (bands x
models) and a heat map.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..errors import ConfigError
from ..models.bandwise import BandwiseEncoder
from ..models.encoder import RANDOM_TWIN
from .probe import extract_features, linear_probe, spectral_features

SPECTRAL = "spectral (band alone)"
RANDOM = RANDOM_TWIN
ALL = "all used bands"
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def _is_bandwise(enc) -> bool:
    return isinstance(enc, BandwiseEncoder)


def load_bandwise(checkpoints: Mapping[str, str]) -> dict:
    """Encoders of the checkpoints; ConfigError for one that is not band-wise."""
    from ..checkpoint import load_encoder

    out = {}
    for name, path in checkpoints.items():
        enc = load_encoder(path)
        if not _is_bandwise(enc):
            raise ConfigError(f"--per-band needs a band-wise (single/three-channel) encoder such "
                              f"as rsbyol; checkpoint {name}={path} is a "
                              f"{getattr(enc, 'name', 'encoder')} encoder of "
                              f"{len(enc.bands)} bands")
        out[name] = enc
    return out


def _score(results) -> dict:
    done = [r for r in results if not r.skipped]
    rec = {"n_seeds": len(done), "n_train": done[0].n_train if done else 0}
    for m in METRICS:
        vals = [r.metrics[m] for r in done]
        rec[m] = float(np.mean(vals)) if vals else float("nan")
        rec[f"{m}_std"] = float(np.std(vals)) if vals else float("nan")
    return rec


def per_band_probe(train, test, encoders: Mapping[str, object], *,
                   bands: Sequence[str] | None = None, fraction: float = 1.0,
                   seeds: Sequence[int] = (0,), random_init: bool = True,
                   spectral: bool = True, all_bands: bool = True, C: float | str = "cv",
                   device: str = "cpu", random_seed: int = 0) -> list[dict]:
    """Linear-probe records ``{"model", "band", "accuracy", ...}`` per (model, band).

    ``train``/``test``: labelled patch datasets of one spatial split (``.bands``, ``.labels``,
    ``.classes``, ``.images()``). ``encoders``: band-wise encoders (RS-BYOL). ``bands``:
    which bands to probe (default: every pool band of any encoder that the data has).
    ``C``: the probe's regularisation, "cv" (3-fold CV per fit, as ``eossl probe``) or a fixed
    value (one fit per band: about 10x faster on a CPU). ``random_seed`` seeds the random-init
    copy's weights (the benchmark passes the pretraining seed).
    """
    if not encoders:
        raise ConfigError("per-band probe: give at least one band-wise encoder")
    data_bands = list(train.bands)
    classes = list(train.classes)
    y_tr, y_te = np.asarray(train.labels), np.asarray(test.labels)
    x_tr = torch.from_numpy(np.asarray(train.images(), dtype=np.float32))
    x_te = torch.from_numpy(np.asarray(test.images(), dtype=np.float32))
    ds_tr = TensorDataset(x_tr, torch.as_tensor(y_tr))
    ds_te = TensorDataset(x_te, torch.as_tensor(y_te))

    full = {name: enc.for_bands(data_bands) for name, enc in encoders.items()}
    if bands is None:
        bands = []
        for enc in full.values():
            bands += [b for b in enc.used_bands if b not in bands]
    bands = list(bands)
    models = dict(full)
    if random_init:
        models = {RANDOM: next(iter(full.values())).random_twin(seed=random_seed), **full}

    def probe(f_tr, f_te):
        return _score(linear_probe(f_tr, y_tr, f_te, y_te, fractions=[fraction], seeds=seeds,
                                   class_names=classes, C=C))

    records = []
    for band in bands:
        if spectral:
            i = data_bands.index(band) if band in data_bands else None
            if i is not None:
                log = [band.upper() not in ("VV", "VH", "HH", "HV")]
                s_tr = spectral_features(x_tr[:, i:i + 1].numpy(), log=log)
                s_te = spectral_features(x_te[:, i:i + 1].numpy(), log=log)
                records.append({"model": SPECTRAL, "band": band, **probe(s_tr, s_te)})
        for name, enc in models.items():
            if band not in enc.used_bands:
                continue  # this encoder's pool lacks the band
            one = enc.for_bands(data_bands, use=[band])
            f_tr, _ = extract_features(one, ds_tr, device=device)
            f_te, _ = extract_features(one, ds_te, device=device)
            records.append({"model": name, "band": band, **probe(f_tr, f_te)})
    if all_bands:
        for name, enc in models.items():
            f_tr, _ = extract_features(enc, ds_tr, device=device)
            f_te, _ = extract_features(enc, ds_te, device=device)
            records.append({"model": name, "band": ALL, "used_bands": list(enc.used_bands),
                            **probe(f_tr, f_te)})
    for r in records:
        r.update(kind="linear", fraction=fraction)
    return records


def _grid(records: Sequence[dict], metric: str) -> tuple[list[str], list[str], np.ndarray]:
    bands, models = [], []
    for r in records:
        if r["band"] not in bands:
            bands.append(r["band"])
        if r["model"] not in models:
            models.append(r["model"])
    if ALL in bands:  # the reference row goes last
        bands.remove(ALL)
        bands.append(ALL)
    grid = np.full((len(bands), len(models)), np.nan)
    for r in records:
        grid[bands.index(r["band"]), models.index(r["model"])] = r[metric]
    return bands, models, grid


def per_band_table(records: Sequence[dict], metric: str = "accuracy") -> str:
    """Markdown table: one row per band, one column per model; the best model per band bold."""
    bands, models, grid = _grid(records, metric)
    lines = [f"| band ({metric.replace('_', ' ')}) | " + " | ".join(models) + " |",
             "|---" * (len(models) + 1) + "|"]
    for b, row in zip(bands, grid):
        best = np.nanmax(row) if np.isfinite(row).any() else None
        cells = ["-" if not np.isfinite(v) else
                 (f"**{v:.3f}**" if best is not None and v == best else f"{v:.3f}")
                 for v in row]
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_per_band(records: Sequence[dict], path: str | Path, metric: str = "accuracy",
                  title: str = "Per-band linear probe") -> Path:
    """Heat map (bands x models) of the probe score, values written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..report import save_figure

    bands, models, grid = _grid(records, metric)
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
    return save_figure(fig, path, dpi=110)


def describe_band_use(checkpoints: Mapping[str, str], data_bands: Sequence[str]) -> list[str]:
    """One line per band-wise checkpoint: which of its pool bands the data has (and lacks)."""
    from ..checkpoint import load_encoder

    lines = []
    for name, path in checkpoints.items():
        enc = load_encoder(path)
        if _is_bandwise(enc):
            lines.append(f"{name}: " + enc.for_bands(list(data_bands)).describe())
    return lines


def per_band_report(source, checkpoints: Mapping[str, str], *, patch_size: int = 16,
                    seeds: Sequence[int] = (0,), out: str | Path | None = None,
                    command: str = "", C: float | str = "cv") -> str:
    """Run the per-band probe on ``source``'s spatial patch split and write
    ``perband.md``, ``perband.json`` and ``perband.png`` (heat map) into ``out`` (default
    ``runs/perband-TIMESTAMP``; an existing perband.json is never overwritten). Returns the text
    for the terminal."""
    import json
    from datetime import datetime

    from ..errors import OutputExistsError
    from ..report import atomic_write_text

    out = Path(out) if out else Path("runs") / f"perband-{datetime.now():%Y%m%d-%H%M%S}"
    if (out / "perband.json").exists():
        raise OutputExistsError(f"{out} already holds perband.json; choose another --out")
    encoders = load_bandwise(checkpoints)
    train, test = source.patches("train", patch_size), source.patches("test", patch_size)
    records = per_band_probe(train, test, encoders, seeds=seeds, C=C)
    used = [f"{name}: {enc.for_bands(train.bands).describe()}" for name, enc in encoders.items()]
    tables = [per_band_table(records, m) for m in METRICS]
    png = plot_per_band(records, out / "perband.png",
                        title=f"Per-band linear probe, {getattr(source, 'name', 'data')}, "
                              f"{patch_size} px patches, {len(test)} test patches")
    md = ["# Per-band linear probe\n", f"command: `{command}`\n" if command else "",
          "Each encoder sees one band at a time (frozen); logistic regression on the spatial "
          f"train block ({len(train)} patches), scored on the test block ({len(test)}). "
          f"100% of labels, seeds {', '.join(map(str, seeds))}.\n", *[f"- {u}" for u in used],
          "", *[t + "\n" for t in tables], f"![per-band heat map]({png.name})\n"]
    atomic_write_text(out / "perband.md", "\n".join(md))
    atomic_write_text(out / "perband.json", json.dumps(records, indent=1))
    return "\n".join(used + ["", tables[0], "", f"per-band report: {out / 'perband.md'}",
                             f"heat map: {png}"])
