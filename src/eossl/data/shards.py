"""Sharded corpora: pack imagery into LitData chunks and stream them back for training at scale.

Why LitData's format rather than WebDataset's (both are installed; we picked one):

- Chunks are indexed binary files: a sample can be read by position (``corpus[i]``) for tests,
  statistics and evaluation, and a reader can cut an epoch into equal shares at sample
  granularity (a chunk may be shared by two ranks or workers), so DDP ranks get equal work
  however many chunks there are; WebDataset splits whole tar shards, which leaves ranks unequal
  unless one resamples with replacement.
- LitData writes the chunks, decodes the samples and fetches ``s3://``, ``gs://``, ``az://`` and
  ``hf://`` objects.

Training does not use LitData's StreamingDataset: ``ShardStream`` reads whole chunks in a
seeded order and shuffles within a bounded window (several times LitData's per-sample reads,
benchmarks/chips_shards.py), and resumes by arithmetic on the step; see its docstring.

A corpus folder holds LitData's ``index.json`` and ``chunk-NNNNNN.bin`` files plus ``eossl.json``:
the band list, sensor, per-chunk statistics and CRC-32 checksums, and (for a collection in
progress) the collector's progress. ``eossl.json`` is the record of truth: a chunk counts only
once it is listed there, and ``index.json`` is regenerated from it, so a writer that dies mid-way
leaves a readable corpus and an orphan file at worst. Appending chunks (``ShardWriter(resume=
True)``) is what makes a STAC collection resumable.

Samples are dicts: ``image`` raw values, (C, H, W) for chips or (T, C, H, W) for time series,
in the corpus dtype; ``key`` a unique string; optional ``mask`` (H, W) / (T, H, W) uint8 and
``info`` (a JSON string: dates, location, scene ids).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset

from ..errors import ConfigError, DataError, OutputExistsError
from ..io import atomic_write_json, remove_stale_parts
from .stats import BandStats, StatsAccumulator, default_log_flags

META = "eossl.json"
INDEX = "index.json"
FORMAT = "eossl-shards/1"
SKIP_ENV = "EOSSL_SKIP_CORRUPT_SHARDS"
REMOTE_PREFIXES = ("s3://", "gs://", "az://", "azure://", "hf://", "r2://", "http://", "https://")


def is_remote(path: str | os.PathLike) -> bool:
    return str(path).startswith(REMOTE_PREFIXES)


def _atomic_write_json(path: Path, obj) -> None:
    atomic_write_json(path, obj, indent=1)


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            crc = zlib.crc32(block, crc)
    return crc


def is_corpus(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a shard corpus (a local folder with eossl.json, or a remote URL)."""
    return is_remote(path) or (Path(path).is_dir() and (Path(path) / META).is_file())


# ----------------------------------------------------------------------------- statistics

def _chunk_stats(samples: Sequence[dict], bands: Sequence[str], nodata) -> dict:
    """Moments and quantiles of one chunk's valid pixels, mergeable across chunks."""
    acc = StatsAccumulator(bands, default_log_flags(bands), reservoir=20_000)
    for s in samples:
        img = np.asarray(s["image"])
        imgs = img if img.ndim == 4 else img[None]
        masks = s.get("mask")
        for t, a in enumerate(imgs):
            # as SceneStack and tile(): NaN or nodata in ANY band makes the pixel invalid
            valid = np.isfinite(a).all(axis=0)
            if nodata is not None:
                valid &= ~(a == nodata).any(axis=0)
            if masks is not None:
                m = np.asarray(masks)
                valid &= (m[t] if m.ndim == 3 else m) != 255
            acc.update(a, valid)
    if acc.n < 2:
        return {"n": int(acc.n)}
    allv = np.concatenate(acc.samples, axis=1)
    q02, q98 = np.quantile(allv, [0.02, 0.98], axis=1)
    return {"n": int(acc.n), "mean": acc.mean.tolist(), "m2": acc.m2.tolist(),
            "q02": q02.tolist(), "q98": q98.tolist()}


def merge_stats(chunk_stats: Iterable[dict], bands: Sequence[str]) -> BandStats:
    """Exact pooled mean/std (Chan et al.) over chunks; quantiles are count-weighted means of the
    chunks' quantiles (an approximation; they only set display ranges and colour targets)."""
    n, mean, m2 = 0, np.zeros(len(bands)), np.zeros(len(bands))
    q02, q98 = np.zeros(len(bands)), np.zeros(len(bands))
    for c in chunk_stats:
        if c.get("n", 0) < 2:
            continue
        nb, mb, m2b = c["n"], np.asarray(c["mean"]), np.asarray(c["m2"])
        delta, tot = mb - mean, n + nb
        mean = mean + delta * nb / tot
        m2 = m2 + m2b + delta ** 2 * n * nb / tot
        q02, q98 = q02 + nb * np.asarray(c["q02"]), q98 + nb * np.asarray(c["q98"])
        n = tot
    if n < 2:
        raise DataError("shard corpus: fewer than two valid pixels; is it empty?")
    std = np.sqrt(m2 / (n - 1))
    std = np.where(std < 1e-6, 1.0, std)
    return BandStats(list(bands), mean.tolist(), std.tolist(), (q02 / n).tolist(),
                     (q98 / n).tolist(), default_log_flags(bands), int(n))


# ----------------------------------------------------------------------------- writing

class ShardWriter:
    """Append samples to a corpus, one committed group of chunks at a time.

    ``add`` buffers; ``commit`` writes the buffer as LitData chunks (LitData's BinaryWriter into a
    temporary folder), moves them in, then records them in ``eossl.json`` (atomic rename) and
    regenerates ``index.json``. ``progress`` given to ``commit`` is stored in the same atomic
    write, so a caller's progress and the corpus content never disagree.

    Args:
        out: corpus folder; must not exist (or be empty) unless ``resume``.
        bands: band names in channel order.
        kind: ``"chips"`` (C, H, W) or ``"series"`` (T, C, H, W).
        resume: open an existing corpus and append to it.
        chunk_bytes: LitData chunk size.
    """

    def __init__(self, out: str | os.PathLike, bands: Sequence[str] | None = None, *,
                 kind: str = "chips", sensor: str | None = None, nodata: float | None = None,
                 description: str = "", resume: bool = False, chunk_bytes: str = "64MB",
                 extra: dict | None = None) -> None:
        self.out = Path(out)
        self.chunk_bytes = check_chunk_bytes(chunk_bytes)
        self._pending: list[dict] = []
        if resume and (self.out / META).is_file():
            self.meta = json.loads((self.out / META).read_text())
            if self.meta.get("format") != FORMAT:
                raise DataError(f"{self.out / META}: not an eossl shard corpus "
                                f"(format {self.meta.get('format')!r}, expected {FORMAT})")
            if bands is not None and list(bands) != self.meta["bands"]:
                raise ConfigError(f"{self.out}: holds bands {self.meta['bands']}, cannot append "
                                  f"samples with bands {list(bands)}")
            self._cleanup_orphans()
            self._write_index()
            return
        if self.out.exists() and any(self.out.iterdir()):
            raise OutputExistsError(f"{self.out} already exists and is not empty; choose another "
                                    "output folder (or resume a collection there)")
        if not bands:
            raise ConfigError("a new shard corpus needs its band names")
        if kind not in ("chips", "series"):
            raise ConfigError(f"shard kind must be 'chips' or 'series', got {kind!r}")
        self.out.mkdir(parents=True, exist_ok=True)
        self.meta = {"format": FORMAT, "kind": kind, "bands": list(bands), "sensor": sensor,
                     "nodata": nodata, "description": description, "count": 0,
                     "dtype": None, "shape": None, "litdata_config": None, "chunks": [],
                     **(extra or {})}
        self._commit_meta()

    @property
    def count(self) -> int:
        """Committed samples (pending ones not included)."""
        return int(self.meta["count"])

    def _cleanup_orphans(self) -> None:
        listed = {c["filename"] for c in self.meta["chunks"]}
        for f in self.out.glob("chunk-*.bin"):
            if f.name not in listed:  # written by a commit that never reached eossl.json
                f.unlink()
        for tmp in self.out.glob(".commit-*"):  # a commit's folder that a kill left behind
            shutil.rmtree(tmp, ignore_errors=True)
        remove_stale_parts(self.out)

    def _write_index(self) -> None:
        if self.meta["litdata_config"] is None:
            (self.out / INDEX).unlink(missing_ok=True)
            return
        chunks = [{k: c[k] for k in ("chunk_bytes", "chunk_size", "dim", "filename")}
                  for c in self.meta["chunks"]]
        _atomic_write_json(self.out / INDEX, {"chunks": chunks,
                                              "config": self.meta["litdata_config"],
                                              "updated_at": str(len(chunks))})

    def _commit_meta(self) -> None:
        _atomic_write_json(self.out / META, self.meta)

    def add(self, sample: dict) -> None:
        img = np.asarray(sample["image"])
        nd = 4 if self.meta["kind"] == "series" else 3
        if img.ndim != nd or img.shape[-3] != len(self.meta["bands"]):
            raise DataError(f"sample {sample.get('key')!r}: image shape {img.shape}; this "
                            f"{self.meta['kind']} corpus expects {nd} dims with "
                            f"{len(self.meta['bands'])} bands")
        if self.meta["dtype"] is None:
            self.meta["dtype"] = str(img.dtype)
        elif str(img.dtype) != self.meta["dtype"]:
            raise DataError(f"sample {sample.get('key')!r}: dtype {img.dtype}, corpus holds "
                            f"{self.meta['dtype']}")
        item = {"image": np.ascontiguousarray(img), "key": str(sample["key"])}
        if "mask" in sample and sample["mask"] is not None:
            item["mask"] = np.ascontiguousarray(np.asarray(sample["mask"], dtype=np.uint8))
        item["info"] = json.dumps(sample.get("info", {}))
        self._pending.append(item)

    def commit(self, progress: dict | None = None) -> int:
        """Write the buffered samples as chunks and record them (and ``progress``) atomically."""
        from litdata.streaming.writer import BinaryWriter

        if self._pending:
            tmp = Path(tempfile.mkdtemp(prefix=".commit-", dir=self.out))
            try:
                w = BinaryWriter(str(tmp), chunk_bytes=self.chunk_bytes)
                for i, item in enumerate(self._pending):
                    w[i] = item
                w.done()
                w.merge()
                idx = json.loads((tmp / INDEX).read_text())
                if self.meta["litdata_config"] is None:
                    self.meta["litdata_config"] = idx["config"]
                elif idx["config"]["data_spec"] != self.meta["litdata_config"]["data_spec"]:
                    raise DataError(f"{self.out}: new samples have other fields than the corpus "
                                    "(e.g. a mask where earlier samples had none)")
                start = 0
                for c in idx["chunks"]:
                    seq = len(self.meta["chunks"])
                    name = f"chunk-{seq:06d}.bin"
                    os.replace(tmp / c["filename"], self.out / name)
                    part = self._pending[start:start + c["chunk_size"]]
                    start += c["chunk_size"]
                    self.meta["chunks"].append({
                        **c, "filename": name, "bytes": (self.out / name).stat().st_size,
                        "crc32": _crc32(self.out / name),
                        "stats": _chunk_stats([{"image": p["image"], "mask": p.get("mask")}
                                               for p in part], self.meta["bands"],
                                              self.meta["nodata"])})
                first = self._pending[0]["image"]
                self.meta["shape"] = list(first.shape)
                self.meta["count"] += len(self._pending)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        if progress is not None:
            self.meta["progress"] = progress
        self._commit_meta()
        self._write_index()
        n, self._pending = len(self._pending), []
        return n


def pack(samples: Iterable[dict], out: str | os.PathLike, bands: Sequence[str], *,
         kind: str = "chips", sensor: str | None = None, nodata: float | None = None,
         description: str = "", samples_per_commit: int = 4096, chunk_bytes: str = "64MB",
         progress=None) -> dict:
    """Write ``samples`` into a new corpus at ``out``; returns its ``eossl.json`` record."""
    w = ShardWriter(out, bands, kind=kind, sensor=sensor, nodata=nodata,
                    description=description, chunk_bytes=chunk_bytes)
    n = 0
    for s in samples:
        w.add(s)
        n += 1
        if progress is not None:
            progress.update(1)
        if n % samples_per_commit == 0:
            w.commit()
    w.commit()
    if w.count == 0:
        raise DataError(f"nothing to pack into {out}: the input gave no chips (each one held "
                        "more nodata or NaN pixels than --max-nodata allows, or the input is "
                        "smaller than one chip)")
    return w.meta


# ----------------------------------------------------------------------------- corpus inputs

def _integer_dtype(arrays: Sequence[np.ndarray]) -> np.dtype:
    """The smallest of uint16 / int16 / float32 that holds every value of ``arrays`` exactly.

    Decided once for all the arrays of a corpus input, because a corpus has one dtype: the
    Landsat series mixes acquisitions with and without negative reflectances, and choosing per
    acquisition would give uint16 for some and int16 for others.
    """
    arrays = [a for a in arrays if a.size]
    if arrays and all(np.array_equal(a, np.round(a)) for a in arrays):
        lo = min(float(a.min()) for a in arrays)
        hi = max(float(a.max()) for a in arrays)
        if lo >= 0 and hi <= 65535:
            return np.dtype(np.uint16)
        if lo >= -32768 and hi <= 32767:
            return np.dtype(np.int16)
    return np.dtype(np.float32)


def _as_integer_dtype(a: np.ndarray) -> np.ndarray:
    """Raw digital numbers read as float32 go back to uint16/int16: half the bytes per chip."""
    return a.astype(_integer_dtype([a]))


def tile(image: np.ndarray, size: int, stride: int | None = None, nodata=None,
         max_nodata: float = 0.1, mask: np.ndarray | None = None) -> Iterator[tuple[int, int]]:
    """Top-left corners of ``size`` px tiles of a (C, H, W) image with at most ``max_nodata``
    share of nodata pixels (``nodata`` or NaN in any band, or masked)."""
    stride = stride or size
    _, h, w = image.shape
    for r in range(0, h - size + 1, stride):
        for c in range(0, w - size + 1, stride):
            win = image[:, r:r + size, c:c + size]
            bad = np.zeros((size, size), bool)
            if win.dtype.kind == "f":  # NaN in any band: the pixel is nodata too
                bad |= np.isnan(win).any(axis=0)
            if nodata is not None:  # as SceneStack: nodata in any band makes a pixel invalid
                bad |= (win == nodata).any(axis=0)
            if mask is not None:
                bad |= mask[r:r + size, c:c + size] == 255
            if bad.mean() <= max_nodata:
                yield r, c


def scene_chips(source, size: int, stride: int | None = None,
                max_nodata: float = 0.1) -> Iterator[dict]:
    """Chips tiling every scene of a SceneSource (Brandenburg or a folder of band files)."""
    for s_i, scene in enumerate(source.scenes):
        a = scene.load()
        out = _as_integer_dtype(a)
        for r, c in tile(a, size, stride, scene.nodata, max_nodata):
            yield {"image": out[:, r:r + size, c:c + size],
                   "key": f"{Path(scene.path).stem}/{r}_{c}",
                   "info": {"scene": str(Path(scene.path).name), "row": r, "col": c}}


def landsat_chips(root, size: int, stride: int | None = None,
                  max_nodata: float = 0.1) -> Iterator[dict]:
    """Chips (with their Fmask) of every date of a Landsat time series (data.md sample 2)."""
    from .timeseries import LandsatTimeSeries

    ts = LandsatTimeSeries(root)
    dtype = _integer_dtype([im.numpy() for im in ts.images])  # one dtype for every date
    for i in range(len(ts)):
        img = ts.images[i].numpy()
        m = ts.masks[i].numpy()
        out = img.astype(dtype)
        for r, c in tile(img, size, stride, None, max_nodata, mask=m):
            yield {"image": out[:, r:r + size, c:c + size], "mask": m[r:r + size, c:c + size],
                   "key": f"{ts.scene_ids[i]}/{r}_{c}",
                   "info": {"scene": ts.scene_ids[i], "date": ts.dates[i].isoformat(),
                            "row": r, "col": c}}


def geotiff_chips(folder, size: int, stride: int | None = None, max_nodata: float = 0.1,
                  bands: Sequence[str] | None = None) -> tuple[list[str], Iterator[dict]]:
    """Chips of every multi-band GeoTIFF in a folder (all with the same band count)."""
    import rasterio

    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".tif", ".tiff"))
    if not files:
        raise DataError(f"{folder}: holds no GeoTIFFs (*.tif)")
    with rasterio.open(files[0]) as ds:
        count, desc, nodata = ds.count, ds.descriptions, ds.nodata
    if bands is None:
        bands = [d if d else f"b{i + 1}" for i, d in enumerate(desc)]
    if len(bands) != count:
        raise ConfigError(f"--bands names {len(bands)} bands but {files[0]} has {count}")

    def gen():
        for f in files:
            with rasterio.open(f) as ds:
                if ds.count != count:
                    raise DataError(f"{f}: {ds.count} bands; {files[0]} has {count}")
                a = ds.read()
            out = _as_integer_dtype(a.astype(np.float32)) if a.dtype.kind == "f" else a
            for r, c in tile(a, size, stride, nodata, max_nodata):
                yield {"image": out[:, r:r + size, c:c + size], "key": f"{f.name}/{r}_{c}",
                       "info": {"file": f.name, "row": r, "col": c}}

    return list(bands), gen()


def check_scenes_share_grid(scenes) -> None:
    """Refuse, before anything is written, scenes that cannot share a corpus: another CRS,
    pixel size or band count than the first (one corpus holds chips of one kind, and a 20 m
    chip beside 10 m chips covers four times the ground)."""
    first = None
    for s in scenes:
        kind = (s.crs.to_string() if s.crs else None,
                (round(abs(s.transform.a), 9), round(abs(s.transform.e), 9)), len(s.bands))
        if first is None:
            first = (s, kind)
            continue
        (s0, (crs0, res0, n0)), (crs, res, n) = first, kind
        name0 = Path(s0.path).name
        if crs != crs0:
            raise DataError(f"{s.path}: CRS {crs} differs from {name0} ({crs0}); pack scenes of "
                            "one CRS together (reproject them first)")
        if res != res0:
            raise DataError(f"{s.path}: pixel size {res[0]:g} x {res[1]:g} differs from {name0} "
                            f"({res0[0]:g} x {res0[1]:g}); pack scenes of one resolution "
                            "together (resample them first)")
        if n != n0:
            raise DataError(f"{s.path}: {n} bands; {name0} has {n0}")


def check_chunk_bytes(text) -> str:
    """A LitData chunk size (64MB, 1GB, 500kb, or a number of bytes), checked."""
    from litdata.utilities.format import _convert_bytes_to_int

    try:
        n = int(text) if str(text).strip().isdigit() else _convert_bytes_to_int(str(text))
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"--chunk-bytes {text!r}: expected a size such as 64MB, 1GB or a "
                          "number of bytes")
    return str(text)


# ----------------------------------------------------------------------------- reading

DEFAULT_CACHE_SIZE = "50GB"  # object-store corpora: local chunk cache limit (data.chunk_cache_size)
SHUFFLE_WINDOW = 1024  # samples shuffled together (a few chunks' worth; bounds each worker's memory)


def parse_bytes(size: int | str, what: str = "size") -> int:
    """``50GB``, ``500MB`` or a number of bytes -> bytes (LitData's own units, as chunk_bytes)."""
    if isinstance(size, (int, float)) and not isinstance(size, bool) and size > 0:
        return int(size)
    from litdata.utilities.format import _convert_bytes_to_int

    try:
        n = _convert_bytes_to_int(str(size))
    except ValueError:
        n = 0
    if n <= 0:
        raise ConfigError(f"{what}: cannot read {size!r} as a size; expected e.g. 50GB, 500MB or "
                          "a number of bytes")
    return n


def _downloader(url: str):
    """LitData's downloader for an object-store URL.

    S3 endpoint and credentials come from the standard AWS environment (AWS_ENDPOINT_URL,
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE, AWS_DEFAULT_REGION). LitData's
    own S3 client retries 1000 times (adaptive mode), so a store that went away would stall a
    run for hours; an explicit botocore Config without retries lets botocore take
    AWS_MAX_ATTEMPTS / AWS_RETRY_MODE from the environment (default: 5 attempts).
    """
    from litdata.streaming.downloader import get_downloader

    opts = None
    if url.startswith("s3://"):
        import botocore.config

        opts = {"config": botocore.config.Config()}
    return get_downloader(url, tempfile.gettempdir(), [], storage_options=opts)


def _fetch(downloader, url: str, dest) -> None:
    """Copy the object at ``url`` into ``dest`` (a path or a binary file object).

    LitData's ``download_file`` sends S3 chunk reads through obstore, which refuses plain-http
    endpoints (a local MinIO or S3 test server); its ``download_fileobj`` uses the boto3 /
    cloud SDK client that honours the AWS environment, so that is the one used where the
    downloader has it (S3, GCS, Azure, R2; not hf://).
    """
    from litdata.streaming.downloader import Downloader

    if type(downloader).download_fileobj is not Downloader.download_fileobj:
        if isinstance(dest, (str, os.PathLike)):
            with open(dest, "wb") as f:
                downloader.download_fileobj(url, f)
        else:
            downloader.download_fileobj(url, dest)
    elif isinstance(dest, (str, os.PathLike)):
        downloader.download_file(url, os.fspath(dest))
    else:
        with tempfile.TemporaryDirectory() as d:
            downloader.download_file(url, os.path.join(d, "obj"))
            dest.write(Path(d, "obj").read_bytes())


def _fetch_error(url: str, e: Exception) -> DataError:
    first = (str(e).strip().splitlines() or [""])[0]
    return DataError(f"{url}: cannot fetch ({type(e).__name__}: {first}); check the URL, and "
                     "for s3:// the AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID / "
                     "AWS_SECRET_ACCESS_KEY environment")


def _read_meta(path: str) -> dict:
    if not is_remote(path):
        f = Path(path) / META
        if not f.is_file():
            raise DataError(f"{path}: no {META}; not an eossl shard corpus (make one with "
                            "'eossl data pack' or 'eossl collect')")
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{f}: corrupt ({e})") from None
    import io

    url = path.rstrip("/") + "/" + META
    buf = io.BytesIO()
    try:
        _fetch(_downloader(path), url, buf)
    except Exception as e:  # noqa: BLE001 - the SDKs raise many types; all mean "cannot read"
        raise _fetch_error(url, e) from None
    try:
        return json.loads(buf.getvalue())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{url}: corrupt ({e})") from None


class ChunkCache:
    """Whole chunks of an object-store corpus on local disk, at most ``limit`` bytes.

    A chunk is fetched once (through LitData's downloader), checked against the size and
    CRC-32 recorded in ``eossl.json``, and only then renamed to its final name, so the cache
    never holds a partial or damaged chunk under a chunk's name, whatever stops the download
    (a dead server, a kill). Least recently used chunks are deleted past the limit. Several
    processes (ranks, workers) may share one cache folder: a chunk one of them deletes while
    another wants it is fetched again.
    """

    def __init__(self, url: str, folder: str | os.PathLike, limit: int | str,
                 largest_chunk: int = 0) -> None:
        self.url = url.rstrip("/")
        self.folder = Path(folder).expanduser()
        self.limit = parse_bytes(limit, "chunk cache size")
        if self.limit < 2 * largest_chunk:
            raise ConfigError(f"chunk cache size {self.limit} bytes is below two chunks of "
                              f"{self.url} ({largest_chunk} bytes each); raise "
                              "data.chunk_cache_size")
        self._downloader = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_downloader": None}  # SDK clients are made per process

    def path(self, chunk: dict) -> Path:
        """The local file of ``chunk``, fetched first if the cache does not hold it."""
        f = self.folder / chunk["filename"]
        if f.is_file():
            os.utime(f)  # recently used
        else:
            self._download(chunk)
        return f

    def _download(self, chunk: dict) -> None:
        import uuid

        name = chunk["filename"]
        url = f"{self.url}/{name}"
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part"
        if self._downloader is None:
            self._downloader = _downloader(self.url)
        try:
            try:
                _fetch(self._downloader, url, tmp)
            except Exception as e:  # noqa: BLE001 - the SDKs raise many types
                raise _fetch_error(url, e) from None
            size = tmp.stat().st_size
            if size != chunk["bytes"] or _crc32(tmp) != chunk["crc32"]:
                raise DataError(f"{url}: fetched {size} bytes, expected {chunk['bytes']} with "
                                "the CRC-32 recorded in eossl.json (damaged in the store?)")
            os.replace(tmp, self.folder / name)
        finally:
            tmp.unlink(missing_ok=True)
        self._evict(keep=name)

    def _evict(self, keep: str) -> None:
        files = []
        for f in self.folder.glob("chunk-*.bin"):
            try:
                st = f.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime, st.st_size, f))
        total = sum(s for _, s, _ in files)
        for _, size, f in sorted(files, key=lambda t: t[0]):
            if total <= self.limit:
                break
            if f.name != keep:
                f.unlink(missing_ok=True)
                total -= size


def default_chunk_cache(url: str, cache: str | os.PathLike | None = None) -> Path:
    """``<eossl cache>/shards/<hash of the URL>``: one folder per corpus URL."""
    import hashlib

    from . import samples

    digest = hashlib.sha1(url.rstrip("/").encode()).hexdigest()[:16]
    return samples.cache_dir(cache) / "shards" / digest


class ShardCorpus:
    """A packed corpus: metadata, integrity check, whole-chunk reads and random access.

    Args:
        path: local folder or object-store URL (``s3://bucket/prefix``).
        cache_dir: where remote chunks are cached (default: ``default_chunk_cache``).
        cache_size: the cache's size limit (``DEFAULT_CACHE_SIZE``).
        verify: ``"size"`` (default: every local chunk has its recorded size), ``"crc"`` (also
            its CRC-32, reads every byte) or ``"none"``. Remote chunks are checked (size and
            CRC-32) as they are fetched.
        skip_corrupt: leave corrupt chunks out instead of failing (default: the environment
            variable EOSSL_SKIP_CORRUPT_SHARDS=1).
    """

    def __init__(self, path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                 verify: str = "size", skip_corrupt: bool | None = None,
                 cache_size: int | str = DEFAULT_CACHE_SIZE) -> None:
        self.path = str(path)
        self.meta = _read_meta(self.path)
        if self.meta.get("format") != FORMAT or not self.meta.get("chunks"):
            raise DataError(f"{self.path}: holds no committed samples (format "
                            f"{self.meta.get('format')!r}, {len(self.meta.get('chunks', []))} "
                            "chunks)")
        if skip_corrupt is None:
            skip_corrupt = os.environ.get(SKIP_ENV, "") not in ("", "0")
        self.skipped: list[str] = []
        chunks = self.meta["chunks"]
        if not is_remote(self.path) and verify != "none":
            bad = self.corrupt_chunks(check_crc=verify == "crc")
            if bad and not skip_corrupt:
                raise DataError(f"corrupt shard(s) in {self.path}: {'; '.join(bad)}. Re-pack or "
                                "re-download them, or train without them: eossl pretrain "
                                f"--skip-corrupt-shards ({SKIP_ENV}=1, ShardCorpus("
                                "skip_corrupt=True))")
            self.skipped = [b.split(":")[0] for b in bad]
            chunks = [c for c in chunks if c["filename"] not in self.skipped]
            if not chunks:
                raise DataError(f"{self.path}: every shard is corrupt")
        self.chunks = chunks
        self.offsets = np.concatenate([[0], np.cumsum([int(c["chunk_size"]) for c in chunks])])
        self.cache: ChunkCache | None = None
        if is_remote(self.path):
            self.use_cache(cache_dir, cache_size)
        self._loader = None
        self._last: tuple[int, "_Chunk"] | None = None

    def use_cache(self, folder: str | os.PathLike | None = None,
                  size: int | str | None = None) -> None:
        """Where (and how much of) a remote corpus is cached locally; no-op for local ones."""
        if not is_remote(self.path):
            return
        self.cache = ChunkCache(self.path, folder or default_chunk_cache(self.path),
                                size or DEFAULT_CACHE_SIZE,
                                max(int(c["bytes"]) for c in self.chunks))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_loader": None, "_last": None}

    def corrupt_chunks(self, check_crc: bool = False) -> list[str]:
        """``"chunk-000003.bin: reason"`` for every local chunk that is missing or damaged."""
        bad = []
        for c in self.meta["chunks"]:
            f = Path(self.path) / c["filename"]
            if not f.is_file():
                bad.append(f"{f.name}: missing")
            elif f.stat().st_size != c["bytes"]:
                bad.append(f"{f.name}: {f.stat().st_size} bytes, expected {c['bytes']} "
                           "(truncated?)")
            elif check_crc and _crc32(f) != c["crc32"]:
                bad.append(f"{f.name}: CRC-32 mismatch (content damaged)")
        return bad

    def chunk_of(self, i: int) -> str:
        """File name of the (good) chunk that holds sample ``i``, for error messages."""
        if not 0 <= i < len(self):
            return "?"
        return self.chunks[int(np.searchsorted(self.offsets, i, side="right")) - 1]["filename"]

    @property
    def bands(self) -> list[str]:
        return list(self.meta["bands"])

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def stats(self) -> BandStats:
        return merge_stats((c.get("stats", {}) for c in self.chunks), self.bands)

    def chunk(self, k: int) -> "_Chunk":
        """Good chunk number ``k`` (in ``self.chunks``), whole: the local file (or, for an
        object store, the chunk-cache file it is fetched into first), memory-mapped and read
        ahead sequentially."""
        c = self.chunks[k]
        name = c["filename"]
        for attempt in range(3):
            try:
                f = self.cache.path(c) if self.cache is not None else Path(self.path) / name
                data = _map(f)
                break
            except FileNotFoundError:
                if self.cache is not None and attempt < 2:
                    continue  # another process evicted it from the shared cache: fetch again
                raise DataError(f"{self.path}: shard {name} is missing") from None
            except OSError as e:
                raise DataError(f"{self.path}: cannot read shard {name} ({e})") from None
        if len(data) != int(c["bytes"]):
            raise DataError(f"{self.path}: shard {name} has {len(data)} bytes, expected "
                            f"{c['bytes']} (truncated or damaged after the corpus was opened); "
                            f"--skip-corrupt-shards ({SKIP_ENV}=1) leaves out shards found "
                            "damaged when the corpus is opened")
        if self._loader is None:
            self._loader = _item_loader(self.meta, self.chunks)
        return _Chunk(data, name, int(c["chunk_size"]), self._loader, self.path)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} of a corpus of {len(self)}")
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        if self._last is None or self._last[0] != k:  # sequential reads stay in one chunk
            self._last = (k, self.chunk(k))
        return _decode(self._last[1].item(i - int(self.offsets[k])))

    def streaming(self, shuffle: bool = False, seed: int = 0, drop_last: bool | None = None):
        """LitData's own StreamingDataset over the corpus folder (raw sample dicts); eossl
        trains from ``ShardStream``, which reads whole chunks (benchmarks/chips_shards.py
        compares the two)."""
        from litdata import StreamingDataset

        if self.skipped:
            raise DataError(f"{self.path}: LitData's reader would read the skipped shards "
                            f"{', '.join(self.skipped)}; use ShardStream")
        return StreamingDataset(self.path, shuffle=shuffle, seed=seed, drop_last=drop_last)

    def dataset(self, crop_size: int | None = None, shuffle: bool = True, seed: int = 0,
                bands: Sequence[str] | None = None, with_meta: bool = False,
                epochs: int | None = 1, **kw) -> "ShardStream":
        """A ShardStream over this corpus (one epoch per iteration by default)."""
        return ShardStream(self, crop_size=crop_size, shuffle=shuffle, seed=seed, bands=bands,
                           with_meta=with_meta, epochs=epochs, **kw)


def _item_loader(meta: dict, chunks: list[dict]):
    """LitData's PyTreeLoader, set up from the corpus' LitData config the way LitData's own
    ChunksConfig sets it up; it decodes one sample from its bytes."""
    import copy

    from litdata.streaming.item_loader import PyTreeLoader
    from litdata.streaming.serializers import _get_serializers
    from litdata.utilities._pytree import treespec_loads

    config = copy.deepcopy(meta["litdata_config"])
    if config.get("compression"):
        raise DataError(f"compressed LitData chunks ({config['compression']}) are not supported; "
                        "pack with eossl data pack")
    config["data_spec"] = treespec_loads(config["data_spec"])
    loader = PyTreeLoader()
    loader.setup(config, [{k: c[k] for k in ("chunk_bytes", "chunk_size", "dim", "filename")}
                          for c in chunks], _get_serializers(None))
    return loader


def _map(path: Path) -> memoryview:
    """A read-only memory map of a whole file, read ahead sequentially (no copy: the samples
    are decoded straight from the page cache). A file deleted while mapped stays readable, so
    a chunk another process evicts from the cache is not lost mid-read."""
    import mmap

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return memoryview(b"")
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(m, "madvise"):
        m.madvise(mmap.MADV_SEQUENTIAL)
        m.madvise(mmap.MADV_WILLNEED)
    return memoryview(m)


class _Chunk:
    """One chunk file in memory: LitData's layout is ``num_items`` (uint32), ``num_items + 1``
    uint32 offsets of the items in the file, then the items."""

    def __init__(self, data: memoryview, name: str, expected: int, loader, where: str) -> None:
        self.data, self.name, self.loader, self.where = data, name, loader, where
        n = int.from_bytes(data[:4], "little") if len(data) >= 4 else -1
        ok = n == expected and len(data) >= 4 * (n + 2)
        if ok:
            self.offsets = np.frombuffer(data, np.uint32, n + 1, 4).astype(np.int64)
            ok = bool(self.offsets[0] >= 4 * (n + 2) and self.offsets[-1] <= len(data)
                      and (np.diff(self.offsets) >= 0).all())
        if not ok:
            raise DataError(f"{where}: shard {name} is damaged (its item table does not match "
                            f"the {expected} samples recorded in eossl.json)")

    def item(self, j: int) -> dict:
        try:
            return self.loader.deserialize(self.data[self.offsets[j]:self.offsets[j + 1]])
        except Exception as e:  # noqa: BLE001 - decode errors of damaged bytes
            raise DataError(f"{self.where}: cannot decode sample {j} of shard {self.name} "
                            f"({type(e).__name__}: {e})") from None


def _decode(item: dict) -> dict:
    out = {"image": item["image"], "key": item["key"]}
    if "mask" in item:
        out["mask"] = item["mask"]
    out["info"] = json.loads(item.get("info") or "{}")
    return out


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardStream(IterableDataset):
    """The training stream over a corpus: whole chunks in a shuffled order, samples shuffled
    within a window of ``window`` consecutive samples, cropped at random to ``crop_size`` and
    converted to torchgeo-style ``{"image": float32 (C, H, W)}``.

    Each epoch is one pass: the chunk order is drawn from (seed, epoch) and the samples, in
    that order, are cut into ranks x workers contiguous shares (rank r gets shares r*W ...
    r*W + W - 1, one per DataLoader worker), so ranks and workers read disjoint samples and
    every sample once per epoch; each worker reads only the chunks its share touches, whole,
    in order, with at most a window's worth (plus a chunk at either end) in memory. Window
    permutations and crop positions are drawn per window from (seed, epoch, position), so the
    stream is a function of the seed and the position alone: ``resume(batches, batch_size)``
    continues it after ``batches`` batches by arithmetic, without reading what it skips. With
    workers, the resumed DataLoader's first worker takes the place of the one the interrupted
    run would have asked next.

    ``epochs=None`` (training) streams epoch after epoch without end, so DDP ranks never run
    out at different steps (the budget stops training); an integer gives that many epochs
    per iteration (evaluation, benchmarks), counted on from the previous iteration. A
    time-series sample yields one date drawn at random. ``distributed=(rank, world)`` stands
    in for torch.distributed (tests).
    """

    def __init__(self, corpus: ShardCorpus, crop_size: int | None = None, *, shuffle: bool = True,
                 seed: int | None = 0, bands: Sequence[str] | None = None,
                 with_meta: bool = False, window: int = SHUFFLE_WINDOW, epochs: int | None = None,
                 distributed: tuple[int, int] | None = None) -> None:
        self.corpus, self.crop_size, self.shuffle = corpus, crop_size, shuffle
        # seed None: eossl.train sets the run's seed before training
        self.seed, self.with_meta, self.epochs = seed, with_meta, epochs
        self.configure(window=window)
        self.distributed = distributed
        self.band_idx = None
        if bands is not None and list(bands) != corpus.bands:
            from ..bands import band_indices

            self.band_idx = np.asarray(band_indices(corpus.bands, bands, source=corpus.path))
        shape = corpus.meta.get("shape") or []
        if crop_size is not None and shape and min(shape[-2:]) < crop_size:
            raise ConfigError(f"crop size {crop_size} px is larger than the chips of "
                              f"{corpus.path} ({shape[-2]}x{shape[-1]} px)")
        self._next_epoch = 0
        self._resume = (0, 1)

    def __getstate__(self) -> dict:
        # A DataLoader started with "spawn" pickles the dataset in the main process, where the
        # process group lives; its workers must split the corpus by the rank found there.
        return {**self.__dict__, "distributed": self.distributed or _rank_world()}

    def configure(self, seed: int | None = None, window: int | None = None) -> None:
        """Set the seed and the shuffle window (``data.shuffle_window``); None keeps them."""
        if seed is not None:
            self.seed = int(seed)
        if window is not None:
            if isinstance(window, bool) or not isinstance(window, int) or window < 1:
                raise ConfigError(f"data.shuffle_window must be a whole number of samples >= 1, "
                                  f"got {window!r}")
            self.window = window

    def _seed(self) -> int:
        return int(self.seed or 0) & (2 ** 63 - 1)  # numpy seeds are non-negative

    def resume(self, batches: int, batch_size: int) -> None:
        """Continue after ``batches`` batches of ``batch_size`` (per rank) were consumed."""
        self._resume = (int(batches), int(batch_size))

    def share(self, epoch: int, part: int, parts: int) -> tuple[np.ndarray, int, int]:
        """The chunk order of ``epoch`` and the [start, end) positions of share ``part``."""
        n_chunks = len(self.corpus.chunks)
        order = (np.random.default_rng([self._seed(), epoch]).permutation(n_chunks)
                 if self.shuffle else np.arange(n_chunks))
        total = len(self.corpus)
        return order, part * total // parts, (part + 1) * total // parts

    def _window(self, epoch: int, order: np.ndarray, starts: np.ndarray, a: int, b: int):
        """(chunk, item, uniform draws) for positions [a, b) of the epoch, shuffled."""
        rng = np.random.default_rng([self._seed(), epoch, a, 1])
        pos = np.arange(a, b)
        if self.shuffle:
            pos = pos[rng.permutation(len(pos))]
        k = np.searchsorted(starts, pos, side="right") - 1
        return order[k], pos - starts[k], rng.random((len(pos), 3))

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        rank, world = self.distributed or _rank_world()
        done_batches, batch_size = self._resume
        self._resume = (0, 1)
        logical = (worker + done_batches) % workers
        done = (done_batches // workers + int(logical < done_batches % workers)) * batch_size
        parts, part = world * workers, rank * workers + logical
        if len(self.corpus) < parts:
            raise DataError(f"{self.corpus.path}: {len(self.corpus)} samples cannot be shared by "
                            f"{world} rank(s) x {workers} DataLoader worker(s)")
        sizes = np.asarray([int(c["chunk_size"]) for c in self.corpus.chunks])
        first = self._next_epoch
        if self.epochs is not None:
            self._next_epoch += self.epochs
        epoch = first
        while self.epochs is None or epoch < first + self.epochs:
            order, start, end = self.share(epoch, part, parts)
            starts = np.concatenate([[0], np.cumsum(sizes[order])])
            n = end - start
            if done >= n:  # resuming: this epoch's share was consumed
                done -= n
                epoch += 1
                continue
            loaded: dict[int, _Chunk] = {}
            w0 = start + (done // self.window) * self.window
            skip, done = done % self.window, 0
            for a in range(w0, end, self.window):
                chunks, items, draws = self._window(epoch, order, starts, a,
                                                    min(a + self.window, end))
                need = dict.fromkeys(chunks.tolist())
                for k in [k for k in loaded if k not in need]:
                    del loaded[k]  # memory: only the chunks of this window
                for k in need:
                    if k not in loaded:
                        loaded[k] = self.corpus.chunk(k)
                for j in range(skip, len(chunks)):
                    yield self._sample(loaded[chunks[j]].item(int(items[j])), draws[j])
                skip = 0
            epoch += 1

    def _sample(self, item: dict, u: np.ndarray) -> dict:
        img = item["image"]
        if img.ndim == 4:
            img = img[int(u[2] * img.shape[0])]
        s = self.crop_size
        if s is not None and (img.shape[-2] > s or img.shape[-1] > s):
            r = int(u[0] * (img.shape[-2] - s + 1))
            c = int(u[1] * (img.shape[-1] - s + 1))
            img = img[:, r:r + s, c:c + s]
        if self.band_idx is not None:
            img = img[self.band_idx]
        out = {"image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))}
        if self.with_meta:
            out["key"] = item["key"]
        return out


class ShardSource:
    """A shard corpus as a data source for ``eossl pretrain --data PATH``.

    Gives what the default crop-based methods need (``bands``, ``stats()``, ``crops``); no OSM
    labels, so no online kNN probe.
    """

    polygons = None

    def __init__(self, path: str | os.PathLike, bands=None, cache_dir: str | None = None,
                 skip_corrupt: bool | None = None) -> None:
        self.corpus = ShardCorpus(path, cache_dir=cache_dir, skip_corrupt=skip_corrupt)
        self.name = Path(str(path).rstrip("/")).name or str(path)
        self._bands = self.corpus.bands
        if bands is not None:
            from ..bands import band_indices

            if isinstance(bands, str):
                bands = [b for b in bands.split(",") if b.strip()]
            band_indices(self.corpus.bands, bands, source=str(path))  # BandError if absent
            self._bands = list(bands)

    @property
    def bands(self) -> list[str]:
        return self._bands

    @property
    def skipped(self) -> list[str]:
        return self.corpus.skipped

    def stats(self) -> BandStats:
        st = self.corpus.stats()
        return st if self._bands == st.bands else st.subset(self._bands)

    def crops(self, size: int, length: int | None = None, seed: int | None = None,
              region=None) -> ShardStream:
        """Random ``size`` px crops streamed from whole chunks (ShardStream), epoch after epoch
        (``length`` is ignored: an epoch is one pass over the corpus; budgets are set in
        steps or time). eossl.train resumes it with ``ShardStream.resume``."""
        if region is not None:
            raise ConfigError("shard corpora have no spatial region split")
        return ShardStream(self.corpus, size, seed=seed, bands=self._bands)


def open_shards(path: str | os.PathLike, cache=None, bands=None) -> ShardSource:
    """Open a corpus folder or URL as a source (used by sources.open_source for paths); a
    remote corpus caches its chunks under ``cache`` (the eossl cache) until
    ``corpus.use_cache`` says otherwise."""
    src = ShardSource(path, bands=bands,
                      cache_dir=default_chunk_cache(str(path), cache) if is_remote(path)
                      else None)
    return src
