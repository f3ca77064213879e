"""Torch datasets over scenes: unlabelled random crops, labelled patches, dense label maps.

Samples are dicts in torchgeo's convention ({"image": raw float32 (C, H, W), "label": ...,
"mask": ...}); normalisation happens on the batch, on the device, inside the model, so the
same dataset feeds every method and every evaluation.

Splits on a real scene are spatial: a west block for training and an east block for testing
with a gap between them, because neighbouring patches are nearly copies of each other and a
random split would inflate every score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .readers import SceneStack, check_patch_size

# The eight OSM land-use classes of the sample scene that matter (data.md), in a fixed order so
# label ids mean the same thing in every run.
OSM_CLASSES = ("farm", "meadow", "forest", "residential", "scrub", "water", "wetland", "grass")
IGNORE_INDEX = 255  # unlabelled pixels in dense label maps


class RandomCropDataset(Dataset):
    """Unlabelled random square crops from one or more scenes (pretraining input).

    ``length`` crops per epoch, drawn uniformly over all scenes' valid area; a crop with more
    than ``max_nodata`` share of nodata pixels is redrawn. With a ``region`` (col_start, col_end)
    crops are confined to a block of columns, e.g. the training block of a spatial split.
    """

    def __init__(self, scenes: SceneStack | Sequence[SceneStack], size: int = 32,
                 length: int = 10_000, seed: int | None = None,
                 region: tuple[int, int] | None = None, max_nodata: float = 0.1) -> None:
        self.scenes = [scenes] if isinstance(scenes, SceneStack) else list(scenes)
        if not self.scenes:
            raise DataError("no scenes given to RandomCropDataset; expected at least one")
        if length < 1:
            raise ConfigError(f"crops per epoch must be >= 1, got {length}")
        self.size, self.length, self.seed = size, length, seed
        self.max_nodata = max_nodata
        self.bands = self.scenes[0].bands
        for s in self.scenes:
            if s.bands != self.bands:
                raise DataError(f"{s.path}: bands {s.bands} differ from {self.bands}; all scenes "
                                "of one dataset need the same band list")
            c0, c1 = region if region else (0, s.width)
            check_patch_size(size, s.height, c1 - c0, f"scene {Path(s.path).name}"
                             + (f" region cols {c0}-{c1}" if region else ""))
            s.load()
        self.region = region

    def __len__(self) -> int:
        return self.length

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is None:  # fresh crops every epoch; DataLoader seeds workers differently
            return np.random.default_rng()
        return np.random.default_rng((self.seed, index))

    def __getitem__(self, index: int) -> dict:
        rng = self._rng(index)
        for _ in range(20):
            s = self.scenes[rng.integers(len(self.scenes))]
            c0, c1 = self.region if self.region else (0, s.width)
            r = int(rng.integers(0, s.height - self.size + 1))
            c = int(rng.integers(c0, c1 - self.size + 1))
            img = s.read((r, c, self.size, self.size))
            nod = (img == s.nodata).all(axis=0).mean() if s.nodata is not None else 0.0
            if nod <= self.max_nodata and np.isfinite(img).all():
                break
        else:
            raise DataError(f"{s.path}: 20 random {self.size}px crops were all mostly nodata; "
                            "is the scene empty?")
        return {"image": torch.from_numpy(np.ascontiguousarray(img))}


def rasterize_labels(scene: SceneStack, polygons: str | Path, column: str = "fclass",
                     classes: Sequence[str] = OSM_CLASSES) -> np.ndarray:
    """Burn labelled polygons onto the scene grid: (H, W) uint8, class i -> i, else IGNORE_INDEX.

    Smaller polygons are burnt last so that a pond inside a forest keeps its own class.
    Polygons of other classes are ignored; polygons on another CRS are reprojected.
    """
    import geopandas as gpd
    from rasterio import features

    path = Path(polygons)
    try:
        gdf = gpd.read_file(path)
    except Exception as e:  # pyogrio raises several types; any of them means unreadable
        raise DataError(f"{path}: cannot read polygons ({str(e).splitlines()[0][:160]}); "
                        "expected a GeoPackage or other vector file") from None
    if column not in gdf.columns:
        raise DataError(f"{path}: no attribute {column!r}; columns are "
                        f"{', '.join(map(str, gdf.columns))}")
    if gdf.crs is not None and scene.crs is not None and gdf.crs != scene.crs:
        gdf = gdf.to_crs(scene.crs)
    gdf = gdf[gdf[column].isin(classes)]
    if gdf.empty:
        raise DataError(f"{path}: no polygon has a {column} among {', '.join(classes)}")
    gdf = gdf.assign(_area=gdf.geometry.area).sort_values("_area", ascending=False)
    ids = {c: i for i, c in enumerate(classes)}
    shapes = ((geom, ids[c]) for geom, c in zip(gdf.geometry, gdf[column]))
    return features.rasterize(shapes, out_shape=(scene.height, scene.width),
                              transform=scene.transform, fill=IGNORE_INDEX, dtype="uint8")


@dataclass(frozen=True)
class SpatialSplit:
    """West block for training, east block for testing, ``gap`` px apart.

    A patch belongs to a block only if it lies wholly inside it, so no patch straddles the
    border and no training pixel is within ``gap`` px of a test pixel.
    """

    train_fraction: float = 0.6
    gap: int = 16
    # "east" mirrors the split (train on the east block, test on the west): the cross-region
    # check of a model pretrained on the west block only.
    train_side: str = "west"

    def __post_init__(self) -> None:
        if not 0 < self.train_fraction < 1:
            raise ConfigError(f"train_fraction must be in (0, 1), got {self.train_fraction}")
        if self.gap < 0:
            raise ConfigError(f"split gap must be >= 0 px, got {self.gap}")
        if self.train_side not in ("west", "east"):
            raise ConfigError(f"train_side must be 'west' or 'east', got {self.train_side!r}")

    def border(self, width: int) -> int:
        b = int(round(width * self.train_fraction))
        return b if self.train_side == "west" else width - b

    def columns(self, split: str, width: int) -> tuple[int, int]:
        """The column range [start, end) of a block."""
        b = self.border(width)
        if split not in ("train", "test"):
            raise ConfigError(f"unknown split {split!r}; expected 'train' or 'test'")
        if self.train_side == "east":
            return (b, width) if split == "train" else (0, max(b - self.gap, 0))
        if split == "train":
            return 0, b
        return min(b + self.gap, width), width


def patch_grid(height: int, width: int, size: int, cols: tuple[int, int]) -> list[tuple[int, int]]:
    """Top-left corners of non-overlapping ``size`` patches wholly inside a column block."""
    c0, c1 = cols
    return [(r, c) for r in range(0, height - size + 1, size)
            for c in range(c0, c1 - size + 1, size)]


class LabelledPatches(Dataset):
    """Patches labelled with the majority class of a label map (patch classification).

    A patch is kept when its majority class covers at least ``min_share`` of ALL its pixels
    (unlabelled pixels count against the share), so weakly labelled patches are dropped.
    """

    def __init__(self, scene: SceneStack, label_map: np.ndarray, *, split: str = "train",
                 size: int = 16, min_share: float = 0.8, spatial_split: SpatialSplit | None = None,
                 classes: Sequence[str] = OSM_CLASSES) -> None:
        if label_map.shape != (scene.height, scene.width):
            raise DataError(f"label map of shape {label_map.shape} does not match the scene grid "
                            f"{(scene.height, scene.width)} of {scene.path}")
        if not 0 < min_share <= 1:
            raise ConfigError(f"min_share must be in (0, 1], got {min_share}")
        self.scene, self.size, self.classes = scene, size, tuple(classes)
        self.split = spatial_split or SpatialSplit(gap=size)
        cols = self.split.columns(split, scene.width)
        check_patch_size(size, scene.height, max(cols[1] - cols[0], 0),
                         f"the {split} block of {Path(scene.path).name}")
        scene.load()
        n = len(self.classes)
        self.corners, labels = [], []
        for r, c in patch_grid(scene.height, scene.width, size, cols):
            lab = label_map[r:r + size, c:c + size].ravel()
            counts = np.bincount(lab[lab < n], minlength=n)
            k = int(counts.argmax())
            if counts[k] >= min_share * lab.size and scene.valid_mask((r, c, size, size)).all():
                self.corners.append((r, c))
                labels.append(k)
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) == 0:
            raise DataError(f"no {size}px patch in the {split} block has a class covering "
                            f">= {min_share:.0%} of it; lower min_share or the patch size")

    @property
    def bands(self) -> list[str]:
        return self.scene.bands

    def __len__(self) -> int:
        return len(self.corners)

    def __getitem__(self, i: int) -> dict:
        r, c = self.corners[i]
        img = self.scene.read((r, c, self.size, self.size))
        return {"image": torch.from_numpy(np.ascontiguousarray(img)),
                "label": int(self.labels[i])}

    def images(self) -> np.ndarray:
        """All patches as one raw array (N, C, size, size), for baselines that need no model."""
        return np.stack([self.scene.read((r, c, self.size, self.size)) for r, c in self.corners])

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(k) for name, k in zip(self.classes, counts)}


class DenseLabelTiles(Dataset):
    """Tiles of image + per-pixel label mask for segmentation (IGNORE_INDEX = unlabelled).

    ``num_classes`` (default: the OSM classes) declares the valid ids 0..num_classes-1; any
    other id than IGNORE_INDEX in the label map is an error rather than a silent extra class.
    """

    def __init__(self, scene: SceneStack, label_map: np.ndarray, *, split: str = "train",
                 size: int = 64, spatial_split: SpatialSplit | None = None,
                 min_labelled: float = 0.0, num_classes: int | None = len(OSM_CLASSES)) -> None:
        check_label_map(label_map, (scene.height, scene.width), num_classes,
                        where=f"the label map of {Path(scene.path).name}")
        self.scene, self.label_map, self.size = scene, label_map, size
        self.split = spatial_split or SpatialSplit(gap=size)
        cols = self.split.columns(split, scene.width)
        check_patch_size(size, scene.height, max(cols[1] - cols[0], 0),
                         f"the {split} block of {Path(scene.path).name}")
        scene.load()
        self.corners = [
            (r, c) for r, c in patch_grid(scene.height, scene.width, size, cols)
            if (label_map[r:r + size, c:c + size] != IGNORE_INDEX).mean() >= min_labelled
        ]
        if not self.corners:
            raise DataError(f"no {size}px tile of the {split} block of {Path(scene.path).name} "
                            f"has >= {min_labelled:.0%} labelled pixels")

    def __len__(self) -> int:
        return len(self.corners)

    def __getitem__(self, i: int) -> dict:
        r, c = self.corners[i]
        img = self.scene.read((r, c, self.size, self.size))
        mask = self.label_map[r:r + self.size, c:c + self.size].astype(np.int64)
        return {"image": torch.from_numpy(np.ascontiguousarray(img)),
                "mask": torch.from_numpy(mask)}

    def labelled_counts(self) -> np.ndarray:
        """Labelled pixels per tile, in tile order."""
        s = self.size
        return np.array([(self.label_map[r:r + s, c:c + s] != IGNORE_INDEX).sum()
                         for r, c in self.corners], dtype=np.int64)

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
