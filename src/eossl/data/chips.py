"""Labelled chips: many small images, each with its own label(s), as one data source.

Three layouts come here (docs/data.md):

- a folder of chips in class-named subfolders (the EuroSAT layout): ``ROOT/Forest/x.tif``;
- a CSV or Parquet table of chip paths with one label column (classification), several 0/1
  columns (multi-label) or numeric columns (regression), and optionally a ``split`` column;
- torchgeo's classification datasets on disk (data/torchgeo_data.py), with their own splits.

A :class:`ChipSource` gives what a scene source gives: ``folds()`` of train/test datasets for
the probes, ``crops()`` and ``stats()`` for pretraining (the test chips left out by default),
``pretrain_data()`` for the checkpoint. Chips carry no position here, so a k-fold split of
chips is random (stratified by class); use a ``split`` column when chips are neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .datasets import fill_invalid
from .stats import BandStats, StatsAccumulator, default_log_flags

TASKS = ("classification", "multilabel", "regression")
PATH_COLUMNS = ("path", "file", "filename", "image", "chip", "filepath", "image_path")
SPLIT_COLUMN = "split"


# ------------------------------------------------------------------------------ reading chips
class ChipReader:
    """Reads chip ``i`` as raw float32 (C, H, W) in ``bands`` order, and its invalid pixels."""

    bands: list[str]
    sensor: str | None = None
    nodata: float | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def where(self, i: int) -> str:
        return f"chip {i}"

    def invalid(self, a: np.ndarray) -> np.ndarray:
        bad = ~np.isfinite(a).all(axis=0)
        if self.nodata is not None and np.isfinite(self.nodata):
            bad |= (a == self.nodata).any(axis=0)
        return bad


class FileChips(ChipReader):
    """Chip files rasterio opens; every chip must have the same bands and size (checked on
    every file's header, so a stray chip is named before any work)."""

    def __init__(self, paths: Sequence[Path], *, sensor=None, band_names=None, bands=None,
                 nodata: float | None = None) -> None:
        import rasterio

        from .readers import name_raster_bands

        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise DataError("no chip files found")
        shapes, descriptions, file_nodata = [], {}, {}
        for p in self.paths:
            try:
                with rasterio.open(p) as src:
                    shapes.append((src.count, src.height, src.width))
                    if len(descriptions) < 1:
                        descriptions[p], file_nodata[p] = list(src.descriptions or []), src.nodata
            except rasterio.errors.RasterioError as e:
                raise DataError(f"{p}: cannot open the chip as a raster ("
                                f"{str(e).splitlines()[0][:120]})") from None
        # the shape most chips have is the rule; the first chip off it is named
        from collections import Counter

        shape = Counter(shapes).most_common(1)[0][0]
        ref = self.paths[shapes.index(shape)]
        for p, here in zip(self.paths, shapes):
            if here != shape:
                raise DataError(f"{p}: {here[0]} bands of {here[1]} x {here[2]} px, but {ref} "
                                f"(and most chips) has {shape[0]} bands of {shape[1]} x "
                                f"{shape[2]} px; every chip of one data set needs the same "
                                "bands and size")
        first = ref
        with rasterio.open(first) as src:
            descriptions, file_nodata = list(src.descriptions or []), src.nodata
        self.count, self.height, self.width = shape
        self.bands, self.indexes, self.sensor = name_raster_bands(
            first, self.count, descriptions, sensor=sensor, band_names=band_names, bands=bands)
        self.nodata = file_nodata if nodata is None else float(nodata)

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> np.ndarray:
        import rasterio

        with rasterio.open(self.paths[i]) as src:
            return src.read(self.indexes, out_dtype=np.float32)

    def where(self, i: int) -> str:
        return str(self.paths[i])


class DatasetChips(ChipReader):
    """Chips from a torch dataset that yields ``{"image": (C, H, W)}`` (torchgeo's)."""

    def __init__(self, dataset, bands: Sequence[str], pick: Sequence[int] | None = None,
                 image_key: str = "image", sensor: str | None = None) -> None:
        self.dataset, self.bands, self.key = dataset, list(bands), image_key
        self.pick = None if pick is None else list(pick)
        self.sensor = sensor
        self.nodata = None

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, i: int) -> np.ndarray:
        img = self.dataset[i][self.key]
        a = np.asarray(img, dtype=np.float32)
        return a[self.pick] if self.pick is not None else a


# ------------------------------------------------------------------------------ datasets
class ChipDataset(Dataset):
    """Some chips of a reader with their targets: ``{"image": raw float32 (C, H, W),
    "label": int | (K,) | (T,)}``; invalid pixels are filled band by band (as crops are)."""

    def __init__(self, reader: ChipReader, index: np.ndarray, targets: np.ndarray,
                 classes: Sequence[str], task: str) -> None:
        self.reader, self.index = reader, np.asarray(index, dtype=np.int64)
        self.labels = np.asarray(targets)[self.index]
        self.classes, self.task = tuple(classes), task

    @property
    def bands(self) -> list[str]:
        return self.reader.bands

    @property
    def band_names(self) -> list[str]:
        return self.reader.bands

    @property
    def target_names(self) -> list[str]:  # regression: the target columns
        return list(self.classes)

    @property
    def targets(self) -> np.ndarray:  # regression: (N, T) float targets
        return np.asarray(self.labels, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.index)

    def _read(self, k: int) -> np.ndarray:
        a = self.reader.read(int(self.index[k]))
        return fill_invalid(a, self.reader.invalid(a))

    def __getitem__(self, k: int) -> dict:
        y = self.labels[k]
        label = int(y) if self.task == "classification" else torch.as_tensor(
            y, dtype=torch.float32 if self.task == "regression" else torch.long)
        return {"image": torch.from_numpy(self._read(k)), "label": label}

    def images(self) -> np.ndarray:
        return np.stack([self._read(k) for k in range(len(self))])

    def class_counts(self) -> dict[str, int]:
        if self.task != "classification":
            return {}
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}


class ChipCrops(Dataset):
    """Random ``size`` px crops of random chips (pretraining on a chip data set)."""

    def __init__(self, reader: ChipReader, index: np.ndarray, size: int, length: int,
                 seed: int | None = None, max_nodata: float = 0.1, shape=None) -> None:
        if len(index) == 0:
            raise DataError("no chip is left to pretrain on (every chip is a test chip); "
                            "pretrain with --pretrain-on-test-areas or a split with a smaller "
                            "eval_share")
        h, w = shape
        if size > min(h, w):
            raise ConfigError(f"crop size {size} px is larger than the chips ({h} x {w} px); "
                              f"expected at most {min(h, w)}")
        self.reader, self.index, self.size = reader, np.asarray(index), size
        self.length, self.seed, self.max_nodata, self.hw = length, seed, max_nodata, (h, w)
        self.bands = reader.bands

    def __len__(self) -> int:
        return self.length

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng() if self.seed is None else np.random.default_rng(
            (self.seed, index))

    def __getitem__(self, index: int) -> dict:
        rng = self._rng(index)
        h, w = self.hw
        for _ in range(50):
            i = int(self.index[rng.integers(len(self.index))])
            a = self.reader.read(i)
            r = int(rng.integers(0, h - self.size + 1))
            c = int(rng.integers(0, w - self.size + 1))
            a = a[:, r:r + self.size, c:c + self.size]
            bad = self.reader.invalid(a)
            if bad.mean() <= self.max_nodata:
                return {"image": torch.from_numpy(fill_invalid(a, bad))}
        raise DataError(f"50 random chips ({self.reader.where(i)}, ...) all held more than "
                        f"{self.max_nodata:.0%} invalid pixels; is --nodata right?")


# ------------------------------------------------------------------------------ splits
@dataclass
class ChipSplit:
    """How chips divide into folds. ``kind``: ``kfold`` (seeded, stratified by class, over an
    ``eval_share`` of the chips: the others are pretraining-only and train in every fold),
    ``column`` (a table's split column), ``dataset`` (a torchgeo dataset's own split).
    ``tests``/``trains``: per fold, chip indices."""

    kind: str
    description: str
    spec_: dict
    tests: list = field(default_factory=list)
    trains: list = field(default_factory=list)

    def spec(self) -> dict:
        return dict(self.spec_)

    def evaluation_chips(self) -> np.ndarray:
        return np.unique(np.concatenate([np.asarray(t, np.int64) for t in self.tests]))


def kfold_chips(targets: np.ndarray, task: str, k: int = 5, seed: int = 0,
                eval_share: float = 0.5) -> ChipSplit:
    n = len(targets)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    if task == "classification":  # stratified: each class's chips dealt over the folds
        chosen = []
        for c in np.unique(targets):
            idx = order[targets[order] == c]
            chosen.append(idx[:max(1, int(round(eval_share * len(idx))))] if eval_share < 1
                          else idx)
        chosen = np.concatenate(chosen)
        chosen = chosen[np.argsort(np.argsort(order)[chosen], kind="stable")]
        fold = np.empty(len(chosen), np.int64)
        for c in np.unique(targets[chosen]):
            sel = np.flatnonzero(targets[chosen] == c)
            fold[sel] = (np.arange(len(sel)) + int(rng.integers(k))) % k
    else:
        chosen = order[:max(k, int(round(eval_share * n)))] if eval_share < 1 else order
        fold = np.arange(len(chosen)) % k
    tests = [np.sort(chosen[fold == f]) for f in range(k)]
    all_idx = np.arange(n)
    trains = [np.setdiff1d(all_idx, t) for t in tests]
    share = "" if eval_share >= 1 else f" over {eval_share:.0%} of the chips"
    return ChipSplit("kfold", f"random {k}-fold of chips{share} (stratified by class), seed "
                     f"{seed}; chips carry no position, so neighbouring chips may score "
                     "optimistically", {"kind": "chip-kfold", "k": k, "seed": seed,
                                        "eval_share": eval_share}, tests, trains)


def parse_chip_split(text, targets, task, column_values=None) -> ChipSplit:
    """``--split`` for chips: ``kfold[:k=5,seed=0,eval_share=0.5]`` or ``column:NAME``
    (train/test values, or fold numbers)."""
    text = (text or "kfold").strip()
    head, _, rest = text.partition(":")
    if head == "kfold":
        kw = {"k": 5, "seed": 0, "eval_share": 0.5}
        for item in filter(None, rest.split(",")):
            key, eq, val = item.partition("=")
            if not eq:  # kfold:5
                key, val = "k", item
            key = key.strip()
            if key not in kw:
                raise ConfigError(f"--split {text}: unknown setting {key!r}; kfold of chips "
                                  "takes k, seed, eval_share")
            try:
                kw[key] = float(val) if key == "eval_share" else int(val)
            except ValueError:
                raise ConfigError(f"--split {text}: {key}={val!r} is not a number") from None
        if kw["k"] < 2 or not 0 < kw["eval_share"] <= 1:
            raise ConfigError(f"--split {text}: need k >= 2 and eval_share in (0, 1]")
        return kfold_chips(targets, task, **kw)
    if head == "column":
        if column_values is None:
            raise ConfigError(f"--split {text}: a column split needs a chip table with that "
                              "column")
        return column_split(column_values, rest)
    raise ConfigError(f"--split {text!r}: chips take kfold[:k=5,seed=0,eval_share=0.5] or "
                      "column:NAME")


def column_split(values, column: str) -> ChipSplit:
    vals = np.asarray([str(v).strip().lower() for v in values])
    if set(vals) <= {"train", "test", "val", "validation"}:
        if "test" not in set(vals):
            raise DataError(f"split column {column!r} marks no chip 'test'; expected train/test "
                            "(val counts as train)")
        tests = [np.flatnonzero(vals == "test")]
    else:
        try:
            nums = np.asarray([int(float(v)) for v in vals])
        except ValueError:
            raise DataError(f"split column {column!r} holds {', '.join(sorted(set(vals))[:6])}; "
                            "expected train/test or fold numbers") from None
        tests = [np.flatnonzero(nums == f) for f in sorted(set(nums))]
    n = len(vals)
    return ChipSplit("column", f"user split: column {column!r} ({len(tests)} fold(s))",
                     {"kind": "column", "column": column}, tests,
                     [np.setdiff1d(np.arange(n), t) for t in tests])


# ------------------------------------------------------------------------------ the source
class ChipSource:
    """Labelled chips as a data source (see the module docstring)."""

    polygons = None  # no vector labels: callers that test for them see a chip source

    def __init__(self, name: str, reader: ChipReader, targets: np.ndarray, classes: Sequence[str],
                 task: str, split: ChipSplit, *, data_id: str | None = None,
                 exclude_test_areas: bool = True, shape=None, cache=None,
                 labels_id: str | None = None) -> None:
        if task not in TASKS:
            raise ConfigError(f"task {task!r}; expected one of {', '.join(TASKS)}")
        self.name, self.reader, self.task = name, reader, task
        self.targets = np.asarray(targets)
        self.classes = list(classes)
        self.split = split
        self.data_id = data_id or name
        self.labels_id = labels_id
        self.exclude_test_areas = exclude_test_areas
        self.shape = shape
        self.cache = cache
        self.notes: list[str] = []
        self._folds = None
        self.labels = True  # a labelled source (train.py's online probe, benchmark)

    @property
    def bands(self) -> list[str]:
        return self.reader.bands

    @property
    def sensor(self) -> str | None:
        return self.reader.sensor

    @property
    def scenes(self):  # chips are not scenes: scene-only evaluations refuse politely
        raise ConfigError(f"{self.name} is a set of labelled chips, not a scene; this "
                          "evaluation needs a scene with a label map")

    def check(self) -> None:
        """Bad input found before any work: a class with too few chips, an empty fold."""
        if self.task == "classification" and self.split.kind == "kfold":
            counts = np.bincount(self.targets, minlength=len(self.classes))
            few = [f"{c} ({int(n)})" for c, n in zip(self.classes, counts) if n < 2]
            if few:
                raise DataError(f"{self.name}: class(es) {', '.join(few)} have fewer than 2 "
                                "chips; a split needs at least 2 per class (one to train, one "
                                "to test): add chips or leave the class out (--classes)")
        for f, (tr, te) in enumerate(zip(self.split.trains, self.split.tests)):
            for part, idx in (("test", te), ("train", tr)):
                if len(idx) == 0:
                    raise DataError(f"{self.name}: fold {f} of the split "
                                    f"({self.split.description}) has an empty {part} set; use "
                                    "fewer folds or another split")

    def folds(self, patch_size: int | None = None, min_share: float | None = None
              ) -> list:
        """Train/test chip datasets of every fold (sources.PatchFold; chips are used at their
        own size)."""
        from .sources import PatchFold

        if self._folds is None:
            self._folds = [PatchFold(f, ChipDataset(self.reader, tr, self.targets, self.classes,
                                                    self.task),
                                     ChipDataset(self.reader, te, self.targets, self.classes,
                                                 self.task))
                           for f, (tr, te) in enumerate(zip(self.split.trains,
                                                            self.split.tests))]
        return self._folds

    def patches(self, split: str, size: int | None = None, min_share=None) -> ChipDataset:
        """Fold 0's ``train`` or ``test`` chips (the API scene sources keep for now)."""
        if split not in ("train", "test"):
            raise ConfigError(f"unknown split {split!r}; expected 'train' or 'test'")
        f = self.folds()[0]
        return f.train if split == "train" else f.test

    # ----------------------------------------------------------------- pretraining
    def pretraining_chips(self) -> np.ndarray:
        n = len(self.reader)
        if not self.exclude_test_areas:
            return np.arange(n)
        return np.setdiff1d(np.arange(n), self.split.evaluation_chips())

    def crops(self, size: int, length: int, seed: int | None = None, region=None) -> ChipCrops:
        if region is not None:
            raise ConfigError(f"{self.name}: chips have no column region")
        return ChipCrops(self.reader, self.pretraining_chips(), size, length, seed,
                         shape=self.shape)

    def stats(self, max_chips: int = 512) -> BandStats:
        idx = self.pretraining_chips()
        if len(idx) == 0:
            idx = np.arange(len(self.reader))
        pick = np.random.default_rng(0).permutation(idx)[:max_chips]
        acc = StatsAccumulator(self.bands, default_log_flags(self.bands))
        for i in pick:
            a = self.reader.read(int(i))
            acc.update(a, ~self.reader.invalid(a))
        return acc.finish()

    @property
    def split_note(self) -> str:
        seen = ("pretraining on this source excludes the test chips" if self.exclude_test_areas
                else "pretraining on this source SAW the test chips (--pretrain-on-test-areas)")
        return f"{self.split.description}; {seen}"

    def pretrain_data(self) -> dict:
        return {"data": self.data_id, "labels": self.labels_id, "sensor": self.sensor,
                "split": self.split.spec(), "excluded_test_areas": bool(self.exclude_test_areas)}

    def pretraining_note(self, meta: dict | None) -> str:
        from .sources import pretraining_note

        return pretraining_note(meta, self.pretrain_data(), "test chips")

    def __repr__(self) -> str:
        return (f"ChipSource({self.name!r}, {len(self.reader)} chips, {self.task}, "
                f"{len(self.classes)} {'targets' if self.task == 'regression' else 'classes'})")


# ------------------------------------------------------------------------------ layouts
def _is_raster_name(p: Path) -> bool:
    from .resolve import IMAGE_SUFFIXES

    return p.suffix.lower() in IMAGE_SUFFIXES + (".png", ".jpg", ".jpeg")


def is_chip_folder(p: Path) -> bool:
    """A folder of class-named subfolders holding images, with no image of its own."""
    entries = list(p.iterdir())
    if any(e.is_file() and _is_raster_name(e) for e in entries):
        return False
    subs = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    with_chips = [d for d in subs if any(_is_raster_name(f) for f in d.iterdir())]
    return len(with_chips) >= 2


def chip_folder(root: Path, *, classes=None, sensor=None, band_names=None, bands=None,
                nodata=None, split=None, exclude_test_areas: bool = True) -> ChipSource:
    """The EuroSAT layout: ``ROOT/<Class>/<chip>.tif``; classes are the subfolder names
    (sorted, or ordered/subset by ``classes``)."""
    root = Path(root)
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    names = found if classes is None else _listify(classes)
    missing = [c for c in names if c not in found]
    if missing:
        raise DataError(f"{root}: no class folder {', '.join(missing)} (class folders: "
                        f"{', '.join(found)})")
    paths, targets = [], []
    for k, c in enumerate(names):
        files = sorted(f for f in (root / c).iterdir() if f.is_file() and _is_raster_name(f))
        paths += files
        targets += [k] * len(files)
    empty = [c for c in names if c not in {names[t] for t in targets}]
    if empty:
        raise DataError(f"{root}: class folder(s) {', '.join(empty)} hold no chip")
    reader = FileChips(paths, sensor=sensor, band_names=band_names, bands=bands, nodata=nodata)
    targets = np.asarray(targets, np.int64)
    sp = parse_chip_split(split, targets, "classification")
    src = ChipSource(root.name, reader, targets, names, "classification", sp,
                     data_id=str(root.resolve()), exclude_test_areas=exclude_test_areas,
                     shape=(reader.height, reader.width))
    src.check()
    return src


def _listify(v) -> list[str]:
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return [str(s).strip() for s in v]


def read_table(path: Path):
    import pandas as pd

    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except Exception as e:  # pandas/pyarrow raise many types; all mean "unreadable table"
        raise DataError(f"{path}: cannot read the table ({str(e).splitlines()[0][:120]}); "
                        "expected a CSV or Parquet file") from None


def chip_table(path: Path, *, label_column=None, classes=None, sensor=None, band_names=None,
               bands=None, nodata=None, split=None, exclude_test_areas: bool = True
               ) -> ChipSource:
    """A CSV/Parquet table: a column of chip paths (relative to the table's folder), label
    column(s) (``--label-column A`` or ``A,B,C``) and optionally a ``split`` column."""
    path = Path(path)
    df = read_table(path)
    cols = [str(c) for c in df.columns]
    pcol = next((c for c in cols if c.lower() in PATH_COLUMNS), None)
    if pcol is None:
        raise DataError(f"{path}: no column of chip paths; expected one named "
                        f"{' / '.join(PATH_COLUMNS[:4])} (columns: {', '.join(cols)})")
    label_cols = _listify(label_column) if label_column else [
        c for c in cols if c != pcol and c.lower() != SPLIT_COLUMN and not c.startswith("_")]
    if not label_column and len(label_cols) != 1:
        raise ConfigError(f"{path}: which column(s) hold the labels? give --label-column A (one "
                          "class column) or A,B,C (multi-label 0/1 or regression targets); "
                          f"columns: {', '.join(cols)}")
    missing = [c for c in label_cols if c not in cols]
    if missing:
        raise DataError(f"{path}: no column {', '.join(missing)}; columns are {', '.join(cols)}")
    df = df.dropna(subset=[pcol] + label_cols)
    files = [Path(p) if Path(p).is_absolute() else path.parent / str(p) for p in df[pcol]]
    absent = [f for f in files if not f.is_file()]
    if absent:
        raise DataError(f"{path}: chip file {absent[0]} does not exist ({len(absent)} of "
                        f"{len(files)} missing); paths are read relative to the table's folder")
    if len(label_cols) == 1:
        v = df[label_cols[0]]
        import pandas as pd

        numeric = pd.api.types.is_numeric_dtype(v)
        if numeric and not np.all(np.asarray(v, float) == np.round(np.asarray(v, float))):
            task, targets, names = "regression", np.asarray(v, np.float32)[:, None], label_cols
        else:
            from .labels import _value_name

            values = sorted(set(v.tolist()), key=lambda x: (isinstance(x, str), x))
            vnames = [_value_name(x) for x in values]
            names = vnames if classes is None else _listify(classes)
            unknown = [c for c in names if c not in vnames]
            if unknown:
                raise DataError(f"{path}: --classes {', '.join(unknown)} not found in column "
                                f"{label_cols[0]!r} (values: {', '.join(vnames[:30])})")
            ids = {values[vnames.index(c)]: i for i, c in enumerate(names)}
            keep = v.map(lambda x: x in ids).to_numpy()
            df, files = df[keep], [f for f, k in zip(files, keep) if k]
            task, targets = "classification", np.asarray(df[label_cols[0]].map(ids), np.int64)
    else:
        import pandas as pd

        if not all(pd.api.types.is_numeric_dtype(df[c]) for c in label_cols):
            raise DataError(f"{path}: label columns {', '.join(label_cols)} must be numeric "
                            "(0/1 for multi-label, numbers for regression)")
        block = df[label_cols].to_numpy(dtype=float)
        binary = np.isin(block, (0, 1)).all()
        task = "multilabel" if binary else "regression"
        targets = block.astype(np.int64 if binary else np.float32)
        names = label_cols
    reader = FileChips(files, sensor=sensor, band_names=band_names, bands=bands, nodata=nodata)
    if split is None and SPLIT_COLUMN in [c.lower() for c in cols]:
        split = f"column:{next(c for c in cols if c.lower() == SPLIT_COLUMN)}"
    column_values = None
    if split and str(split).startswith("column:"):
        col = str(split).partition(":")[2]
        if col not in df.columns:
            raise DataError(f"{path}: no split column {col!r}; columns are {', '.join(cols)}")
        column_values = df[col].tolist()
    sp = parse_chip_split(split, targets, task, column_values)
    src = ChipSource(path.stem, reader, targets, names, task, sp,
                     data_id=str(path.resolve()), exclude_test_areas=exclude_test_areas,
                     shape=(reader.height, reader.width), labels_id=str(path.resolve()))
    src.check()
    return src


__all__ = ["ChipSource", "ChipDataset", "ChipReader", "FileChips", "DatasetChips", "ChipSplit",
           "chip_folder", "chip_table", "is_chip_folder", "kfold_chips", "column_split"]

