"""Reading multi-file band stacks with rasterio onto one grid, with a stacked cache.

Sentinel-2 products store each band in its own JPEG 2000 file at 10, 20 or 60 m. Decoding
JPEG 2000 is slow (seconds per band), so the first read resamples all bands to the finest
grid and writes one tiled, uncompressed GeoTIFF stack into the cache; every later read (a
training run, a probe, a benchmark) is a cheap windowed read or one memory load of that stack.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from ..bands import band_indices, get_sensor
from ..errors import BandError, ConfigError, DataError

S2_BAND_FILE = re.compile(r"_(B(?:0[1-9]|1[0-2]|8A))\.(?:jp2|tif|tiff)$", re.IGNORECASE)
IMAGE_SUFFIXES = (".jp2", ".tif", ".tiff")


def find_band_files(folder: str | os.PathLike) -> dict[str, Path]:
    """Map Sentinel-2 band name -> file for a folder of per-band files (``*_B04.jp2`` ...)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; expected a folder of Sentinel-2 band files "
                        "(*_B01.jp2 ... *_B12.jp2 or .tif)")
    candidates = [folder] + ([folder / "IMG_DATA"] if (folder / "IMG_DATA").is_dir() else [])
    out: dict[str, Path] = {}
    for d in candidates:
        for f in sorted(d.iterdir()):
            m = S2_BAND_FILE.search(f.name)
            if m and f.is_file():
                out.setdefault(m.group(1).upper(), f)
    if not out:
        raise DataError(f"{folder}: holds no imagery; expected Sentinel-2 band files named "
                        "like T33UUU_20170216T102101_B04.jp2 (JPEG 2000 or GeoTIFF)")
    return out


def check_jp2_complete(path: Path) -> None:
    """Refuse a JPEG 2000 file whose boxes or codestream are cut short.

    JPEG 2000 is progressive: GDAL decodes a truncated file into a plausible, blurrier image and
    only logs the failure on stderr (rasterio does not raise), so a cut download would silently
    poison a cache. The box structure tells: box lengths must add up to the file size and the
    codestream must end with the EOC marker (FF D9).
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            f.seek(pos)
            head = f.read(8)
            if len(head) < 8:
                break
            length, kind = int.from_bytes(head[:4], "big"), head[4:8]
            if length == 1:
                length = int.from_bytes(f.read(8), "big")
            elif length == 0:
                length = size - pos
            if length < 8 or pos + length > size:
                raise DataError(f"{path}: JPEG 2000 box {kind!r} runs past the end of the file "
                                f"({size} bytes); the file is truncated")
            if kind == b"jp2c":
                f.seek(pos + length - 2)
                if f.read(2) != b"\xff\xd9":
                    raise DataError(f"{path}: JPEG 2000 codestream has no end marker; the file "
                                    "is truncated or corrupt")
            pos += length


def _open(path: Path):
    if path.suffix.lower() == ".jp2" and path.exists():
        check_jp2_complete(path)
    try:
        return rasterio.open(path)
    except (RasterioError, OSError) as e:
        raise DataError(f"{path}: cannot open as a raster ({_short(e)}); expected a readable "
                        "JPEG 2000 or GeoTIFF file") from None


def _short(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


def _check_zero_shares(zero: np.ndarray, paths: list[Path], tolerance: float = 0.05) -> None:
    """Refuse bands whose share of nodata (0) pixels is far above the others'.

    GDAL's JPEG 2000 driver logs decode failures of a truncated file on stderr but still returns
    a band of (mostly) zeros, so a damaged file is only visible in its pixels: on one tile every
    band covers the same footprint, so their nodata shares agree to within edge effects.
    """
    zero = np.asarray(zero, dtype=float)
    if zero.min() >= 1.0:
        raise DataError(f"{paths[0].parent}: every band is nodata (0) everywhere; expected "
                        "imagery with valid pixels")
    ref = float(np.median(zero))
    for frac, path in zip(zero, paths):
        if frac > ref + tolerance:
            raise DataError(f"{path}: {frac:.0%} of its pixels decoded as nodata while the "
                            f"other bands have {ref:.0%}; the file is truncated or corrupt")


def _s2_order(name: str) -> int:
    order = get_sensor("sentinel2-l1c").band_names
    return order.index(name) if name in order else 99


@dataclass
class SceneStack:
    """A co-registered multi-band scene on one grid, stored as one raster file.

    ``read(window)`` returns raw values (C, h, w) as float32 in ``bands`` order. ``load()``
    keeps the whole stack in memory for small scenes (the sample scene is 30 MB).
    ``indexes`` (1-based, in ``bands`` order) picks bands of a file that holds more than are
    used; ``nodata`` is the file's nodata value (or the user's ``--nodata``): a pixel equal to
    it, or not finite, in ANY band is invalid.
    """

    path: Path
    bands: list[str]
    sensor: str | None = "sentinel2-l1c"
    nodata: float | None = 0.0
    _array: np.ndarray | None = field(default=None, repr=False)
    indexes: list[int] | None = None

    def __post_init__(self) -> None:
        with _open(self.path) as src:
            self.height, self.width = src.height, src.width
            self.crs, self.transform = src.crs, src.transform
            self.bounds = src.bounds
            self.dtype = src.dtypes[0]
            if self.indexes is None and src.count != len(self.bands):
                raise DataError(f"{self.path}: holds {src.count} bands; expected "
                                f"{len(self.bands)} ({', '.join(self.bands)})")
            if self.indexes is not None and (len(self.indexes) != len(self.bands)
                                             or max(self.indexes) > src.count):
                raise DataError(f"{self.path}: holds {src.count} bands; cannot read band "
                                f"indexes {self.indexes}")
        if self.indexes is not None and list(self.indexes) == list(range(1, len(self.bands)
                                                                         + 1)):
            self.indexes = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.bands), self.height, self.width)

    @property
    def nbytes(self) -> int:
        return len(self.bands) * self.height * self.width * 4

    @property
    def name(self) -> str:
        return Path(self.path).name

    def load(self) -> np.ndarray:
        if self._array is None:
            with _open(self.path) as src:
                try:
                    self._array = src.read(self.indexes).astype(np.float32)
                except (RasterioError, OSError) as e:
                    raise DataError(f"{self.path}: read failed ({_short(e)}); the file may be "
                                    "truncated or corrupt") from None
        return self._array

    def read(self, window: Window | tuple[int, int, int, int] | None = None,
             bands: list[str] | None = None) -> np.ndarray:
        """Raw float32 values; ``window`` is a rasterio Window or (row, col, h, w)."""
        if window is not None and not isinstance(window, Window):
            r, c, h, w = window
            window = Window(c, r, w, h)
        idx = band_indices(self.bands, bands, source=str(self.path)) if bands else None
        if self._array is not None:
            a = self._array
            if window is not None:
                r0, c0 = int(window.row_off), int(window.col_off)
                a = a[:, r0:r0 + int(window.height), c0:c0 + int(window.width)]
            return a[idx] if idx is not None else a
        base = self.indexes or list(range(1, len(self.bands) + 1))
        ix = [base[i] for i in idx] if idx is not None else self.indexes
        try:
            return self._handle().read(ix, window=window, out_dtype=np.float32)
        except (RasterioError, OSError) as e:
            raise DataError(f"{self.path}: read of window {window} failed ({_short(e)}); the "
                            "file may be truncated or corrupt") from None

    def _handle(self):
        """One open dataset per process, kept between reads.

        Opening per read costs ~2 ms and drops GDAL's tile cache, so every window would decode
        its tiles again (benchmarks/README.md); the process id check reopens after a fork, as
        a DataLoader worker must not share a GDAL handle with its parent.
        """
        pid = os.getpid()
        if getattr(self, "_src", None) is None or self._src_pid != pid:
            self._src, self._src_pid = _open(self.path), pid
        return self._src

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_src", None)  # GDAL handles do not pickle (spawned DataLoader workers)
        return state

    def invalid(self, a: np.ndarray) -> np.ndarray:
        """(h, w) True where ANY band of the raw (C, h, w) array is nodata or not finite."""
        bad = ~np.isfinite(a).all(axis=0)
        if self.nodata is not None and np.isfinite(self.nodata):
            bad |= (a == self.nodata).any(axis=0)
        return bad

    def valid_mask(self, window=None) -> np.ndarray:
        """True where every band holds data (not nodata and finite)."""
        return ~self.invalid(self.read(window))

    def valid_map(self, block_rows: int = 1024) -> np.ndarray:
        """(H, W) validity of the whole scene, read a block of rows at a time."""
        if self._array is not None:
            return ~self.invalid(self._array)
        out = np.empty((self.height, self.width), bool)
        for r in range(0, self.height, block_rows):
            h = min(block_rows, self.height - r)
            out[r:r + h] = ~self.invalid(self.read((r, 0, h, self.width)))
        return out


def raster_scene(path: str | os.PathLike, *, sensor=None, band_names=None, bands=None,
                 nodata: float | None = None) -> SceneStack:
    """A :class:`SceneStack` over one multi-band raster (GeoTIFF, COG, VRT, JPEG 2000, ...),
    read in place (no copy). Band names as :func:`name_raster_bands` finds them; ``bands``
    selects and orders the bands used, by name. Nodata: ``nodata`` if given, else the file's.
    """
    path = Path(path)
    with _open(path) as src:
        count, descriptions, file_nodata = src.count, list(src.descriptions or []), src.nodata
    use, indexes, found = name_raster_bands(path, count, descriptions, sensor=sensor,
                                            band_names=band_names, bands=bands)
    nd = file_nodata if nodata is None else float(nodata)
    return SceneStack(path, use, sensor=found, nodata=None if nd is None else float(nd),
                      indexes=indexes)


def name_raster_bands(path, count: int, descriptions: list, *, sensor=None, band_names=None,
                      bands=None) -> tuple[list[str], list[int], str | None]:
    """(band names used, their 1-based indexes in the file, sensor) of a raster.

    Names: ``band_names`` (one per band, in file order) if given, else the file's band
    descriptions, else ``--sensor``'s bands in its order when the counts agree, else
    ``band001``...; every name goes through :func:`eossl.bands.resolve_band_names` (so ``B4``
    means what ``sensor`` says and an ambiguous name without one is refused). ``bands``
    selects and orders them by name.
    """
    from ..bands import get_sensor, resolve_band_names, sensors_of

    where = str(path)
    if band_names is not None:
        names = _as_list(band_names)
        if len(names) != count:
            raise BandError(f"{path}: holds {count} bands but --band-names gives {len(names)} "
                            f"({', '.join(names)}); give one name per band, in file order")
    elif descriptions and all(descriptions) and len(set(descriptions)) == count:
        names = [str(d) for d in descriptions]
    elif sensor is not None and len(sensors_of(sensor)) == 1 and \
            len(get_sensor(sensor).band_names) == count:
        names = get_sensor(sensor).band_names
        where = f"{path} (no band descriptions: the {count} bands of {get_sensor(sensor).name})"
    elif sensor is not None:
        raise BandError(f"{path}: its {count} bands have no names (no band descriptions) and "
                        f"--sensor {sensor} has {len(get_sensor(sensor).band_names)}; name them "
                        "with --band-names NAME,... (one per band, in file order)")
    else:
        width = max(3, len(str(count)))
        names = [f"band{i + 1:0{width}d}" for i in range(count)]
    resolved = resolve_band_names(names, sensor, where=where)
    indexes = list(range(1, count + 1))
    use = list(resolved.names)
    if bands is not None:
        wanted = resolve_band_names(_as_list(bands), sensor or resolved.sensor,
                                    where="--bands").names
        idx = band_indices(resolved.names, wanted, source=str(path))
        indexes, use = [i + 1 for i in idx], [resolved.names[i] for i in idx]
    return use, indexes, resolved.sensor


def _as_list(v) -> list[str]:
    if isinstance(v, str):
        return [b.strip() for b in v.split(",") if b.strip()]
    return [str(b).strip() for b in v]


def _cache_key(files: dict[str, Path], bands: list[str]) -> str:
    h = hashlib.sha256()
    for b in bands:
        st = files[b].stat()
        h.update(f"{b}:{files[b].resolve()}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def stacked_scene(folder: str | os.PathLike, cache: str | os.PathLike,
                  bands: list[str] | None = None, sensor: str = "sentinel2-l1c",
                  block_bytes: int = 64 << 20) -> SceneStack:
    """A :class:`SceneStack` for a folder of per-band files, building the cached stack once.

    The cache file name hashes the source paths, sizes and mtimes, so an edited source is
    restacked, and the stack is written to a temporary file and renamed, so a killed process
    never leaves a half-written stack that a later run would trust. The stack is built in
    blocks of rows (about ``block_bytes`` of pixels at a time), so a scene larger than memory
    can be stacked; windowed resampled reads give the same pixels as one whole-band read.
    """
    files = find_band_files(folder)
    if bands is None:
        order = get_sensor(sensor).band_names
        bands = [b for b in order if b in files]
        if len(bands) < len(order):
            missing = [b for b in order if b not in files]
            raise DataError(f"{folder}: band file(s) {', '.join(missing)} missing for "
                            f"{sensor}; found {', '.join(bands)}")
    out = Path(cache) / "stacks" / f"{Path(folder).resolve().name}-{_cache_key(files, bands)}.tif"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tif.part")
        os.close(fd)
        try:
            write_band_stack(files, list(bands), Path(tmp), block_bytes=block_bytes)
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return SceneStack(out, list(bands), sensor=sensor)


def write_band_stack(files: dict[str, Path], bands: list[str], path: Path,
                     resampling: Resampling = Resampling.bilinear,
                     block_bytes: int = 64 << 20, block_rows: int | None = None) -> None:
    """Resample per-band files onto the finest grid among them and write one tiled GeoTIFF,
    a block of rows at a time, so the scene is never held in memory whole.

    Bands must cover the same extent (the same tile): a file on another CRS or extent is an
    error, since silently warping would shift pixels between bands.
    """
    missing = [b for b in bands if b not in files]
    if missing:
        raise DataError(f"band file(s) {', '.join(missing)} not found; found "
                        f"{', '.join(sorted(files, key=_s2_order))}")
    srcs = {}
    try:
        for b in bands:
            srcs[b] = _open(files[b])
        ref = _check_same_grid(files, bands, srcs)
        grid = srcs[ref]
        H, W, dtype = grid.height, grid.width, np.dtype(grid.dtypes[0])
        profile = dict(grid.profile)
        profile.update(count=len(bands), dtype=dtype.name, driver="GTiff", tiled=True,
                       blockxsize=256, blockysize=256, compress=None, interleave="pixel",
                       nodata=0, BIGTIFF="IF_SAFER")
        profile.pop("photometric", None)
        # whole 256-px tile rows per block (unless told), so every block writes complete tiles
        rows = int(block_rows) if block_rows else max(
            256, (block_bytes // max(1, len(bands) * W * dtype.itemsize)) // 256 * 256)
        zeros = np.zeros(len(bands), np.int64)
        with rasterio.open(path, "w", **profile) as dst:
            for r in range(0, H, rows):
                h = min(rows, H - r)
                block = np.empty((len(bands), h, W), dtype)
                for i, b in enumerate(bands):
                    s = srcs[b]
                    fy = s.height / H
                    win = Window(0, r * fy, s.width, h * fy)
                    try:
                        block[i] = s.read(1, window=win, out_shape=(h, W), resampling=resampling)
                    except (RasterioError, OSError) as e:
                        raise DataError(f"{files[b]}: read failed ({_short(e)}); the file may "
                                        "be truncated or corrupt") from None
                    zeros[i] += int(np.count_nonzero(block[i] == 0))
                dst.write(block, window=Window(0, r, W, h))
                del block
            dst.descriptions = tuple(bands)
        _check_zero_shares(zeros / float(H * W), [files[b] for b in bands])
    finally:
        for s in srcs.values():
            s.close()


def _check_same_grid(files: dict[str, Path], bands: list[str], srcs: dict) -> str:
    """The band whose (finest) grid the stack uses; DataError for a band on another CRS or
    extent, or a file with more than one band."""
    ref = min(bands, key=lambda b: srcs[b].res[0])
    crs, bounds = srcs[ref].crs, srcs[ref].bounds
    for b in bands:
        s = srcs[b]
        if s.crs != crs:
            raise DataError(f"{files[b]}: CRS {s.crs} differs from {files[ref].name} ({crs}); "
                            "expected all bands of one scene on one CRS")
        if max(abs(s.bounds[i] - bounds[i]) for i in range(4)) > max(s.res):
            raise DataError(f"{files[b]}: extent {tuple(s.bounds)} differs from "
                            f"{files[ref].name} {tuple(bounds)}; expected bands of the same tile")
        if s.count != 1:
            raise DataError(f"{files[b]}: holds {s.count} bands; expected one band per file")
    return ref


def check_patch_size(size: int, height: int, width: int, what: str) -> None:
    if size < 1:
        raise ConfigError(f"patch size {size} must be at least 1 px")
    if size > min(height, width):
        raise ConfigError(f"patch size {size} px is larger than {what} ({height} x {width} px); "
                          f"expected at most {min(height, width)}")
