"""BigEarthNet v2 (reBEN) in its LMDB release format: Sentinel-2 L2A + Sentinel-1 patches,
19-class multi-label.

The full release (and the configilm sample) stores one LMDB entry per patch: a safetensors dict
of per-band arrays keyed by the S2 patch id (12 L2A bands at native size: 10 m 120x120, 20 m
60x60, 60 m 20x20) and one per Sentinel-1 partner keyed by ``s1_name`` (VV, VH float32 dB,
120x120). Labels and splits come from ``metadata.parquet``; patches with seasonal snow, clouds
or cloud shadow are listed in a second table,
``metadata_for_patches_with_snow_cloud_or_shadow.parquet``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..bands import SENTINEL1, SENTINEL2_L2A, band_indices, resolve_band_names
from ..errors import BandError, ConfigError, DataError

# The 19-class BigEarthNet nomenclature (Sumbul et al. 2021, "BigEarthNet-MM", Table 1; used
# unchanged by reBEN / BigEarthNet v2) in its canonical order. Identical to torchgeo 0.8.1's
# BigEarthNetV2.class_set (= BigEarthNet.class_sets[19]); written out here so that importing
# eossl.data does not import torchgeo (seconds), and a test checks the two stay equal.
CLASSES_19: tuple[str, ...] = (
    "Urban fabric",
    "Industrial or commercial units",
    "Arable land",
    "Permanent crops",
    "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub",
    "Beaches, dunes, sands",
    "Inland wetlands",
    "Coastal wetlands",
    "Inland waters",
    "Marine waters",
)

LMDB_DIR = "BigEarthNet-V2-LMDB"
METADATA = "metadata.parquet"
METADATA_SNOW_CLOUD = "metadata_for_patches_with_snow_cloud_or_shadow.parquet"
SPLITS = ("train", "validation", "test")

S2_BANDS: tuple[str, ...] = tuple(SENTINEL2_L2A.band_names)  # B01..B12 with B8A, no B10
S1_BANDS: tuple[str, ...] = tuple(SENTINEL1.band_names)      # VV, VH
_ALL_BANDS = S2_BANDS + S1_BANDS
# Native patch side in pixels per resolution (1.2 km patches).
_SIDE = {10: 120, 20: 60, 60: 20}


def _read_table(path: Path):
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"cannot read BigEarthNet metadata {path}: {e}") from None


# Open LMDB environments, one per data file and process. py-lmdb refuses to open the same files
# twice in one process, so datasets over one LMDB (train and validation, say) share an
# environment. An environment must not be used across fork(): a DataLoader worker finds its
# parent's entry (other pid), closes its inherited copy (read-only and lock-free, so the parent's
# stays valid) and opens its own.
_ENVS: dict[tuple, tuple[int, object]] = {}


def _environment(path: Path):
    import lmdb

    data = path / "data.mdb"
    try:
        st = data.stat()
    except OSError:
        raise DataError(f"BigEarthNet v2 LMDB {path} holds no data.mdb") from None
    key = (st.st_dev, st.st_ino)
    pid = os.getpid()
    held = _ENVS.get(key)
    if held is not None:
        if held[0] == pid:
            return held[1]
        try:
            held[1].close()
        except lmdb.Error:
            pass
        del _ENVS[key]
    try:
        env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False)
    except lmdb.Error as e:
        raise DataError(f"cannot open BigEarthNet v2 LMDB {path}: {e}") from None
    _ENVS[key] = (pid, env)
    return env


class BigEarthNetV2(Dataset):
    """BigEarthNet v2 patches from the reBEN LMDB, with multi-hot labels over 19 classes.

    Each item is ``{"image": float32 (C, S, S), "label": float32 (19,), "patch_id": str}``,
    raw values (S2 L2A digital numbers = reflectance x 10000, S1 backscatter in dB). The
    metadata's ``labels`` are lists of class names (as released) or of class ids 0..18 in
    :data:`CLASSES_19` order; anything else is refused with the patch id.

    Args:
        root: folder holding ``BigEarthNet-V2-LMDB/`` and ``metadata.parquet`` (and, if present,
            ``metadata_for_patches_with_snow_cloud_or_shadow.parquet``).
        split: ``"train"``, ``"validation"``, ``"test"`` or None for all patches.
        bands: band names (any order, Sentinel-2 L2A and/or VV, VH); default the 12 S2 bands.
        sar: append the Sentinel-1 VV and VH bands of the partner patch.
        size: side of the output in pixels; bands at another size are resampled bilinearly.
            None keeps native sizes, which only stacks bands of one resolution.
        exclude_snow_cloud: drop patches with seasonal snow, clouds or cloud shadow.
        lmdb_path, metadata_path: override the locations under ``root``.
    """

    classes = CLASSES_19
    num_classes = len(CLASSES_19)

    def __init__(self, root: str | os.PathLike, split: str | None = "train",
                 bands: Sequence[str] | None = None, sar: bool = False, size: int | None = 120,
                 exclude_snow_cloud: bool = False, *, lmdb_path: str | os.PathLike | None = None,
                 metadata_path: str | os.PathLike | None = None) -> None:
        self.root = Path(root)
        if split == "val":
            split = "validation"
        if split is not None and split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)} "
                              "or None for all")
        self.split = split
        if size is not None and (not isinstance(size, int) or size < 1):
            raise ConfigError(f"size must be a positive number of pixels or None, got {size!r}")
        self.size = size

        # Band list: registry names, S2 then S1 unless the caller orders them otherwise.
        wanted = list(S2_BANDS) if bands is None else [bands] if isinstance(bands, str) \
            else list(bands)
        if not wanted and not sar:
            raise ConfigError("bands is empty; name at least one band or pass sar=True")
        # the sensors are known here, so any of their spellings ('B4', 'b8a') is unambiguous
        wanted = resolve_band_names(wanted, [SENTINEL2_L2A, SENTINEL1],
                                    where="BigEarthNet v2 (Sentinel-2 L2A + S1)").names
        idx = band_indices(_ALL_BANDS, wanted, source="BigEarthNet v2 (Sentinel-2 L2A + S1)")
        names = [_ALL_BANDS[i] for i in idx]
        if sar:
            names += [b for b in S1_BANDS if b not in names]
        if len(set(names)) != len(names):
            raise ConfigError(f"bands lists a band twice: {names}")
        self.band_names: list[str] = names
        self._s2 = [b for b in names if b in S2_BANDS]
        self._s1 = [b for b in names if b in S1_BANDS]
        if size is None:
            sides = {b: _SIDE[int(self._resolution(b))] for b in names}
            if len(set(sides.values())) > 1:
                raise ConfigError(
                    "size=None keeps bands at their native size, but the chosen bands differ "
                    f"({', '.join(f'{b} {s}px' for b, s in sides.items())}) and cannot be "
                    "stacked; pass size=120 to resample all bands to the 10 m grid, or choose "
                    "bands of one resolution"
                )

        self.lmdb_path = Path(lmdb_path) if lmdb_path else self.root / LMDB_DIR
        meta_path = Path(metadata_path) if metadata_path else self.root / METADATA
        if not self.lmdb_path.is_dir():
            raise DataError(f"BigEarthNet v2 LMDB folder {self.lmdb_path} does not exist "
                            f"(expected {LMDB_DIR}/ with data.mdb under {self.root})")
        if not meta_path.is_file():
            raise DataError(f"BigEarthNet v2 metadata {meta_path} does not exist")
        self.metadata = self._load_metadata(meta_path, exclude_snow_cloud)
        self.patch_ids: list[str] = self.metadata["patch_id"].tolist()
        self._s1_names: list[str] = self.metadata["s1_name"].tolist()
        self._labels = self._encode_labels(meta_path)

        self._check_keys()

    @staticmethod
    def _resolution(band: str) -> float:
        return (SENTINEL1 if band in S1_BANDS else SENTINEL2_L2A).band(band).resolution_m

    def _load_metadata(self, meta_path: Path, exclude_snow_cloud: bool):
        import pandas as pd

        paths = [meta_path]
        # The full release ships the snow/cloud/shadow patches in a table of their own; they are
        # part of the data set (and of its splits) unless excluded.
        extra = meta_path.parent / METADATA_SNOW_CLOUD
        if extra.is_file() and not exclude_snow_cloud:
            paths.append(extra)
        need = {"patch_id", "labels", "split"} | ({"s1_name"} if self._s1 else set())
        tables = []
        for path in paths:  # each table on its own: concat would fill a missing column with NaN
            table = _read_table(path)
            missing = need - set(table.columns)
            if missing:
                raise DataError(f"{path} lacks column(s) {', '.join(sorted(missing))}; "
                                f"found {', '.join(map(str, table.columns))}")
            tables.append(table)
        meta = pd.concat(tables, ignore_index=True)
        if "s1_name" not in meta.columns:
            meta["s1_name"] = None
        meta = meta.drop_duplicates("patch_id")
        if exclude_snow_cloud:
            for flag in ("contains_seasonal_snow", "contains_cloud_or_shadow"):
                if flag in meta.columns:
                    meta = meta[~meta[flag].astype(bool)]
        if self.split is not None:
            meta = meta[meta["split"] == self.split]
        meta = meta.sort_values("patch_id").reset_index(drop=True)
        if meta.empty:
            raise DataError(f"no BigEarthNet v2 patches for split={self.split!r} in {meta_path}")
        return meta

    def _encode_labels(self, meta_path: Path) -> torch.Tensor:
        index = {c: i for i, c in enumerate(CLASSES_19)}
        out = torch.zeros(len(self.metadata), len(CLASSES_19), dtype=torch.float32)
        n = len(CLASSES_19)
        for row, (pid, labels) in enumerate(zip(self.patch_ids, self.metadata["labels"])):
            if isinstance(labels, (str, bytes)) or not hasattr(labels, "__iter__"):
                raise DataError(f"{meta_path}: patch {pid} has labels {labels!r}; expected a "
                                "list of class names or class ids")
            for name in labels:
                # class names (the reBEN release) or class ids 0..18 (CLASSES_19 order)
                if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
                    if not 0 <= int(name) < n:
                        raise DataError(f"{meta_path}: patch {pid} has label id {int(name)}, "
                                        f"outside the {n} BigEarthNet v2 classes (0..{n - 1})")
                    out[row, int(name)] = 1.0
                    continue
                if name not in index:
                    raise DataError(f"{meta_path}: patch {pid} has label {name!r}, which is not "
                                    f"one of the {n} BigEarthNet v2 classes")
                out[row, index[name]] = 1.0
        return out

    def _open(self):
        return _environment(self.lmdb_path)

    def _check_keys(self) -> None:
        """Every patch (and S1 partner, when SAR is used) the metadata lists must be stored."""
        keys = list(self.patch_ids) + (list(self._s1_names) if self._s1 else [])
        with self._open().begin(buffers=True) as txn:
            cur = txn.cursor()
            missing = [k for k in keys if not cur.set_key(str(k).encode())]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DataError(f"the BigEarthNet v2 LMDB {self.lmdb_path} lacks "
                            f"{', '.join(missing[:3])}{more}, listed in the metadata")

    def _entry(self, txn, key: str, bands: list[str]) -> list[np.ndarray]:
        from safetensors import SafetensorError
        from safetensors.numpy import load

        raw = txn.get(key.encode())
        if raw is None:
            raise DataError(f"the BigEarthNet v2 LMDB {self.lmdb_path} lacks {key}")
        try:
            arrays = load(bytes(raw))
        except (SafetensorError, ValueError, TypeError, OSError) as e:
            if not self._first_entry_decodes(txn):
                raise DataError(
                    f"{self.lmdb_path}: its entries are not safetensors dicts, so this is not "
                    "a BigEarthNet v2 (reBEN) LMDB; a BigEarthNet v1 LMDB (bigearthnet-encoder "
                    "or older ConfigILM) is not read: use the v1 release's GeoTIFF folders with "
                    "--data torchgeo:BigEarthNet --root DIR, or the v2 LMDB") from None
            raise DataError(f"corrupt safetensors entry {key!r} in {self.lmdb_path}: {e}") from None
        available = list(arrays)
        out = []
        for b in bands:
            if b not in arrays:
                raise BandError(f"band {b!r} is missing from LMDB entry {key!r} in "
                                f"{self.lmdb_path}; available bands: {', '.join(available)}")
            a = arrays[b]
            if a.ndim != 2:
                raise DataError(f"LMDB entry {key!r}: band {b} has shape {a.shape}, expected "
                                "a 2-D image")
            out.append(a)
        return out

    @staticmethod
    def _first_entry_decodes(txn) -> bool:
        """Whether the LMDB's first entry is a safetensors dict (one bad entry of a v2 LMDB
        is corruption; a store where even the first is not is another format)."""
        from safetensors.numpy import load

        with txn.cursor() as cur:
            if not cur.first():
                return False
            try:
                load(bytes(cur.value()))
                return True
            except Exception:  # any failure means "not safetensors"
                return False

    def __len__(self) -> int:
        return len(self.patch_ids)

    def __getitem__(self, i: int) -> dict:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} patches")
        i %= n
        pid = self.patch_ids[i]
        found: dict[str, np.ndarray] = {}
        with self._open().begin(buffers=True) as txn:
            if self._s2:
                found.update(zip(self._s2, self._entry(txn, pid, self._s2)))
            if self._s1:
                found.update(zip(self._s1, self._entry(txn, self._s1_names[i], self._s1)))
        if self._s1:
            self._check_pair(found, pid, self._s1_names[i])
        return {"image": self._stack([found[b] for b in self.band_names], pid),
                "label": self._labels[i].clone(), "patch_id": pid}

    def _check_pair(self, found: dict[str, np.ndarray], pid: str, s1_name: str) -> None:
        """The S1 partner must lie on the S2 10 m grid of its patch. Resampling would hide a
        partner of another footprint or pixel size, so a mismatch is an error, not a resize."""
        expected = None
        for b in self._s2:
            scale = self._resolution(b) / 10.0
            expected = (round(found[b].shape[0] * scale), round(found[b].shape[1] * scale))
            break
        sar = {b: tuple(found[b].shape) for b in self._s1}
        shapes = set(sar.values()) | ({expected} if expected else set())
        if len(shapes) > 1:
            got = ", ".join(f"{b} {h}x{w}" for b, (h, w) in sar.items())
            grid = f"; the S2 10 m grid is {expected[0]}x{expected[1]}" if expected else ""
            raise DataError(f"SAR/optical pair of patch {pid} (S1 partner {s1_name}) does not "
                            f"match: {got}{grid}; a pair must be co-registered on one grid")

    def _stack(self, arrays: list[np.ndarray], pid: str) -> torch.Tensor:
        chans = []
        for b, a in zip(self.band_names, arrays):
            t = torch.from_numpy(a.astype(np.float32))
            if self.size is not None and t.shape != (self.size, self.size):
                # Bilinear upsampling of the 20 m / 60 m bands onto the 10 m grid, pixel-area
                # aligned (align_corners=False), as torchgeo's BigEarthNetV2 does with rasterio.
                t = F.interpolate(t[None, None], size=(self.size, self.size), mode="bilinear",
                                  align_corners=False)[0, 0]
            chans.append(t)
        shapes = {tuple(c.shape) for c in chans}
        if len(shapes) > 1:
            raise ConfigError(f"patch {pid}: bands have sizes {sorted(shapes)} and cannot be "
                              "stacked with size=None; pass size=120")
        return torch.stack(chans)

    def __repr__(self) -> str:
        return (f"BigEarthNetV2({str(self.root)!r}, split={self.split!r}, {len(self)} patches, "
                f"bands={self.band_names}, size={self.size})")


def bigearthnet_source(root: str | os.PathLike, req=None):
    """A BigEarthNet v2 LMDB folder as a labelled chip source (multi-label, 19 classes):
    ``train`` + ``validation`` train, ``test`` scores (the release's own split). ``req``
    (a data/resolve.DataRequest) may pick bands (``--bands``) and add S1 (``--sensor
    sentinel2-l2a,sentinel1``)."""
    from torch.utils.data import ConcatDataset

    from ..bands import resolve_band_names, sensors_of
    from .chips import ChipSource, ChipSplit, DatasetChips

    fams = {s.family for s in sensors_of(getattr(req, "sensor", None))}
    sar = "sentinel1" in fams
    bands = None
    if req is not None and req.bands:
        wanted = req.bands if not isinstance(req.bands, str) else req.bands.split(",")
        bands = resolve_band_names(wanted, req.sensor or "sentinel2-l2a,sentinel1",
                                   where="--bands").names
        sar = False
    if fams == {"sentinel1"}:
        bands, sar = [], True
    parts = [BigEarthNetV2(root, split=s, bands=bands, sar=sar)
             for s in ("train", "validation", "test")]
    sizes = [len(p) for p in parts]
    offsets = np.cumsum([0] + sizes)
    split = ChipSplit("dataset", "BigEarthNet v2's own split: train + validation train, test "
                      "scores", {"kind": "dataset", "name": "BigEarthNetV2-LMDB"},
                      [np.arange(offsets[2], offsets[3])], [np.arange(0, offsets[2])])
    targets = np.concatenate([p._labels.numpy() for p in parts]).astype(np.int64)
    reader = DatasetChips(ConcatDataset(parts), parts[0].band_names,
                          sensor=None if sar else "sentinel2-l2a")
    root = Path(root)
    src = ChipSource(f"bigearthnet-v2:{root.name}", reader, targets, list(CLASSES_19),
                     "multilabel", split, data_id=str(root.resolve()),
                     exclude_test_areas=not getattr(req, "pretrain_on_test_areas", False),
                     shape=(parts[0].size or 120,) * 2)
    src.check()
    return src
