"""Per-pixel probe: frozen per-pixel embeddings -> logistic regression on labelled pixels.

The pixel-level counterpart of the patch probe, for encoders that give one embedding per pixel
(``Encoder.pixel_features``: a spectral stem's own, else the last feature map upsampled). The
reference row is the encoder's random twin, so a spectral-stem encoder is compared with a
random spectral stem, not with a ResNet of another architecture. Labels come from a dense
label map (IGNORE_INDEX = unlabelled); training pixels lie in the fold's training area and test
pixels in its test area, and each pixel is embedded from a tile that lies wholly inside its
area, so context never crosses the split. At most ``per_class`` pixels per class are drawn
(seeded), which bounds the cost and keeps majority classes from swamping the fit; test scores
are therefore on a class-balanced sample, so balanced accuracy and macro F1 are the numbers to
read.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ..data.datasets import IGNORE_INDEX
from ..errors import ConfigError, DataError
from ..models.backbones import at_points
from ..normalization import Normalizer
from . import results as R
from .base import Context, Evaluation, register_evaluation
from .probe import CLASS_METRICS, linear_probe


def area_tiles(mask: np.ndarray, tile: int) -> list[tuple[int, int]]:
    """Top-left corners of ``tile`` px tiles that lie wholly inside ``mask``: a grid, plus
    tiles flush with every edge of the area (so pixels near an edge are covered too)."""
    h, w = mask.shape
    t = min(tile, h, w)

    def starts(any_along: np.ndarray, n: int) -> list[int]:
        edges = np.flatnonzero(np.diff(np.r_[0, any_along.astype(np.int8), 0]))
        cand = set(range(0, n - t + 1, t)) | {n - t}
        cand |= {int(e) for e in edges[0::2]} | {int(e) - t for e in edges[1::2]}
        return sorted(c for c in cand if 0 <= c <= n - t)

    rows, cols = starts(mask.any(axis=1), h), starts(mask.any(axis=0), w)
    return [(r, c) for r in rows for c in cols if mask[r:r + t, c:c + t].all()]


def sample_pixels(label_maps, tiles, tile: int, per_class: int, seed: int, valid=None,
                  n_classes: int | None = None) -> tuple[np.ndarray, ...]:
    """Seeded draw of up to ``per_class`` labelled pixels per class among those the ``tiles``
    cover, over every scene (``label_maps``, ``tiles`` and ``valid``: one entry per scene).
    Returns (scene index, rows, cols, labels), sorted by scene and position."""
    if per_class < 1:
        raise ConfigError(f"per_class must be >= 1, got {per_class}")
    parts = []
    for k, lm in enumerate(label_maps):
        cover = np.zeros(lm.shape, dtype=bool)
        for r, c in tiles[k]:
            cover[r:r + tile, c:c + tile] = True
        ok = cover & (lm != IGNORE_INDEX)
        if n_classes is not None:
            ok &= lm < n_classes
        if valid is not None:
            ok &= valid[k]
        rr, cc = np.nonzero(ok)
        parts.append((np.full(len(rr), k), rr, cc, lm[rr, cc].astype(np.int64)))
    scene, rows, cols, labels = (np.concatenate(p) for p in zip(*parts))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep.append(idx if len(idx) <= per_class else rng.choice(idx, per_class, replace=False))
    if not keep:
        raise DataError("no labelled pixel in this area of the label map")
    sel = np.sort(np.concatenate(keep))
    return scene[sel], rows[sel], cols[sel], labels[sel]


@torch.inference_mode()
def embed_pixels(embed_fn, image_reader, tiles, tile: int, rows: np.ndarray,
                 cols: np.ndarray, batch: int = 32) -> np.ndarray:
    """Embeddings (M, D) of the pixels (rows, cols), each from the first tile covering it;
    tiles are embedded in batches of ``batch``.

    ``embed_fn(raw (B, C, t, t), points (B, P, 2)) -> (B, D, P)``: the embeddings of each tile
    at its pixels (row, col within the tile; a tile with fewer than P pixels repeats its
    last); ``image_reader((r, c, h, w)) -> (C, h, w)``.
    """
    done = np.zeros(len(rows), dtype=bool)
    jobs = []  # (tile corner, indices of the pixels it gives)
    for r, c in tiles:
        inside = ~done & (rows >= r) & (rows < r + tile) & (cols >= c) & (cols < c + tile)
        if inside.any():
            jobs.append(((r, c), np.flatnonzero(inside)))
            done |= inside
    if not done.all():
        raise DataError("pixel embedding: some sampled pixels lie outside every tile")
    out: np.ndarray | None = None
    for start in range(0, len(jobs), batch):
        part = jobs[start:start + batch]
        x = torch.from_numpy(np.stack([np.ascontiguousarray(image_reader((r, c, tile, tile)))
                                       for (r, c), _ in part]))
        most = max(len(idx) for _, idx in part)
        points = np.empty((len(part), most, 2), dtype=np.int64)
        for j, ((r, c), idx) in enumerate(part):
            at = np.resize(idx, most)  # repeats the tile's pixels to fill the row
            points[j, :, 0], points[j, :, 1] = rows[at] - r, cols[at] - c
        emb = embed_fn(x.float(), torch.from_numpy(points))  # (B, D, P)
        if out is None:
            out = np.empty((len(rows), emb.shape[1]), dtype=np.float32)
        for e, (_, idx) in zip(emb, part):
            out[idx] = e[:, :len(idx)].T.float().cpu().numpy()
    if out is None:
        raise DataError("pixel embedding: no pixel to embed")
    if not np.isfinite(out).all():
        raise DataError("the encoder produced non-finite pixel embeddings (nodata in the "
                        "input?)")
    return out


@register_evaluation("pixel-probe", position=30)
class PixelProbe(Evaluation):
    title = "Pixel probe"
    shown_metrics = ("balanced_accuracy", "macro_f1")
    settings = dict(per_class=200, test_per_class=400, C=1.0, patch_size=64)
    quick = {"per_class": 100, "test_per_class": 200}
    description = ("Per-pixel embeddings (a spectral stem's own, else the last feature map "
                   "upsampled) of up to {per_class} labelled pixels per class from the "
                   "training area and {test_per_class} per class from the test area (seeded "
                   "draw), each embedded in a tile of {patch_size} px that lies wholly inside its area; "
                   "features standardised on the training pixels, logistic regression, C = {C}. "
                   "The test sample is class-balanced, so read balanced accuracy and macro F1. "
                   "Spectral baseline: each pixel's standardised log spectrum, no network.")

    def _draws(self, ctx: Context, seed: int):
        """Per fold: (tiles per scene and part, train draw, test draw), shared by all rows."""
        def build():
            src = ctx.source
            maps, n = src.label_maps(), len(src.classes)
            valid = [s.valid_map() for s in src.scenes]
            t = min([self.patch_size] + [min(s.height, s.width) for s in src.scenes])
            out = []
            for fold in ctx.area_folds(16):
                tiles = {part: [area_tiles(m, t) for m in getattr(fold, part)]
                         for part in ("train", "test")}
                tr = sample_pixels(maps, tiles["train"], t, self.per_class, seed, valid, n)
                te = sample_pixels(maps, tiles["test"], t, self.test_per_class, seed + 10_000,
                                   valid, n)
                out.append((fold.index, tiles, t, tr, te))
            return out

        return ctx.cached(("pixel-draws", self.patch_size, self.per_class, self.test_per_class,
                           seed), build)

    def _embed(self, ctx, fn, tiles, t, draw) -> np.ndarray:
        scene, rows, cols, _ = draw
        out = None
        for k, s in enumerate(ctx.source.scenes):
            at = np.flatnonzero(scene == k)
            if not len(at):
                continue
            x = embed_pixels(fn, s.read, tiles[k], t, rows[at], cols[at])
            out = np.empty((len(rows), x.shape[1]), np.float32) if out is None else out
            out[at] = x
        return out

    def _probe(self, ctx, name, fn, seed) -> list[dict]:
        out = []
        for fold, tiles, t, tr, te in ctx.track(self._draws(ctx, seed)):
            x_tr = self._embed(ctx, fn, tiles["train"], t, tr)
            x_te = self._embed(ctx, fn, tiles["test"], t, te)
            (res,) = linear_probe(x_tr, tr[3], x_te, te[3], fractions=(1.0,), seeds=(seed,),
                                  class_names=list(ctx.source.classes), C=self.C)
            out += self.rec(self.tables[0], name, seed, fold, "labelled pixels", 1.0,
                            res.metrics, CLASS_METRICS, n_train=res.n_train,
                            min_per_class=res.min_per_class)
        return out

    def baseline(self, ctx: Context, seed: int) -> list[dict]:
        norm = Normalizer(ctx.source.stats()).eval()
        return self._probe(ctx, R.SPECTRAL, lambda x, points: at_points(norm(x), points), seed)

    def run(self, ctx: Context, encoders: Mapping, seed: int) -> list[dict]:
        out = []
        for name, enc in encoders.items():
            fed = self.fed(name, enc, ctx.source.bands).eval().to(ctx.device)

            def fn(x, points, fed=fed):
                return fed.pixel_features(x.to(ctx.device), points).cpu()

            out += self._probe(ctx, name, fn, seed)
        return out
