"""SeCo's collection procedure (Manas et al. 2021) against any STAC API, into a shard corpus.

The paper sampled Sentinel-2 from Earth Engine; here the scenes come from a STAC API
(pystac-client) and only the patch is read from each cloud-optimised GeoTIFF (rasterio windowed
reads with on-the-fly resampling to the patch grid), so a location costs a few HTTP range
requests, not whole scenes. Per location:

- a city drawn uniformly from the most populous ones, offset by a Gaussian (sigma 50 km);
- a reference date ``reference - U[0, 365) days`` and five dates 12 weeks apart going back;
- in each +-7.5-day window the most recent scene with scene cloud cover below the threshold
  whose patch has no cloud, shadow, cirrus or fill pixel in the mask band;
- if any window has no usable scene, the location is drawn again (a new attempt).

Reproducible and resumable: attempt ``j`` of location ``i`` uses the random stream
``(seed, i, j)`` only, so a location's outcome does not depend on what ran before it; finished
locations are committed to the corpus every ``commit_every`` locations together with the index
of the next location (one atomic write of ``eossl.json``, see data/shards.py). A rerun of the
same command with ``--resume`` continues from there: no duplicates, no gaps.

Network faults (timeouts, connection errors, HTTP 5xx/429) are retried with exponential backoff;
when the retries run out the locations finished so far are committed and a CollectError says
how to resume.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .shards import ShardWriter

# Sentinel-2 L2A on Element 84's Earth Search (COGs on AWS): the 12 L2A bands in SeCo's order and
# the scene classification (SCL) classes that reject a patch: 0 no data, 1 saturated/defective,
# 3 cloud shadow, 8 cloud medium, 9 cloud high, 10 thin cirrus.
PRESETS = {
    "earth-search-s2l2a": {
        "stac_url": "https://earth-search.aws.element84.com/v1",
        "collection": "sentinel-2-l2a",
        "assets": ["coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3",
                   "nir", "nir08", "nir09", "swir16", "swir22"],
        "band_names": ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09",
                       "B11", "B12"],
        "mask_asset": "scl", "mask_bad": [0, 1, 3, 8, 9, 10], "resolution": 10.0,
        "sensor": "sentinel2-l2a",
    },
}
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
# Settings that decide which samples a corpus holds; a resumed run must not change them.
_IDENTITY = ("stac_url", "collection", "assets", "mask_asset", "mask_bad", "patch_px",
             "resolution", "n_dates", "spacing_days", "window_days", "max_scene_cloud",
             "max_patch_bad", "sigma_km", "reference_date", "offset_days", "max_tries", "seed",
             "top_cities", "cities")


class CollectError(DataError):
    """The STAC API or an asset host kept failing; the corpus so far is valid and resumable."""


@dataclass
class CollectConfig:
    stac_url: str
    collection: str
    assets: list[str]
    band_names: list[str] | None = None
    mask_asset: str | None = None
    mask_bad: list[int] = field(default_factory=list)
    patch_px: int = 264              # 2.65 km at 10 m (paper)
    resolution: float = 10.0
    n_dates: int = 5
    spacing_days: int = 84           # 12 weeks
    window_days: float = 7.5
    max_scene_cloud: float = 10.0    # percent, STAC eo:cloud_cover
    max_patch_bad: float = 0.0       # share of masked pixels a patch may hold
    sigma_km: float = 50.0
    reference_date: str = "2021-06-01"
    offset_days: int = 365
    max_tries: int = 50
    seed: int = 0
    cities: str | None = None        # CSV (name, country, lat, lon, population); default: shipped
    top_cities: int = 10_000
    sensor: str | None = None
    commit_every: int = 16
    retries: int = 5
    backoff_s: float = 1.0
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.assets:
            raise ConfigError("collect: name at least one asset (band) to read, e.g. "
                              "--assets red,green,blue")
        if self.band_names is None:
            self.band_names = list(self.assets)
        if len(self.band_names) != len(self.assets):
            raise ConfigError(f"collect: {len(self.band_names)} band names for "
                              f"{len(self.assets)} assets")
        for name in ("patch_px", "n_dates", "max_tries", "commit_every", "retries"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"collect: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("resolution", "window_days"):
            if not float(getattr(self, name)) > 0:
                raise ConfigError(f"collect: {name} must be > 0, got {getattr(self, name)}")
        for name in ("spacing_days", "top_cities"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"collect: {name} must be >= 1, got {getattr(self, name)}")
        if float(self.sigma_km) < 0 or not 0 <= float(self.max_scene_cloud) <= 100:
            raise ConfigError(f"collect: need sigma_km >= 0 and max_scene_cloud in [0, 100] "
                              f"(percent); got {self.sigma_km}, {self.max_scene_cloud}")
        if not 0 <= self.max_patch_bad < 1:
            raise ConfigError(f"collect: max_patch_bad must be in [0, 1), got "
                              f"{self.max_patch_bad}")
        try:
            dt.date.fromisoformat(self.reference_date)
        except ValueError:
            raise ConfigError(f"collect: reference date {self.reference_date!r} is not "
                              "YYYY-MM-DD") from None

    @classmethod
    def preset(cls, name: str, **overrides) -> "CollectConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown collect preset {name!r}; expected one of "
                              f"{', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}})


# ----------------------------------------------------------------------------- cities

def load_cities(path: str | os.PathLike | None = None, top: int | None = None) -> list[dict]:
    """Cities by population, largest first: the shipped list (data/cities.csv) or a user CSV
    with columns name, lat, lon, population (country optional)."""
    if path is None:
        text = resources.files("eossl.data").joinpath("cities.csv").read_text()
        where = "eossl/data/cities.csv"
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"cities file {p} does not exist")
        text, where = p.read_text(), str(p)
    rows = list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))
    need = {"name", "lat", "lon", "population"}
    if not rows or not need <= set(rows[0]):
        raise DataError(f"{where}: expected a CSV with columns {', '.join(sorted(need))}")
    out = []
    for i, r in enumerate(rows):
        try:
            lat, lon, pop = float(r["lat"]), float(r["lon"]), float(r["population"])
        except ValueError:
            raise DataError(f"{where} row {i + 2}: lat/lon/population not numbers") from None
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise DataError(f"{where} row {i + 2}: lat {lat}, lon {lon} out of range")
        out.append({"name": r["name"], "country": r.get("country", ""), "lat": lat, "lon": lon,
                    "population": pop})
    out.sort(key=lambda c: (-c["population"], c["name"]))
    return out[:top] if top else out


# ----------------------------------------------------------------------------- sampling

def _utm_epsg(lat: float, lon: float) -> int:
    zone = int((lon + 180) // 6) % 60 + 1
    return (32600 if lat >= 0 else 32700) + zone


def draw_location(cfg: CollectConfig, cities: list[dict], index: int, attempt: int) -> dict:
    """Location ``index``, attempt ``attempt``: city, Gaussian offset, and the date windows.

    Depends on (seed, index, attempt) only, which is what makes collection resumable.
    """
    rng = np.random.default_rng([cfg.seed, index, attempt])
    city = cities[int(rng.integers(len(cities)))]
    dy, dx = rng.normal(0.0, cfg.sigma_km, size=2)
    lat = float(np.clip(city["lat"] + dy / 111.32, -89.9, 89.9))
    lon = city["lon"] + dx / (111.32 * max(math.cos(math.radians(lat)), 1e-3))
    lon = float((lon + 180) % 360 - 180)
    ref = dt.date.fromisoformat(cfg.reference_date)
    t0 = ref - dt.timedelta(days=float(rng.uniform(0, cfg.offset_days)))
    dates = [t0 - dt.timedelta(days=k * cfg.spacing_days) for k in range(cfg.n_dates)]
    return {"index": index, "attempt": attempt, "city": city["name"], "lat": lat, "lon": lon,
            "dates": [d.isoformat() for d in dates]}


def patch_bbox_wgs84(lat: float, lon: float, size_m: float) -> tuple[list[float], int]:
    """Search bbox (lon/lat) of the square patch centred on (lat, lon), and its UTM EPSG."""
    from pyproj import Transformer

    epsg = _utm_epsg(lat, lon)
    fwd = Transformer.from_crs(4326, epsg, always_xy=True)
    inv = Transformer.from_crs(epsg, 4326, always_xy=True)
    x, y = fwd.transform(lon, lat)
    h = size_m / 2
    xs, ys = inv.transform([x - h, x + h, x + h, x - h], [y - h, y - h, y + h, y + h])
    return [min(xs), min(ys), max(xs), max(ys)], epsg


# ----------------------------------------------------------------------------- STAC access

def _retryable(e: BaseException) -> bool:
    import requests
    from pystac_client.exceptions import APIError

    if isinstance(e, (requests.ConnectionError, requests.Timeout, TimeoutError,
                      ConnectionError)):
        return True
    if isinstance(e, APIError):
        code = getattr(e, "status_code", None)
        return code is None or code in RETRY_STATUS
    return False


def _describe(e: BaseException, limit: int) -> str:
    """'HTTP 503: body' for an API error with a status, else 'ReadTimeout: ...' and the like."""
    code = getattr(e, "status_code", None)
    text = " ".join(str(e).split())[:limit]
    return f"HTTP {code}: {text}" if code is not None else f"{type(e).__name__}: {text}"


class StacSearcher:
    """One STAC API with retries, conformance-aware cloud filtering and per-window search."""

    def __init__(self, cfg: CollectConfig, sleep: Callable[[float], None] = time.sleep) -> None:
        self.cfg, self.sleep = cfg, sleep
        self.client = self.retry(self._open, f"opening {cfg.stac_url}")
        from pystac_client.conformance import ConformanceClasses

        # The CQL2 filter and the query extension both express "eo:cloud_cover < x"; a server
        # with neither (e.g. rustac's memory backend) returns nothing for such searches, so we
        # filter on the client instead.
        if self.client.conforms_to(ConformanceClasses.FILTER):
            self.filter_mode = "filter"
        elif self.client.conforms_to(ConformanceClasses.QUERY):
            self.filter_mode = "query"
        else:
            self.filter_mode = "client"

    def _open(self):
        from pystac_client import Client

        return Client.open(self.cfg.stac_url, timeout=self.cfg.timeout_s)

    def retry(self, fn, what: str):
        last = None
        for k in range(self.cfg.retries):
            try:
                return fn()
            except Exception as e:  # noqa: BLE001 - filtered by _retryable below
                if not _retryable(e):
                    raise CollectError(f"STAC API {self.cfg.stac_url}: {what} failed "
                                       f"({_describe(e, 300)}); not retried: the request "
                                       "itself is refused") from None
                last = e
                if k + 1 < self.cfg.retries:
                    self.sleep(self.cfg.backoff_s * 2 ** k)
        raise CollectError(f"STAC API {self.cfg.stac_url}: {what} failed {self.cfg.retries} "
                           f"times (last: {_describe(last, 200)})")

    def search_kwargs(self, bbox, start: dt.datetime, end: dt.datetime) -> dict:
        kw = {"collections": [self.cfg.collection], "bbox": bbox,
              "datetime": [start.isoformat() + "Z", end.isoformat() + "Z"]}
        if self.filter_mode == "filter":
            kw["filter"] = {"op": "<", "args": [{"property": "eo:cloud_cover"},
                                                self.cfg.max_scene_cloud]}
            kw["filter_lang"] = "cql2-json"
        elif self.filter_mode == "query":
            kw["query"] = {"eo:cloud_cover": {"lt": self.cfg.max_scene_cloud}}
        return kw

    def window_items(self, bbox, centre: dt.date) -> list:
        """Scenes in centre +- window_days under the cloud threshold, most recent first."""
        mid = dt.datetime.combine(centre, dt.time(12))
        half = dt.timedelta(days=self.cfg.window_days)
        kw = self.search_kwargs(bbox, mid - half, mid + half)
        items = self.retry(lambda: list(self.client.search(**kw).items()),
                           f"search {centre.isoformat()} +-{self.cfg.window_days} d")
        keep = []
        for it in items:
            cc = it.properties.get("eo:cloud_cover")
            if cc is None or float(cc) >= self.cfg.max_scene_cloud:
                continue  # also re-checked for server-filtered results: cheap, and exact
            keep.append(it)
        keep.sort(key=lambda it: (it.datetime or dt.datetime.min.replace(tzinfo=dt.timezone.utc),
                                  it.id), reverse=True)
        return keep


def _read_patch(href: str, lat: float, lon: float, size_m: float, px: int, resampling,
                boundless_fill: float | None):
    """Only the patch window of one (cloud-optimised) GeoTIFF, resampled to px x px."""
    import rasterio
    from pyproj import Transformer
    from rasterio.windows import from_bounds

    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR",
                      CPL_VSIL_CURL_ALLOWED_EXTENSIONS=".tif,.tiff,.TIF"):
        with rasterio.open(href) as ds:
            x, y = Transformer.from_crs(4326, ds.crs, always_xy=True).transform(lon, lat)
            h = size_m / 2
            win = from_bounds(x - h, y - h, x + h, y + h, ds.transform)
            fill = ds.nodata if ds.nodata is not None else boundless_fill
            a = ds.read(1, window=win, out_shape=(px, px), resampling=resampling,
                        boundless=True, fill_value=fill if fill is not None else 0)
            return a, ds.nodata


class Collector:
    """Runs SeCo collection into ``out`` (a series corpus), resuming if it holds progress."""

    def __init__(self, cfg: CollectConfig, out: str | os.PathLike,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.cfg, self.out = cfg, Path(out)
        self.sleep = sleep
        self.cities = load_cities(cfg.cities, cfg.top_cities)
        if not self.cities:
            raise ConfigError("collect: the city list is empty")

    def _open_writer(self) -> tuple[ShardWriter, dict]:
        ident = {k: getattr(self.cfg, k) for k in _IDENTITY}
        if (self.out / "eossl.json").is_file():
            w = ShardWriter(self.out, resume=True)
            prog = w.meta.get("progress")
            if prog is None:
                raise ConfigError(f"{self.out} is a shard corpus but not a collection; choose "
                                  "another --out")
            old = prog["config"]
            diff = [k for k in _IDENTITY if json.dumps(old.get(k)) != json.dumps(ident[k])]
            if diff:
                raise ConfigError(f"{self.out} was collected with other settings ("
                                  f"{', '.join(f'{k}: {old.get(k)!r} now {ident[k]!r}' for k in diff)}"
                                  "); resume with the same settings or choose another --out")
            return w, prog
        w = ShardWriter(self.out, self.cfg.band_names, kind="series", sensor=self.cfg.sensor,
                        description=f"SeCo collection from {self.cfg.stac_url} "
                                    f"({self.cfg.collection})")
        prog = {"config": ident, "next_index": 0, "collected": 0, "failed": [],
                "filter_mode": None}
        w.commit(prog)
        return w, prog

    def location(self, searcher: StacSearcher, index: int) -> dict | None:
        """The sample of location ``index`` (first attempt that fills every window), or None."""
        from rasterio.enums import Resampling

        cfg = self.cfg
        size_m = cfg.patch_px * cfg.resolution
        for attempt in range(cfg.max_tries):
            loc = draw_location(cfg, self.cities, index, attempt)
            bbox, _ = patch_bbox_wgs84(loc["lat"], loc["lon"], size_m)
            images, masks, scenes = [], [], []
            for d in loc["dates"]:
                found = None
                for item in searcher.window_items(bbox, dt.date.fromisoformat(d)):
                    got = self._try_item(searcher, item, loc, size_m, Resampling)
                    if got is not None:
                        found = (item, *got)
                        break
                if found is None:
                    break
                item, img, mask = found
                images.append(img)
                masks.append(mask)
                scenes.append({"id": item.id, "datetime": item.datetime.isoformat(),
                               "cloud_cover": item.properties.get("eo:cloud_cover")})
            if len(images) == cfg.n_dates:
                return {"image": np.stack(images), "mask": np.stack(masks),
                        "key": f"{index:08d}",
                        "info": {**loc, "scenes": scenes}}
        return None

    def _try_item(self, searcher, item, loc, size_m, Resampling):
        cfg = self.cfg
        for a in [*cfg.assets, *([cfg.mask_asset] if cfg.mask_asset else [])]:
            if a not in item.assets:
                raise DataError(f"STAC item {item.id} has no asset {a!r}; it has "
                                f"{', '.join(item.assets)}")
        bad = np.zeros((cfg.patch_px, cfg.patch_px), bool)
        mask = np.zeros((cfg.patch_px, cfg.patch_px), np.uint8)
        if cfg.mask_asset:
            m, _ = self._read(searcher, item.assets[cfg.mask_asset].href, loc, size_m,
                              Resampling.nearest, 255)
            bad |= np.isin(m, cfg.mask_bad)
            # outside the scene counts as fill whatever the mask's own code for fill is
            mask = np.where(bad, 255, m).astype(np.uint8)
            if bad.mean() > cfg.max_patch_bad:
                return None
        bands = []
        for a in cfg.assets:
            arr, nodata = self._read(searcher, item.assets[a].href, loc, size_m,
                                     Resampling.bilinear, None)
            if nodata is not None:
                bad |= arr == nodata
            bands.append(arr)
        if bad.mean() > cfg.max_patch_bad:
            return None
        mask[bad] = 255
        img = np.stack(bands)
        return img, mask

    def _read(self, searcher, href, loc, size_m, resampling, fill):
        from rasterio.errors import RasterioIOError

        def go():
            try:
                return _read_patch(href, loc["lat"], loc["lon"], size_m, self.cfg.patch_px,
                                   resampling, fill)
            except RasterioIOError as e:
                if "://" in href or href.startswith("/vsi"):
                    raise ConnectionError(str(e)) from None  # remote read: worth retrying
                raise DataError(f"cannot read asset {href}: {e}") from None

        return searcher.retry(go, f"reading {href}")

    def run(self, locations: int, progress: bool = True,
            on_location: Callable[[int, dict | None], None] | None = None) -> dict:
        """Collect until ``locations`` location indices are done; returns the progress record."""
        if locations < 1:
            raise ConfigError(f"--locations must be >= 1, got {locations}")
        writer, prog = self._open_writer()
        start = prog["next_index"]
        if start >= locations:
            return prog
        bar = None
        if progress:
            from ..progress import bar as progress_bar

            bar = progress_bar(total=locations, initial=start, unit="loc", desc="collect")
        since = 0
        i = start
        try:
            searcher = StacSearcher(self.cfg, self.sleep)
            prog["filter_mode"] = searcher.filter_mode
            while i < locations:
                sample = self.location(searcher, i)
                if sample is None:
                    prog["failed"].append(i)
                else:
                    writer.add(sample)
                    prog["collected"] += 1
                i += 1
                prog["next_index"] = i
                since += 1
                if bar is not None:
                    bar.update(1)
                if on_location is not None:
                    on_location(i - 1, sample)
                if since >= self.cfg.commit_every:
                    writer.commit(prog)
                    since = 0
        except BaseException as e:
            # Locations finished before the fault are complete; keep them. prog["next_index"]
            # already points past the last finished one, so a rerun starts where this stopped.
            writer.commit(prog)
            if isinstance(e, CollectError) and not prog["next_index"]:
                raise CollectError(f"{e}. Nothing was collected: fix the cause and rerun the "
                                   "command") from None
            if isinstance(e, CollectError):
                raise CollectError(f"{e}. The corpus in {self.out} holds {writer.count} "
                                   f"locations (next index {prog['next_index']}) and is valid; "
                                   "rerun the same command with --resume to continue") from None
            raise
        finally:
            if bar is not None:
                bar.close()
        writer.commit(prog)
        return prog


def collect(cfg: CollectConfig, out: str | os.PathLike, locations: int, progress: bool = True,
            on_location=None, sleep=time.sleep) -> dict:
    """Collect ``locations`` SeCo locations into the corpus ``out`` (resuming if it exists)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # pystac-client deprecation notes
        return Collector(cfg, out, sleep).run(locations, progress, on_location)


def config_dict(cfg: CollectConfig) -> dict:
    return asdict(cfg)
