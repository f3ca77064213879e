"""Sharded corpora: pack imagery into LitData chunks and stream them back for training at scale.

Why LitData rather than WebDataset (both are installed; we picked one):

- DDP needs every rank to see the same number of batches or the gradient all-reduce hangs at the
  end of an epoch. LitData splits the corpus across ranks *and* DataLoader workers at sample
  granularity (a chunk may be shared by two workers), so ranks get equal shares however many
  chunks there are; WebDataset splits whole tar shards, which leaves ranks unequal unless one
  resamples with replacement.
- Chunks are indexed binary files, so a sample can be read by position (``corpus[i]``): tests,
  statistics and evaluation read single samples without scanning a tar stream.
- Shuffling is two-level and epoch-seeded (chunk order, then samples within each chunk's
  interval), the same on every rank, without a shuffle buffer.
- ``s3://``, ``gs://``, ``az://`` and ``hf://`` inputs stream through a bounded local chunk
  cache, and a dataset's state can be saved for mid-epoch resume.

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
from .stats import BandStats, StatsAccumulator, default_log_flags

META = "eossl.json"
INDEX = "index.json"
FORMAT = "eossl-shards/1"
SKIP_ENV = "EOSSL_SKIP_CORRUPT_SHARDS"
REMOTE_PREFIXES = ("s3://", "gs://", "az://", "azure://", "hf://", "r2://", "http://", "https://")


def is_remote(path: str | os.PathLike) -> bool:
    return str(path).startswith(REMOTE_PREFIXES)


def _atomic_write_json(path: Path, obj) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
            valid = np.ones(a.shape[1:], bool)
            if nodata is not None:
                valid &= ~(a == nodata).all(axis=0)
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
        self.chunk_bytes = chunk_bytes
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
        raise DataError(f"nothing to pack into {out}: the input gave no samples")
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
    """Top-left corners of ``size`` px tiles of a (C, H, W) image with little nodata."""
    stride = stride or size
    _, h, w = image.shape
    for r in range(0, h - size + 1, stride):
        for c in range(0, w - size + 1, stride):
            win = image[:, r:r + size, c:c + size]
            bad = np.zeros((size, size), bool)
            if nodata is not None:
                bad |= (win == nodata).all(axis=0)
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


# ----------------------------------------------------------------------------- reading

def _read_meta(path: str, cache_dir: str | None) -> dict:
    if not is_remote(path):
        f = Path(path) / META
        if not f.is_file():
            raise DataError(f"{path}: no {META}; not an eossl shard corpus (make one with "
                            "'eossl data pack' or 'eossl collect')")
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{f}: corrupt ({e})") from None
    from litdata.streaming.downloader import get_downloader

    local = Path(cache_dir or tempfile.mkdtemp(prefix="eossl-shards-"))
    local.mkdir(parents=True, exist_ok=True)
    try:
        get_downloader(path, str(local), []).download_file(
            path.rstrip("/") + "/" + META, str(local / META))
        return json.loads((local / META).read_text())
    except Exception as e:  # noqa: BLE001 - the backends raise many types; all mean "cannot read"
        raise DataError(f"{path}/{META}: cannot fetch ({type(e).__name__}: {e})") from None


class ShardCorpus:
    """A packed corpus: metadata, integrity check, random access and streaming datasets.

    Args:
        path: local folder or object-store URL (``s3://bucket/prefix``).
        cache_dir: where remote chunks are cached (LitData's default otherwise).
        verify: ``"size"`` (default: every local chunk has its recorded size), ``"crc"`` (also
            its CRC-32, reads every byte) or ``"none"``.
        skip_corrupt: leave corrupt chunks out instead of failing (default: the environment
            variable EOSSL_SKIP_CORRUPT_SHARDS=1).
    """

    def __init__(self, path: str | os.PathLike, cache_dir: str | None = None,
                 verify: str = "size", skip_corrupt: bool | None = None) -> None:
        self.path = str(path)
        self.cache_dir = cache_dir
        self.meta = _read_meta(self.path, cache_dir)
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
        self.input_dir = self._view() if self.skipped else self.path

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
        end = 0
        for c in self.chunks:
            end += int(c["chunk_size"])
            if 0 <= i < end:
                return c["filename"]
        return "?"

    def _view(self) -> str:
        """A folder of links to the good chunks with an index that lists only them."""
        view = Path(tempfile.mkdtemp(prefix="eossl-shardview-"))
        for c in self.chunks:
            os.symlink(Path(self.path).resolve() / c["filename"], view / c["filename"])
        idx = {"chunks": [{k: c[k] for k in ("chunk_bytes", "chunk_size", "dim", "filename")}
                          for c in self.chunks], "config": self.meta["litdata_config"]}
        (view / INDEX).write_text(json.dumps(idx))
        return str(view)

    @property
    def bands(self) -> list[str]:
        return list(self.meta["bands"])

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    def __len__(self) -> int:
        return sum(int(c["chunk_size"]) for c in self.chunks)

    def stats(self) -> BandStats:
        return merge_stats((c.get("stats", {}) for c in self.chunks), self.bands)

    def streaming(self, shuffle: bool = False, seed: int = 0, drop_last: bool | None = None):
        """LitData's StreamingDataset over the (good) chunks: raw sample dicts."""
        from litdata import StreamingDataset

        kw = {"cache_dir": self.cache_dir} if (self.cache_dir and is_remote(self.input_dir)) \
            else {}
        return StreamingDataset(self.input_dir, shuffle=shuffle, seed=seed,
                                drop_last=drop_last, **kw)

    def __getitem__(self, i: int) -> dict:
        if not hasattr(self, "_ra"):
            self._ra = self.streaming()
        return _decode(self._ra[int(i)], self.input_dir)

    def dataset(self, crop_size: int | None = None, shuffle: bool = True, seed: int = 0,
                bands: Sequence[str] | None = None, drop_last: bool | None = None,
                with_meta: bool = False) -> "ShardDataset":
        return ShardDataset(self, crop_size=crop_size, shuffle=shuffle, seed=seed,
                            bands=bands, drop_last=drop_last, with_meta=with_meta)


def _decode(item: dict, where: str) -> dict:
    out = {"image": item["image"], "key": item["key"]}
    if "mask" in item:
        out["mask"] = item["mask"]
    out["info"] = json.loads(item.get("info") or "{}")
    return out


class ShardDataset(IterableDataset):
    """Training stream over a corpus: shuffled across and within chunks (a new order each
    epoch), split across ranks and DataLoader workers without overlap (LitData), cropped at
    random to ``crop_size`` and converted to torchgeo-style ``{"image": float32 (C, H, W)}``.

    A time-series sample yields one date drawn at random (the default crop-based methods want
    single images). Under DDP, ``drop_last`` (LitData's default there) keeps ranks equal.
    """

    def __init__(self, corpus: ShardCorpus, crop_size: int | None = None, shuffle: bool = True,
                 seed: int = 0, bands: Sequence[str] | None = None,
                 drop_last: bool | None = None, with_meta: bool = False,
                 distributed: tuple[int, int] | None = None) -> None:
        self.corpus, self.crop_size, self.seed = corpus, crop_size, seed
        self.with_meta = with_meta
        self.ds = corpus.streaming(shuffle=shuffle, seed=seed, drop_last=drop_last)
        if distributed is not None:  # (rank, world_size) without torch.distributed, for tests
            from litdata.utilities.env import _DistributedEnv

            rank, world = distributed
            self.ds.distributed_env = _DistributedEnv(world, rank, 1)
            self.ds.drop_last = bool(drop_last)
        self.band_idx = None
        if bands is not None and list(bands) != corpus.bands:
            from ..bands import band_indices

            self.band_idx = band_indices(corpus.bands, bands, source=corpus.path)
        shape = corpus.meta.get("shape") or []
        if crop_size is not None and shape and min(shape[-2:]) < crop_size:
            raise ConfigError(f"crop size {crop_size} px is larger than the chips of "
                              f"{corpus.path} ({shape[-2]}x{shape[-1]} px)")
        self._epoch = 0

    def __len__(self) -> int:
        return len(self.ds)

    def set_epoch(self, epoch: int) -> None:
        self.ds.set_epoch(epoch)

    def _where(self) -> str:
        """The chunk being read, for error messages."""
        try:
            return self.ds.worker_chunks and self.corpus.chunks[
                self.ds.worker_chunks[max(0, self.ds.worker_next_chunk_index - 1)]]["filename"]
        except Exception:  # noqa: BLE001 - best effort, only used to name the culprit
            return "?"

    def __iter__(self):
        self._epoch += 1
        it = iter(self.ds)
        wi = torch.utils.data.get_worker_info()
        rng = np.random.default_rng((self.seed, self._epoch, wi.id if wi else 0,
                                     self.ds.distributed_env.global_rank))
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001 - decode/read errors of a damaged chunk
                raise DataError(f"{self.corpus.path}: cannot read shard {self._where()} "
                                f"({type(e).__name__}: {e}); --skip-corrupt-shards "
                                f"({SKIP_ENV}=1) leaves out shards found damaged when the "
                                "corpus is opened") from None
            img = item["image"]
            if img.ndim == 4:
                img = img[rng.integers(img.shape[0])]
            if self.band_idx is not None:
                img = img[self.band_idx]
            s = self.crop_size
            if s is not None and (img.shape[-2] > s or img.shape[-1] > s):
                r = int(rng.integers(0, img.shape[-2] - s + 1))
                c = int(rng.integers(0, img.shape[-1] - s + 1))
                img = img[:, r:r + s, c:c + s]
            out = {"image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))}
            if self.with_meta:
                out["key"] = item["key"]
            yield out


class ShardCrops(torch.utils.data.Dataset):
    """Map-style random crops of a corpus, one per stored sample: for training loops that bring
    their own (resumable, distributed) sampler, which an IterableDataset cannot take. Reads go
    through LitData's random access; rank splitting is then the sampler's job."""

    def __init__(self, corpus: ShardCorpus, crop_size: int, seed: int | None = None,
                 bands: Sequence[str] | None = None) -> None:
        self.corpus, self.crop_size, self.seed = corpus, crop_size, seed
        self.band_idx = None
        if bands is not None and list(bands) != corpus.bands:
            from ..bands import band_indices

            self.band_idx = band_indices(corpus.bands, bands, source=corpus.path)

    def __len__(self) -> int:
        return len(self.corpus)

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng(None if self.seed is None else (self.seed, int(i)))
        try:
            img = self.corpus[i]["image"]
        except (IndexError, DataError):
            raise
        except Exception as e:  # noqa: BLE001 - decode/read errors of a damaged chunk
            raise DataError(f"{self.corpus.path}: cannot read sample {i} from shard "
                            f"{self.corpus.chunk_of(i)} ({type(e).__name__}: {e}); "
                            f"--skip-corrupt-shards ({SKIP_ENV}=1) leaves out shards found "
                            "damaged when the corpus is opened") from None
        if img.ndim == 4:
            img = img[rng.integers(img.shape[0])]
        if self.band_idx is not None:
            img = img[self.band_idx]
        s = self.crop_size
        if img.shape[-2] > s or img.shape[-1] > s:
            r = int(rng.integers(0, img.shape[-2] - s + 1))
            c = int(rng.integers(0, img.shape[-1] - s + 1))
            img = img[:, r:r + s, c:c + s]
        return {"image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))}


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
              region=None) -> ShardDataset:
        """Random ``size`` px crops, one per stored sample per epoch (``length`` is ignored: an
        epoch is one pass over the corpus; budgets are set in steps or time)."""
        if region is not None:
            raise ConfigError("shard corpora have no spatial region split")
        shape = self.corpus.meta.get("shape") or []
        if shape and min(shape[-2:]) < size:
            raise ConfigError(f"crop size {size} px is larger than the chips of "
                              f"{self.corpus.path} ({shape[-2]}x{shape[-1]} px)")
        # Map-style, because eossl.train gives the DataLoader its own resumable sampler (and
        # Lightning a DistributedSampler under DDP); stream with .corpus.dataset() elsewhere.
        return ShardCrops(self.corpus, size, seed=seed, bands=self._bands)


def open_shards(path: str | os.PathLike, cache=None, bands=None) -> ShardSource:
    """Open a corpus folder or URL as a source (used by sources.open_source for paths)."""
    return ShardSource(path, bands=bands)
