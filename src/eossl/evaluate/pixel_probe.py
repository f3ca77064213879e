"""Per-pixel probe: frozen per-pixel embeddings -> logistic regression on labelled pixels.

The pixel-level counterpart of the patch probe (evaluate/probe.py) for encoders that produce
one embedding per pixel (the spectral-spatial method). Labels come from a dense label map
(``SceneSource.label_map()``, IGNORE_INDEX = unlabelled); training pixels are drawn from the
WEST block of the spatial split and test pixels from the EAST block, so no test pixel has a
training neighbour within the split gap. At most ``per_class`` pixels per class are drawn per
block (seeded), which bounds the cost and keeps majority classes (farm, meadow) from swamping
the fit; test scores are therefore on a class-balanced sample, so balanced accuracy and macro
F1 are the numbers to read.

Embeddings are computed tile by tile inside each block (context never crosses into the other
block); see :meth:`eossl.models.encoder.Encoder.pixel_features` for what "per-pixel embedding"
means for encoders with and without a spectral stem.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..data.datasets import IGNORE_INDEX, OSM_CLASSES, SpatialSplit
from ..errors import ConfigError, DataError
from .probe import linear_probe, results_to_records

RAW = "raw spectrum"


def sample_pixels(label_map: np.ndarray, cols: tuple[int, int], per_class: int, seed: int,
                  valid: np.ndarray | None = None, n_classes: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded draw of up to ``per_class`` labelled pixels per class within a column block.

    Returns (rows, cols, labels), sorted by position. ``valid`` (H, W) excludes nodata pixels.
    """
    if per_class < 1:
        raise ConfigError(f"per_class must be >= 1, got {per_class}")
    c0, c1 = cols
    block = label_map[:, c0:c1]
    ok = block != IGNORE_INDEX
    if n_classes is not None:
        ok &= block < n_classes
    if valid is not None:
        ok &= valid[:, c0:c1]
    rr, cc = np.nonzero(ok)
    labels = block[rr, cc].astype(np.int64)
    rng = np.random.default_rng(seed)
    keep = []
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        keep.append(idx if len(idx) <= per_class else rng.choice(idx, per_class, replace=False))
    if not keep:
        raise DataError(f"no labelled pixel in columns {c0}-{c1} of the label map")
    sel = np.sort(np.concatenate(keep))
    return rr[sel], cc[sel] + c0, labels[sel]


def _tiles(height: int, cols: tuple[int, int], tile: int):
    """Top-left corners of tiles covering the block; edge tiles shifted inside it."""
    c0, c1 = cols
    th, tw = min(tile, height), min(tile, c1 - c0)
    for r in range(0, height, th):
        for c in range(c0, c1, tw):
            yield min(r, height - th), min(c, c1 - tw), th, tw


@torch.inference_mode()
def embed_pixels(embed_fn, image_reader, height: int, cols: tuple[int, int],
                 rows: np.ndarray, cc: np.ndarray, tile: int = 64) -> np.ndarray:
    """Embeddings (M, D) of the pixels (rows, cc), computed tile by tile within the block.

    ``embed_fn(raw (1, C, h, w)) -> (1, D, h, w)``; ``image_reader((r, c, h, w)) -> (C, h, w)``.
    Each pixel takes its embedding from the first tile that covers it.
    """
    out: np.ndarray | None = None
    done = np.zeros(len(rows), dtype=bool)
    for r, c, h, w in _tiles(height, cols, tile):
        inside = ~done & (rows >= r) & (rows < r + h) & (cc >= c) & (cc < c + w)
        if not inside.any():
            continue
        x = torch.from_numpy(np.ascontiguousarray(image_reader((r, c, h, w))))[None]
        emb = embed_fn(x)[0]  # (D, h, w)
        if out is None:
            out = np.empty((len(rows), emb.shape[0]), dtype=np.float32)
        idx = np.flatnonzero(inside)
        out[idx] = emb[:, rows[idx] - r, cc[idx] - c].T.float().cpu().numpy()
        done |= inside
    if out is None or not done.all():
        raise DataError("pixel embedding: some sampled pixels lie outside every tile")
    if not np.isfinite(out).all():
        raise DataError("the encoder produced non-finite pixel embeddings (nodata in the "
                        "input?)")
    return out


def raw_spectrum_fn(normalizer: nn.Module):
    """The pixel baseline: each pixel's standardised log spectrum, no network."""
    return lambda x: normalizer(x)


def encoder_fn(encoder: nn.Module):
    encoder.eval()
    return encoder.pixel_features


def pixel_probe(source, encoders: Mapping[str, nn.Module], *, per_class: int = 500,
                test_per_class: int | None = 2000, seeds: Sequence[int] = (0, 1, 2),
                spatial_split: SpatialSplit | None = None, tile: int = 64,
                raw_baseline: bool = True, classes: Sequence[str] = OSM_CLASSES,
                C: float | str = "cv") -> list[dict]:
    """Pixel-probe records for the raw-spectrum baseline and each encoder, per seed.

    ``encoders`` take the source's bands (``Encoder.for_bands``). The pixel
    draw changes with the seed, so seeds measure sampling as well as fitting variance.
    """
    scene = source.scenes[0]
    label_map = source.label_map()
    split = spatial_split or SpatialSplit(gap=16)
    train_cols = split.columns("train", scene.width)
    test_cols = split.columns("test", scene.width)
    scene.load()
    valid = scene.valid_mask()
    fns: dict[str, object] = {}
    if raw_baseline:
        from ..normalization import Normalizer

        fns[RAW] = raw_spectrum_fn(Normalizer(source.stats()).eval())
    fns.update({name: encoder_fn(enc) for name, enc in encoders.items()})
    n = len(classes)
    rows_out: dict[str, list] = {name: [] for name in fns}
    for seed in seeds:
        tr = sample_pixels(label_map, train_cols, per_class, seed, valid, n)
        te = sample_pixels(label_map, test_cols, test_per_class or 10 ** 9, seed + 10_000,
                           valid, n)
        for name, fn in fns.items():
            x_tr = embed_pixels(fn, scene.read, scene.height, train_cols, tr[0], tr[1], tile)
            x_te = embed_pixels(fn, scene.read, scene.height, test_cols, te[0], te[1], tile)
            rows_out[name] += linear_probe(x_tr, tr[2], x_te, te[2], fractions=(1.0,),
                                           seeds=(seed,), class_names=list(classes), C=C)
    records = results_to_records(rows_out)
    for rec in records:
        rec["kind"] = "pixel-linear"
    return records
