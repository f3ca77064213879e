"""Torch datasets over scenes: unlabelled random crops, labelled patches, dense label maps.

Samples are dicts in torchgeo's convention ({"image": raw float32 (C, H, W), "label": ...,
"mask": ...}); normalisation happens on the batch, on the device, inside the model, so the
same dataset feeds every method and every evaluation.

Splits on a real scene are spatial (data/splits.py), because neighbouring patches are nearly
copies of each other and a random split would inflate every score. A patch or tile belongs to
a fold's train or test set only if it lies wholly inside that area.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .readers import SceneStack, check_patch_size
from .splits import SpatialSplit, inside  # noqa: F401  (SpatialSplit: its old home)

# The eight OSM land-use classes of the sample scene that matter, in a fixed order so
# label ids mean the same thing in every run.
OSM_CLASSES = ("farm", "meadow", "forest", "residential", "scrub", "water", "wetland", "grass")
IGNORE_INDEX = 255  # unlabelled pixels in dense label maps


class RandomCropDataset(Dataset):
    """Unlabelled random square crops from one or more scenes (pretraining input).

    ``length`` crops per epoch, drawn uniformly over all scenes. A pixel is invalid when ANY
    band is nodata or not finite; a crop with more than ``max_nodata`` share of invalid pixels
    is redrawn, and the invalid pixels of a kept crop are filled with the crop's mean of that
    band (so a -11 sigma nodata value never reaches a network). ``allowed`` (one bool (H, W)
    per scene, or None) confines crops to wholly inside it: pretraining's exclusion of the
    test areas. ``region`` (col_start, col_end) confines them to a block of columns.
    """

    def __init__(self, scenes: SceneStack | Sequence[SceneStack], size: int = 32,
                 length: int = 10_000, seed: int | None = None,
                 region: tuple[int, int] | None = None, max_nodata: float = 0.1,
                 allowed: Sequence[np.ndarray | None] | None = None,
                 memory_limit: int = 2 << 30) -> None:
        self.scenes = [scenes] if isinstance(scenes, SceneStack) else list(scenes)
        if not self.scenes:
            raise DataError("no scenes given to RandomCropDataset; expected at least one")
        if length < 1:
            raise ConfigError(f"crops per epoch must be >= 1, got {length}")
        self.size, self.length, self.seed = size, length, seed
        self.max_nodata = max_nodata
        self.bands = self.scenes[0].bands
        self.region = region
        allowed = list(allowed) if allowed is not None else [None] * len(self.scenes)
        self._corners: list[np.ndarray | None] = []
        loaded = 0
        for s, a in zip(self.scenes, allowed):
            if s.bands != self.bands:
                raise DataError(f"{s.path}: bands {s.bands} differ from {self.bands}; all scenes "
                                "of one dataset need the same band list")
            c0, c1 = region if region else (0, s.width)
            if len(self.scenes) == 1 or a is None:
                check_patch_size(size, s.height, c1 - c0, f"scene {Path(s.path).name}"
                                 + (f" region cols {c0}-{c1}" if region else ""))
            if size > min(s.height, c1 - c0):
                self._corners.append(np.empty(0, np.int64))
            elif a is not None:
                ok = crop_corners(a, size)
                if region:
                    ok = ok[(ok[:, 1] >= c0) & (ok[:, 1] <= c1 - size)]
                self._corners.append(ok)
            else:
                self._corners.append(None)
            # scenes in memory while they fit in memory_limit (all of them together), the
            # others read by window: a folder of many large scenes must not fill the RAM
            if s._array is None and s.nbytes <= memory_limit - loaded:
                s.load()
            loaded += s.nbytes if s._array is not None else 0
        self._weights = np.array([
            (len(k) if k is not None else (s.height - size + 1) * (
                (region[1] - region[0] if region else s.width) - size + 1))
            for s, k in zip(self.scenes, self._corners)], dtype=float)
        if self._weights.sum() <= 0:
            raise DataError(f"no {size} px crop fits in the pretraining area of "
                            f"{', '.join(Path(s.path).name for s in self.scenes)} (test areas "
                            "excluded); pretrain with --pretrain-on-test-areas, a smaller "
                            "--crop-size, or a split that leaves more imagery (--split "
                            "kfold:eval_share=0.3)")
        self._weights /= self._weights.sum()

    def __len__(self) -> int:
        return self.length

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is None:  # fresh crops every epoch; DataLoader seeds workers differently
            return np.random.default_rng()
        return np.random.default_rng((self.seed, index))

    def _corner(self, rng, i: int) -> tuple[int, int]:
        s, k = self.scenes[i], self._corners[i]
        if k is not None:
            r, c = k[rng.integers(len(k))]
            return int(r), int(c)
        c0, c1 = self.region if self.region else (0, s.width)
        return (int(rng.integers(0, s.height - self.size + 1)),
                int(rng.integers(c0, c1 - self.size + 1)))

    def __getitem__(self, index: int) -> dict:
        rng = self._rng(index)
        worst = 1.0
        for _ in range(50):
            i = int(rng.choice(len(self.scenes), p=self._weights))
            s = self.scenes[i]
            r, c = self._corner(rng, i)
            img = s.read((r, c, self.size, self.size))
            bad = s.invalid(img)
            share = float(bad.mean())
            worst = min(worst, share)
            if share <= self.max_nodata:
                return {"image": torch.from_numpy(fill_invalid(img, bad))}
        raise DataError(f"{s.path}: 50 random {self.size} px crops all held more than "
                        f"{self.max_nodata:.0%} invalid pixels (nodata in any band; best "
                        f"{worst:.0%}); is the scene mostly empty, or its nodata value wrong "
                        "(--nodata)?")


def crop_corners(allowed: np.ndarray, size: int, max_pixels: int = 16_000_000) -> np.ndarray:
    """(N, 2) int32 top-left corners of ``size`` px windows wholly inside ``allowed``. Scenes
    larger than ``max_pixels`` are checked on a coarser grid (whole cells only, so a corner is
    never outside), which keeps the table small for a 10980 x 10980 tile."""
    h, w = allowed.shape
    step = max(1, int(np.ceil(np.sqrt(h * w / max_pixels))))
    if step > 1:
        hh, ww = h // step, w // step
        allowed = allowed[:hh * step, :ww * step].reshape(hh, step, ww, step).all(axis=(1, 3))
        size = -(-size // step) + 1  # cells a window at any offset inside a cell may touch
    ok = inside(allowed, size)
    rc = np.argwhere(ok).astype(np.int32)
    return rc * step


def fill_invalid(img: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """The crop with its invalid pixels set, band by band, to the mean of its valid ones."""
    img = np.ascontiguousarray(img, dtype=np.float32)
    if not bad.any():
        return img
    img = img.copy()
    good = ~bad
    for b in range(img.shape[0]):
        v = img[b][good & np.isfinite(img[b])]
        img[b][bad] = float(v.mean()) if v.size else 0.0
    return img


def patch_grid(height: int, width: int, size: int, cols: tuple[int, int]) -> list[tuple[int, int]]:
    """Top-left corners of non-overlapping ``size`` patches wholly inside a column block."""
    c0, c1 = cols
    return [(r, c) for r in range(0, height - size + 1, size)
            for c in range(c0, c1 - size + 1, size)]


class LabelledPatches(Dataset):
    """Patches of one or more scenes with a class label each (patch classification).

    ``items``: (scene index, row, col, label) of every patch; ``scenes`` the SceneStacks they
    index. Built by the data source (sources.SceneSource.folds), which decides which patches
    a fold trains and tests on. The old form ``LabelledPatches(scene, label_map, split=...,
    size=..., min_share=..., spatial_split=...)`` still builds one block of a west/east split.
    """

    def __init__(self, scene, label_map=None, *, split: str = "train", size: int = 16,
                 min_share: float = 0.8, spatial_split: SpatialSplit | None = None,
                 classes: Sequence[str] = OSM_CLASSES, items=None) -> None:
        self.scenes = list(scene) if isinstance(scene, (list, tuple)) else [scene]
        self.size, self.classes = size, tuple(classes)
        if items is None:  # the legacy single-scene west/east block
            sc = self.scenes[0]
            if label_map.shape != (sc.height, sc.width):
                raise DataError(f"label map of shape {label_map.shape} does not match the "
                                f"scene grid {(sc.height, sc.width)} of {sc.path}")
            sp = spatial_split or SpatialSplit(gap=size)
            fold = sp.folds(sc.height, sc.width)[0]
            area = fold.train if split == "train" else fold.test
            c0, c1 = sp.columns(split, sc.width)
            check_patch_size(size, sc.height, max(c1 - c0, 0),
                             f"the {split} block of {Path(sc.path).name}")
            cands = majority_patches(sc, label_map, size, min_share, len(self.classes))
            ok = inside(area, size)
            items = [(0, r, c, k) for r, c, k in cands if ok[r, c]]
            if not items:
                raise DataError(f"no {size}px patch in the {split} block has a class covering "
                                f">= {min_share:.0%} of it; lower --min-share or "
                                "--patch-size")
        self.items = [tuple(int(v) for v in it) for it in items]
        self.labels = np.asarray([it[3] for it in self.items], dtype=np.int64)

    @property
    def scene(self) -> SceneStack:
        return self.scenes[0]

    @property
    def corners(self) -> list[tuple[int, int]]:
        return [(r, c) for _, r, c, _ in self.items]

    @property
    def bands(self) -> list[str]:
        return self.scenes[0].bands

    def __len__(self) -> int:
        return len(self.items)

    def _read(self, i: int) -> np.ndarray:
        s, r, c, _ = self.items[i]
        sc = self.scenes[s]
        img = sc.read((r, c, self.size, self.size))
        return fill_invalid(img, sc.invalid(img))

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.from_numpy(self._read(i)), "label": int(self.labels[i])}

    def images(self) -> np.ndarray:
        """All patches as one raw array (N, C, size, size), for baselines that need no model."""
        if not self.items:
            return np.zeros((0, len(self.bands), self.size, self.size), np.float32)
        return np.stack([self._read(i) for i in range(len(self.items))])

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(k) for name, k in zip(self.classes, counts)}


def majority_patches(scene: SceneStack, label_map: np.ndarray, size: int, min_share: float,
                     n_classes: int, valid: np.ndarray | None = None,
                     max_invalid: float = 0.0) -> list[tuple[int, int, int]]:
    """(row, col, class) of the non-overlapping ``size`` px grid patches whose majority class
    covers at least ``min_share`` of ALL their pixels (unlabelled pixels count against it) and
    whose share of invalid pixels (nodata in any band) is at most ``max_invalid``."""
    if not 0 < min_share <= 1:
        raise ConfigError(f"--min-share must be in (0, 1], got {min_share}")
    if valid is None:
        valid = scene.valid_map()
    out = []
    for r in range(0, scene.height - size + 1, size):
        for c in range(0, scene.width - size + 1, size):
            lab = label_map[r:r + size, c:c + size].ravel()
            counts = np.bincount(lab[lab < n_classes], minlength=n_classes)
            k = int(counts.argmax()) if counts.size else 0
            if counts.size and counts[k] >= min_share * lab.size and \
                    1.0 - valid[r:r + size, c:c + size].mean() <= max_invalid:
                out.append((r, c, k))
    return out


class DenseLabelTiles(Dataset):
    """Tiles of image + per-pixel label mask for segmentation (IGNORE_INDEX = unlabelled).

    ``items``: (scene index, row, col) of every tile of ``scenes`` with their ``label_maps``;
    built by the data source (sources.SceneSource.dense_folds). The old form
    ``DenseLabelTiles(scene, label_map, split=..., size=..., spatial_split=...)`` still builds
    one block of a west/east split. ``num_classes`` declares the valid ids 0..num_classes-1;
    any other id than IGNORE_INDEX is an error rather than a silent extra class.
    """

    def __init__(self, scene, label_map, *, split: str = "train", size: int = 64,
                 spatial_split: SpatialSplit | None = None, min_labelled: float = 0.0,
                 num_classes: int | None = len(OSM_CLASSES), items=None) -> None:
        self.scenes = list(scene) if isinstance(scene, (list, tuple)) else [scene]
        self.label_maps = list(label_map) if isinstance(label_map, (list, tuple)) else [label_map]
        for sc, lm in zip(self.scenes, self.label_maps):
            check_label_map(lm, (sc.height, sc.width), num_classes,
                            where=f"the label map of {Path(sc.path).name}")
        self.size = size
        if items is None:
            sc, lm = self.scenes[0], self.label_maps[0]
            sp = spatial_split or SpatialSplit(gap=size)
            fold = sp.folds(sc.height, sc.width)[0]
            area = fold.train if split == "train" else fold.test
            c0, c1 = sp.columns(split, sc.width)
            check_patch_size(size, sc.height, max(c1 - c0, 0),
                             f"the {split} block of {Path(sc.path).name}")
            items = tile_items(sc, lm, 0, area, size, min_labelled)
            if not items:
                raise DataError(f"no {size}px tile of the {split} block of "
                                f"{Path(sc.path).name} has >= {min_labelled:.0%} labelled "
                                "pixels")
        self.items = [tuple(int(v) for v in it) for it in items]

    @property
    def scene(self) -> SceneStack:
        return self.scenes[0]

    @property
    def label_map(self) -> np.ndarray:
        return self.label_maps[0]

    @property
    def corners(self) -> list[tuple[int, int]]:
        return [(r, c) for _, r, c in self.items]

    @property
    def bands(self) -> list[str]:
        return self.scenes[0].bands

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        s, r, c = self.items[i]
        sc = self.scenes[s]
        img = sc.read((r, c, self.size, self.size))
        mask = self.label_maps[s][r:r + self.size, c:c + self.size].astype(np.int64)
        return {"image": torch.from_numpy(fill_invalid(img, sc.invalid(img))),
                "mask": torch.from_numpy(mask)}

    def labelled_counts(self) -> np.ndarray:
        """Labelled pixels per tile, in tile order."""
        s = self.size
        return np.array([(self.label_maps[k][r:r + s, c:c + s] != IGNORE_INDEX).sum()
                         for k, r, c in self.items], dtype=np.int64)

    def fraction_indices(self, fraction: float, seed: int) -> np.ndarray:
        """Whole tiles, in a seeded random order, until they hold ``fraction`` of the block's
        labelled pixels (at least one labelled tile). Sorted tile indices.

        Tiles rather than pixels: a label budget buys annotated areas, and scattered single
        pixels would leak neighbourhood labels a real 1% annotation never has.
        """
        if not 0 < fraction <= 1:
            raise ConfigError(f"label fraction must be in (0, 1], got {fraction}")
        counts = self.labelled_counts()
        labelled = np.flatnonzero(counts > 0)
        if fraction >= 1:
            return labelled
        order = np.random.default_rng(seed).permutation(labelled)
        need = fraction * counts.sum()
        k = int(np.searchsorted(np.cumsum(counts[order]), need) + 1)
        return np.sort(order[:max(1, min(k, len(order)))])


def tile_items(scene: SceneStack, label_map: np.ndarray, index: int, area: np.ndarray,
               size: int, min_labelled: float = 0.0) -> list[tuple[int, int, int]]:
    """(scene index, row, col) of the non-overlapping ``size`` px tiles wholly inside
    ``area`` with at least ``min_labelled`` share of labelled pixels."""
    ok = inside(area, size)
    out = []
    for r in range(0, scene.height - size + 1, size):
        for c in range(0, scene.width - size + 1, size):
            if not ok[r, c]:
                continue
            lab = (label_map[r:r + size, c:c + size] != IGNORE_INDEX).mean()
            if lab >= min_labelled:
                out.append((index, r, c))
    return out

def check_label_map(label_map: np.ndarray, grid: tuple[int, int], num_classes: int | None,
                    where: str = "label map") -> None:
    """DataError unless the map is 2-D on ``grid`` with ids in [0, num_classes) or IGNORE_INDEX."""
    shape = tuple(np.shape(label_map))
    if shape != tuple(grid):
        raise DataError(f"{where}: shape {shape} does not match the image grid {tuple(grid)}; "
                        "rasterise the labels onto the image's grid")
    if num_classes is None:
        return
    ids = np.unique(label_map)
    bad = [int(v) for v in ids if v != IGNORE_INDEX and not 0 <= v < num_classes]
    if bad:
        raise DataError(f"{where}: class ids {bad[:10]} are outside the declared classes "
                        f"0..{num_classes - 1} (and {IGNORE_INDEX} = unlabelled)")
