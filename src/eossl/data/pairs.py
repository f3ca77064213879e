"""Co-registered optical/radar (Sentinel-2 + Sentinel-1) patch pairs as one data source.

RS-BYOL makes its views from the bands of one location, optical or
radar, so it needs each S2 patch stacked with its S1 partner on one 10 m grid. This module
turns two on-disk layouts into such stacks (S2 bands first, then ``VV``, ``VH``):

- ``bigearthnet-pairs``: BigEarthNet v2 (reBEN LMDB); by default the real 24-pair sample shipped
  with configilm, or the full release at ``--root ROOT``. S2 20/60 m bands are
  resampled to the 10 m grid (120 px); S1 must already lie on it.
- ``sen12ms-pairs``: SEN12MS in torchgeo's on-disk layout at ``--root ROOT``
  (``ROIs1158_spring/s1_1/ROIs1158_spring_s1_1_p30.tif`` next to ``.../s2_1/..._s2_1_p30.tif``
  and ``train_list.txt`` / ``test_list.txt``); every band is already at 10 m, 256 px.

A pair whose S1 and S2 grids differ raises DataError naming the patch: resampling it would
silently pair radar and optical pixels of different ground.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..bands import SENTINEL1, SENTINEL2_L1C, band_indices
from ..errors import ConfigError, DataError
from . import samples
from .readers import check_patch_size
from .sources import register_source
from .stats import BandStats, StatsAccumulator, default_log_flags

S1_BANDS: tuple[str, ...] = tuple(SENTINEL1.band_names)  # VV, VH
# torchgeo's SEN12MS.band_names order: the s1 file holds VV, VH; the s2 file all 13 L1C bands.
SEN12MS_S2_BANDS: tuple[str, ...] = tuple(SENTINEL2_L1C.band_names)
SEN12MS_SPLITS = ("train", "test")
SEN12MS_SEASONS = ("ROIs1158_spring", "ROIs1868_summer", "ROIs1970_fall", "ROIs2017_winter")
# Patch datasets up to this size are held in memory (the 24-pair sample: 19 MB).
PRELOAD_MAX_PATCHES = 512


# ------------------------------------------------------------------------------ SEN12MS


def sen12ms_path(root: Path, list_name: str, sensor: str) -> Path:
    """Where torchgeo's SEN12MS reads ``sensor`` ('s1', 's2', 'lc') of a split-list entry.

    A list entry is ``ROIs1158_spring_lc_1_p30.tif``; its third field is replaced by the sensor:
    ``ROOT/ROIs1158_spring/s1_1/ROIs1158_spring_s1_1_p30.tif`` (torchgeo 0.8.1,
    SEN12MS._load_raster).
    """
    parts = list_name.split("_")
    if len(parts) != 5:
        raise DataError(f"SEN12MS list entry {list_name!r} is not of the form "
                        "ROIsXXXX_season_lc_SCENE_pPATCH.tif")
    parts[2] = sensor
    return root / f"{parts[0]}_{parts[1]}" / f"{parts[2]}_{parts[3]}" / "_".join(parts)


class SEN12MSPairs(Dataset):
    """SEN12MS S1/S2 pairs from torchgeo's on-disk layout, stacked S2 bands then VV, VH.

    Items: ``{"image": float32 (C, 256, 256) raw values, "patch_id": list entry}``.

    Written with rasterio instead of wrapping ``torchgeo.datasets.SEN12MS`` because that class
    needs all four season folders and both split lists before it opens anything, and stacks the
    two files with ``torch.cat``, so a pair of different sizes fails without naming the patch;
    the paths follow torchgeo's rule exactly (see :func:`sen12ms_path`, tested against it).
    """

    def __init__(self, root: str | os.PathLike, split: str | None = "train",
                 bands: Sequence[str] | None = None) -> None:
        self.root = Path(root)
        if split is not None and split not in SEN12MS_SPLITS:
            raise ConfigError(f"unknown SEN12MS split {split!r}; expected train, test or None")
        all_bands = SEN12MS_S2_BANDS + S1_BANDS
        wanted = list(bands) if bands is not None else list(all_bands)
        idx = band_indices(all_bands, wanted, source="SEN12MS (Sentinel-2 L1C + S1)")
        names = [all_bands[i] for i in idx]
        if len(set(names)) != len(names):
            raise ConfigError(f"bands lists a band twice: {names}")
        self.bands = names
        self._s2 = [SEN12MS_S2_BANDS.index(b) for b in names if b in SEN12MS_S2_BANDS]
        self._s1 = [S1_BANDS.index(b) for b in names if b in S1_BANDS]
        self.ids: list[str] = []
        for s in ([split] if split else SEN12MS_SPLITS):
            lst = self.root / f"{s}_list.txt"
            if not lst.is_file():
                raise DataError(f"SEN12MS split list {lst} does not exist (torchgeo layout: "
                                f"ROOT/{s}_list.txt next to the ROIs*_season folders)")
            self.ids += [ln.strip() for ln in lst.read_text().splitlines() if ln.strip()]
        if not self.ids:
            raise DataError(f"no SEN12MS patches listed for split={split!r} under {self.root}")

    def __len__(self) -> int:
        return len(self.ids)

    def _read(self, name: str, sensor: str) -> np.ndarray:
        import rasterio

        path = sen12ms_path(self.root, name, sensor)
        try:
            with rasterio.open(path) as f:
                return f.read().astype(np.float32)
        except rasterio.errors.RasterioIOError as e:
            raise DataError(f"SEN12MS patch {name}: cannot read {path}: {e}") from None

    def __getitem__(self, i: int) -> dict:
        name = self.ids[i]
        s2 = self._read(name, "s2") if self._s2 else None
        s1 = self._read(name, "s1") if self._s1 else None
        if s2 is not None and s2.shape[0] != len(SEN12MS_S2_BANDS):
            raise DataError(f"SEN12MS patch {name}: the s2 file has {s2.shape[0]} bands, "
                            f"expected {len(SEN12MS_S2_BANDS)} ({', '.join(SEN12MS_S2_BANDS)})")
        if s1 is not None and s1.shape[0] != len(S1_BANDS):
            raise DataError(f"SEN12MS patch {name}: the s1 file has {s1.shape[0]} bands, "
                            "expected 2 (VV, VH)")
        if s1 is not None and s2 is not None and s1.shape[1:] != s2.shape[1:]:
            raise DataError(f"SAR/optical pair of SEN12MS patch {name} does not match: s1 is "
                            f"{s1.shape[1]}x{s1.shape[2]}, s2 is {s2.shape[1]}x{s2.shape[2]}; "
                            "a pair must be co-registered on one grid")
        by_name = {}
        if s2 is not None:
            by_name.update({SEN12MS_S2_BANDS[j]: s2[j] for j in self._s2})
        if s1 is not None:
            by_name.update({S1_BANDS[j]: s1[j] for j in self._s1})
        image = torch.from_numpy(np.stack([by_name[b] for b in self.bands]))
        return {"image": image, "patch_id": name}


# ------------------------------------------------------------------------------ source


class PairCrops(Dataset):
    """Random square crops of co-registered pair stacks: RS-BYOL's pretraining input.

    ``length`` crops per epoch; each picks a patch and a position at random (seeded per index
    when ``seed`` is given, else fresh every epoch). Samples: ``{"image": raw (C, size, size)}``.
    """

    def __init__(self, source: "PairSource", size: int, length: int,
                 seed: int | None = None) -> None:
        if length < 1:
            raise ConfigError(f"crops per epoch must be >= 1, got {length}")
        h, w = source.patch_shape
        check_patch_size(size, h, w, f"the {source.name} patches")
        self.source, self.size, self.length, self.seed = source, size, length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"crop {index} out of range for {self.length}")
        rng = np.random.default_rng() if self.seed is None else \
            np.random.default_rng((self.seed, index))
        img = self.source.image(int(rng.integers(len(self.source))))
        h, w = img.shape[-2:]
        r = int(rng.integers(0, h - self.size + 1))
        c = int(rng.integers(0, w - self.size + 1))
        return {"image": img[:, r:r + self.size, c:c + self.size].clone()}


class PairSource:
    """A pretraining source over co-registered S2 + S1 stacks (no labels: ``polygons`` None).

    ``dataset`` yields ``{"image": raw (C, H, W), "patch_id": str}`` in ``bands`` order. Small
    datasets are read once into memory; large ones are read per crop.
    """

    polygons = None
    cache = None

    def __init__(self, name: str, dataset, bands: Sequence[str]) -> None:
        self.name = name
        self.dataset = dataset
        self.bands = list(bands)
        if len(dataset) == 0:
            raise DataError(f"data source {name!r} holds no patches")
        self._images: list[torch.Tensor] | None = None
        if len(dataset) <= PRELOAD_MAX_PATCHES:
            self._images = [self._read(i) for i in range(len(dataset))]
        first = self.image(0)
        self.patch_shape = tuple(first.shape[-2:])
        self._stats: BandStats | None = None

    def _read(self, i: int) -> torch.Tensor:
        item = self.dataset[i]
        img = item["image"].float()
        if img.shape[0] != len(self.bands):
            raise DataError(f"{self.name}: patch {item.get('patch_id', i)} has {img.shape[0]} "
                            f"bands, expected {len(self.bands)} ({', '.join(self.bands)})")
        if not torch.isfinite(img).all():
            raise DataError(f"{self.name}: patch {item.get('patch_id', i)} holds NaN or "
                            "infinite values")
        return img

    def __len__(self) -> int:
        return len(self.dataset)

    def image(self, i: int) -> torch.Tensor:
        """Raw (C, H, W) stack of patch ``i``."""
        return self._images[i] if self._images is not None else self._read(i)

    def stats(self, max_patches: int = 2000) -> BandStats:
        """Per-band statistics (log reflectance for S2, linear dB for S1) over the patches, or
        an even subsample of ``max_patches`` of them."""
        if self._stats is None:
            n = len(self)
            idx = np.unique(np.linspace(0, n - 1, min(n, max_patches)).round().astype(int))
            acc = StatsAccumulator(self.bands, default_log_flags(self.bands))
            for i in idx:
                acc.update(self.image(int(i)).numpy())
            self._stats = acc.finish()
        return self._stats

    def crops(self, size: int, length: int, seed: int | None = None) -> PairCrops:
        return PairCrops(self, size, length, seed)

    def __repr__(self) -> str:
        return (f"PairSource({self.name!r}, {len(self)} patches of {self.patch_shape}, "
                f"bands={self.bands})")


def bigearthnet_pairs(root: str | os.PathLike, bands=None, split: str | None = None,
                      name: str = "bigearthnet-pairs") -> PairSource:
    """BigEarthNet v2 S2 L2A (12 bands, resampled to 10 m) + S1 VV/VH stacks of ``root``."""
    from .bigearthnet import S2_BANDS, BigEarthNetV2

    all_bands = list(S2_BANDS) + list(S1_BANDS)
    if bands is None:
        names = all_bands
    else:
        wanted = [b for b in bands.split(",") if b.strip()] if isinstance(bands, str) else bands
        names = [all_bands[i] for i in band_indices(all_bands, wanted,
                                                    source="BigEarthNet v2 pairs")]
    s2 = [b for b in names if b in S2_BANDS]
    ds = BigEarthNetV2(root, split=split, bands=s2, sar=any(b in S1_BANDS for b in names),
                       size=120)
    order = [ds.band_names.index(b) for b in names]
    return PairSource(name, _Reordered(ds, order), names)


def sen12ms_pairs(root: str | os.PathLike, bands=None, split: str | None = "train",
                  name: str = "sen12ms-pairs") -> PairSource:
    """SEN12MS (torchgeo layout) S2 + S1 stacks. Default bands: the 10 S2 bands at 10-20 m +
    VV, VH (the RS-BYOL pool); pass ``bands`` for others (B01, B09, B10 are there too)."""
    if isinstance(bands, str):
        bands = [b for b in bands.split(",") if b.strip()]
    if bands is None:
        bands = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12", "VV", "VH"]
    ds = SEN12MSPairs(root, split=split, bands=bands)
    return PairSource(name, ds, ds.bands)


class _Reordered(Dataset):
    """Band reordering view of a dataset (BigEarthNetV2 puts S1 last whatever the order)."""

    def __init__(self, ds, order: list[int]) -> None:
        self.ds, self.order = ds, order
        self.identity = order == list(range(len(order)))

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        item = self.ds[i]
        if not self.identity:
            item = dict(item, image=item["image"][self.order])
        return item


@register_source("bigearthnet-pairs")
def _bigearthnet_pairs_source(cache=None, bands=None, root=None) -> PairSource:
    """The real BigEarthNet v2 sample (24 pairs, all splits), or the release at ``--root``
    (its train split)."""
    if root:
        return bigearthnet_pairs(root, bands, split="train")
    return bigearthnet_pairs(samples.bigearthnet_dir(cache), bands, split=None)


@register_source("sen12ms-pairs")
def _sen12ms_pairs_source(cache=None, bands=None, root=None) -> PairSource:
    """The SEN12MS release at ``--root`` (torchgeo's layout) as co-registered S2/S1 pairs
    (its train split)."""
    if not root:
        raise ConfigError("--data sen12ms-pairs needs --root ROOT, the SEN12MS folder (torchgeo "
                          "layout: ROIs*_season folders, train_list.txt, test_list.txt)")
    return sen12ms_pairs(root, bands, split="train")


__all__ = ["PairSource", "PairCrops", "SEN12MSPairs", "bigearthnet_pairs", "sen12ms_pairs",
           "sen12ms_path", "S1_BANDS"]
