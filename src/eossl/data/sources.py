"""Data sources: what ``--data`` means once resolved (data/resolve.py is the resolver).

A source turns a name (a real sample) or a user's imagery (+ labels) into the datasets that
pretraining and evaluation need. :class:`SceneSource` is the one for scenes: one or more
rasters on their own grids, optional labels (vector or raster) and a spatial split. New
sources register here by name; the CLI and the benchmark pick them up.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..bands import get_sensor
from ..errors import ConfigError, DataError
from . import samples
from .datasets import (IGNORE_INDEX, OSM_CLASSES, DenseLabelTiles, LabelledPatches,
                       RandomCropDataset, majority_patches, tile_items)
from .readers import SceneStack, stacked_scene
from .splits import FoldArea, MaskSplit, SceneSplit, SpatialKFold, SpatialSplit, inside
from .stats import BandStats, StatsAccumulator, default_log_flags

OSM_POLYGONS = "gis_osm_landuse-water_a_free_1_area-10000-to-500000.gpkg"
DEFAULT_MIN_SHARE = 0.8


@dataclass
class PatchFold:
    """One fold of labelled patches: ``train`` and ``test`` datasets (``.labels``, ``.classes``,
    ``.bands``, ``.images()``; items ``{"image", "label"}``)."""

    index: int
    train: object
    test: object


def pretraining_note(meta: dict | None, mine: dict, what: str = "test areas") -> str:
    """One line for reports: did the pretraining recorded in a checkpoint's metadata (its
    ``pretrain_data``) see the test ``what`` of the data described by ``mine`` (a source's
    ``pretrain_data()``)? Splits that differ only in their gap test the same blocks."""
    pd = (meta or {}).get("pretrain_data") if isinstance(meta, dict) else None
    if not pd:
        return f"pretraining data not recorded (older checkpoint): it may have seen the {what}"
    if pd.get("data") != mine["data"]:
        return f"pretrained on other data ({pd.get('data')})"
    if not pd.get("excluded_test_areas"):
        return f"pretraining SAW the {what} (pretrained on all the data)"
    if pd.get("labels") != mine.get("labels"):
        return (f"pretraining excluded the {what} of other labels ({pd.get('labels')}); it may "
                "have seen some of these")
    theirs, ours = pd.get("split"), mine.get("split")
    if theirs == ours or (theirs and ours and dict(theirs, gap=0) == dict(ours, gap=0)):
        return f"pretraining excluded these {what}"
    return (f"pretraining excluded the {what} of another split ({theirs}); it may have seen "
            "some of these")


@dataclass
class SceneSource:
    """Scenes for pretraining, with optional labels for patch classification and segmentation.

    ``scenes``: each on its own grid and CRS (never mosaicked); ``labels``: vector or raster
    labels (data/labels.py) placed on every scene; ``split``: how labelled areas divide into
    folds (default :class:`SpatialKFold`). ``exclude_test_areas``: pretraining crops (and the
    normalisation statistics) stay out of the evaluation region; see docs/data.md.
    """

    name: str
    scenes: list[SceneStack]
    labels: object = None
    cache: Path | None = None
    split: SceneSplit | None = None
    min_share: float = DEFAULT_MIN_SHARE
    exclude_test_areas: bool = True
    explicit_classes: bool = False
    data_id: str | None = None
    task: str = "classification"
    _maps: dict = field(default_factory=dict, repr=False)
    _folds: dict = field(default_factory=dict, repr=False)
    notes: list = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.labels is not None and self.split is None:
            self.split = SpatialKFold()
        self.data_id = self.data_id or self.name

    # ----------------------------------------------------------------- what it holds
    @property
    def bands(self) -> list[str]:
        return self.scenes[0].bands

    @property
    def sensor(self) -> str | None:
        return self.scenes[0].sensor

    @property
    def polygons(self) -> Path | None:
        """The label file (None without labels); kept for callers that test for labels."""
        return None if self.labels is None else Path(self.labels.path)

    @property
    def classes(self) -> list[str]:
        return list(self.labels.classes) if self.labels is not None else []

    def _need_labels(self) -> None:
        if self.labels is None:
            raise ConfigError(f"data source {self.name!r} has no labels; labelled patches need "
                              "a label file (--labels FILE: polygons, points or a label raster)")

    def label_maps(self) -> list[np.ndarray]:
        """(H, W) uint8 class ids per scene (ids index :attr:`classes`; 255 unlabelled)."""
        self._need_labels()
        for i, s in enumerate(self.scenes):
            if i not in self._maps:
                self._maps[i] = self.labels.label_map(s)
        return [self._maps[i] for i in range(len(self.scenes))]

    def label_map(self) -> np.ndarray:
        """The first scene's label map."""
        return self.label_maps()[0]

    def check_labels(self) -> None:
        """DataError when the labels place nothing on any scene (wrong file or CRS)."""
        if self.labels is None:
            return
        if not any(self.labels.overlaps(s) for s in self.scenes):
            b = self.scenes[0].bounds
            raise DataError(
                f"{self.labels.path}: the labels do not overlap the imagery "
                f"({', '.join(s.name for s in self.scenes[:3])}, CRS {self.scenes[0].crs}, "
                f"bounds {b.left:.0f}, {b.bottom:.0f}, {b.right:.0f}, {b.top:.0f}); expected "
                "labels of the same place")

    # ----------------------------------------------------------------- splits
    def _split_for(self, i: int, gap: int | None = None) -> SceneSplit:
        sp = self.split
        if isinstance(sp, MaskSplit):
            s = self.scenes[i]
            if (s.height, s.width) not in sp._maps or len(self.scenes) > 1:
                tests = self._mask_tests(s)
                sp.bind(s.height, s.width, tests)
        if gap is not None and gap > sp.gap:
            sp = sp.with_gap(gap)
        return sp

    def _mask_tests(self, scene) -> list[np.ndarray]:
        sp = self.split
        if sp.kind == "column":
            if self.labels is None or not hasattr(self.labels, "split_tests"):
                raise ConfigError(f"--split column:{sp.column} needs a vector label file with "
                                  "that column")
            return self.labels.split_tests(scene, sp.column)
        import geopandas as gpd
        from rasterio import features

        try:
            gdf = gpd.read_file(sp.path)
        except Exception as e:  # pyogrio raises several types; all mean unreadable
            raise DataError(f"{sp.path}: cannot read the test areas ({str(e)[:120]})") from None
        if gdf.crs is None:
            raise DataError(f"{sp.path}: the test-area file has no CRS; expected one")
        gdf = gdf.to_crs(scene.crs)
        geoms = [g for g in gdf.geometry if g is not None and not g.is_empty]
        if not geoms:
            return [np.zeros((scene.height, scene.width), bool)]
        return [features.rasterize(((g, 1) for g in geoms), out_shape=(scene.height,
                                                                         scene.width),
                                   transform=scene.transform, fill=0, dtype="uint8") > 0]

    def _sample_map(self, i: int) -> np.ndarray:
        """What the split deals into folds: the labels that can make a sample. Points as they
        are; polygons only in cells of ``gap`` px mostly (min_share) one class, so that a
        block chosen for testing holds whole labelled patches, not a sliver of a field. The
        same for every patch size, so pretraining and evaluation see one split."""
        key = ("sample", i)
        if key not in self._maps:
            lm = self.label_maps()[i]
            if self.labels.points:
                self._maps[key] = lm
            else:
                g = max(8, int(getattr(self.split, "gap", 16)))
                h, w = (lm.shape[0] // g) * g, (lm.shape[1] // g) * g
                cells = lm[:h, :w].reshape(h // g, g, w // g, g).transpose(0, 2, 1, 3)
                cells = cells.reshape(h // g, w // g, g * g)
                n = len(self.classes)
                counts = np.stack([(cells == k).sum(-1) for k in range(n)], -1)
                good = counts.max(-1) >= self.min_share * g * g
                out = np.full(lm.shape, IGNORE_INDEX, np.uint8)
                keep = np.repeat(np.repeat(good, g, 0), g, 1)
                out[:h, :w][keep] = lm[:h, :w][keep]
                self._maps[key] = out
        return self._maps[key]

    def fold_areas(self, i: int = 0, gap: int | None = None) -> list[FoldArea]:
        """The split's fold areas on scene ``i``."""
        self._need_labels()
        s = self.scenes[i]
        return self._split_for(i, gap).folds(s.height, s.width, self._sample_map(i))

    def pretraining_masks(self) -> list[np.ndarray | None] | None:
        """Where pretraining may crop, per scene (None: anywhere)."""
        if self.labels is None or self.split is None or not self.exclude_test_areas:
            return None
        out = []
        for i, s in enumerate(self.scenes):
            out.append(self._split_for(i).pretraining_mask(s.height, s.width,
                                                           self._sample_map(i)))
        return out

    @property
    def split_note(self) -> str:
        """One line for reports: the split, and what pretraining on this source sees."""
        if self.labels is None:
            return "no labels: no split"
        seen = ("pretraining on this source excludes the test areas" if self.exclude_test_areas
                else "pretraining on this source SAW the test areas (--pretrain-on-test-areas)")
        return f"{self.split.description}; {seen}"

    def pretrain_data(self) -> dict:
        """The checkpoint's ``pretrain_data`` (methods/base.py): which data, which split, and
        whether its test areas were left out."""
        excluded = self.pretraining_masks() is not None
        lab = None
        if self.labels is not None:
            lp = Path(self.labels.path)
            lab = str(lp.resolve()) if lp.exists() else str(lp)
        return {"data": self.data_id, "labels": lab, "sensor": self.sensor,
                "split": self.split.spec() if (self.split is not None and self.labels is not None)
                else None, "excluded_test_areas": bool(excluded)}

    def pretraining_note(self, meta: dict | None) -> str:
        """Whether a checkpoint's pretraining saw this source's test areas (its
        ``pretrain_data`` metadata against this source's)."""
        return pretraining_note(meta, self.pretrain_data(), "test areas")

    # ----------------------------------------------------------------- labelled patches
    def _candidates(self, size: int, min_share: float) -> list[list[tuple[int, int, int]]]:
        """Per scene: (row, col, class) of every labelled patch before the split."""
        out = []
        maps = self.label_maps()
        n = len(self.classes)
        for i, s in enumerate(self.scenes):
            if size > min(s.height, s.width):
                raise ConfigError(f"patch size {size} px is larger than {s.name} ({s.height} x "
                                  f"{s.width} px)")
            valid = s.valid_map()
            if self.labels.points:
                cands = []
                for r, c, k in self.labels.point_samples(s):
                    r0 = min(max(r - size // 2, 0), s.height - size)
                    c0 = min(max(c - size // 2, 0), s.width - size)
                    if valid[r0:r0 + size, c0:c0 + size].all():
                        cands.append((r0, c0, k))
            else:
                cands = majority_patches(s, maps[i], size, min_share, n, valid=valid)
            out.append(cands)
        return out

    def folds(self, patch_size: int = 16, min_share: float | None = None) -> list[PatchFold]:
        """Labelled patches of every fold of the split (train and test per fold).

        Classes with no usable patch are left out of the fold datasets' ``classes`` and said
        in :attr:`notes` (or refused, when asked for with ``--classes``).
        """
        self._need_labels()
        min_share = self.min_share if min_share is None else float(min_share)
        key = (int(patch_size), min_share)
        if key in self._folds:
            return self._folds[key]
        cands = self._candidates(patch_size, min_share)
        counts = np.bincount([k for per in cands for _, _, k in per],
                             minlength=len(self.classes))
        why = (f"no {patch_size} px patch has the class on >= {min_share:.0%} of its pixels "
               "(--min-share, --patch-size)" if not self.labels.points else
               f"no point lies where a {patch_size} px patch is fully valid")
        empty = [c for c, n in zip(self.classes, counts) if n == 0]
        few = [c for c, n in zip(self.classes, counts) if n == 1]
        if self.explicit_classes and (empty or few):
            bad = empty + few
            raise DataError(f"class(es) {', '.join(bad)} of --classes have "
                            f"{' / '.join(str(int(counts[self.classes.index(c)])) for c in bad)} "
                            f"usable patch(es); a split needs at least 2 per class (one to "
                            f"train, one to test): {why}, or leave them out of --classes")
        keep = [i for i, n in enumerate(counts) if n > 0]
        if not keep:
            raise DataError(f"{self.labels.path}: no usable labelled patch on "
                            f"{', '.join(s.name for s in self.scenes[:3])}: {why}")
        if empty:
            note = (f"classes with no usable patch (left out): {', '.join(empty)}: {why}")
            if note not in self.notes:
                self.notes.append(note)
                warnings.warn(note, stacklevel=2)
        remap = {old: new for new, old in enumerate(keep)}
        classes = [self.classes[i] for i in keep]
        per_fold: dict[int, tuple[list, list]] = {}
        for i, s in enumerate(self.scenes):
            for fa in self.fold_areas(i, gap=patch_size):
                ok_tr, ok_te = inside(fa.train, patch_size), inside(fa.test, patch_size)
                tr, te = per_fold.setdefault(fa.index, ([], []))
                for r, c, k in cands[i]:
                    if ok_te[r, c]:
                        te.append((i, r, c, remap[k]))
                    elif ok_tr[r, c]:
                        tr.append((i, r, c, remap[k]))
        out = []
        for f in sorted(per_fold):
            tr, te = per_fold[f]
            for part, items in (("test", te), ("train", tr)):
                if not items:
                    fix = ("use fewer folds or smaller blocks (--split kfold:k=3,block=64), "
                           if isinstance(self.split, SpatialKFold) else
                           "check the split's test areas against the labels, or use ")
                    raise DataError(
                        f"fold {f} of the split ({self.split.description}) has an empty {part} "
                        f"set: none of its {patch_size} px labelled patches lies wholly in its "
                        f"{part} area; {fix}a smaller --patch-size or a lower --min-share")
            out.append(PatchFold(f, LabelledPatches(self.scenes, size=patch_size, classes=classes,
                                                    items=tr),
                                 LabelledPatches(self.scenes, size=patch_size, classes=classes,
                                                 items=te)))
        self._folds[key] = out
        return out

    def patches(self, split: str, size: int = 16, min_share: float | None = None,
                spatial_split: SpatialSplit | None = None) -> LabelledPatches:
        """Fold 0's ``train`` or ``test`` patches (kept while callers move to :meth:`folds`);
        with ``spatial_split``, that west/east block of the first scene."""
        if split not in ("train", "test"):
            raise ConfigError(f"unknown split {split!r}; expected 'train' or 'test'")
        if spatial_split is not None:
            return LabelledPatches(self.scenes[0], self.label_map(), split=split, size=size,
                                   min_share=self.min_share if min_share is None else min_share,
                                   spatial_split=spatial_split, classes=self.classes)
        fold = self.folds(size, min_share)[0]
        return fold.train if split == "train" else fold.test

    def dense_folds(self, tile_size: int = 32, min_labelled: float = 0.0
                    ) -> list[tuple[DenseLabelTiles, DenseLabelTiles]]:
        """(train, test) tiles with per-pixel masks for every fold (segmentation)."""
        self._need_labels()
        maps = self.label_maps()
        per_fold: dict[int, tuple[list, list]] = {}
        for i, s in enumerate(self.scenes):
            for fa in self.fold_areas(i, gap=tile_size):
                tr, te = per_fold.setdefault(fa.index, ([], []))
                te += tile_items(s, maps[i], i, fa.test, tile_size, min_labelled)
                tr += tile_items(s, maps[i], i, fa.train, tile_size, min_labelled)
        out = []
        for f in sorted(per_fold):
            tr, te = per_fold[f]
            for part, items in (("test", te), ("train", tr)):
                if not any((maps[k][r:r + tile_size, c:c + tile_size] != IGNORE_INDEX).any()
                           for k, r, c in items):
                    raise DataError(f"fold {f} of the split ({self.split.description}) has no "
                                    f"labelled {tile_size} px tile in its {part} area; use "
                                    "fewer folds, smaller blocks or a smaller --tile-size")
            kw = dict(size=tile_size, num_classes=len(self.classes))
            out.append((DenseLabelTiles(self.scenes, maps, items=tr, **kw),
                        DenseLabelTiles(self.scenes, maps, items=te, **kw)))
        return out

    # ----------------------------------------------------------------- pretraining
    def stats(self, region: tuple[int, int] | None = None) -> BandStats:
        """Per-band statistics over the valid pixels pretraining may use (the evaluation
        region left out when test areas are excluded)."""
        acc = StatsAccumulator(self.bands, default_log_flags(self.bands))
        masks = self.pretraining_masks() or [None] * len(self.scenes)
        for s, m in zip(self.scenes, masks):
            step = max(1, int(np.ceil(np.sqrt(s.height * s.width / 4e6))))  # <= 4 Mpx per scene
            # a loaded scene as it is; a small one read whole (not kept); a large one decimated
            a = s._array if s._array is not None else (
                s.read() if s.nbytes <= 512 << 20 else None)
            if a is None:  # a large scene: a decimated read (GDAL's overviews when it has them)
                a = s._handle().read(s.indexes, out_shape=(len(s.bands), s.height // step,
                                                           s.width // step)).astype(np.float32)
                m = None if m is None else m[::step, ::step][:a.shape[1], :a.shape[2]]
            valid = ~s.invalid(a)
            if m is not None:
                valid &= m
            if region:
                a, valid = a[:, :, region[0]:region[1]], valid[:, region[0]:region[1]]
            acc.update(a, valid)
        return acc.finish()

    def crops(self, size: int, length: int, seed: int | None = None,
              region: tuple[int, int] | None = None) -> RandomCropDataset:
        return RandomCropDataset(self.scenes, size=size, length=length, seed=seed, region=region,
                                 allowed=self.pretraining_masks())


def _check_band_names(bands, sensor: str = "sentinel2-l1c") -> list[str] | None:
    """Registry names for user-given bands; BandError for a name the sensor does not have."""
    if bands is None:
        return None
    if isinstance(bands, str):
        bands = [b for b in bands.split(",") if b.strip()]
    s = get_sensor(sensor)
    names = [s.band(b).name for b in bands]
    if len(set(names)) != len(names):
        raise ConfigError(f"band list {', '.join(bands)} names a band twice")
    return names


def brandenburg(cache: str | os.PathLike | None = None, bands=None) -> SceneSource:
    """The real Sentinel-2 L1C sample scene (13 bands, 10 m grid) with OpenStreetMap land-use
    labels (eight classes, column ``fclass``), split into spatial k-fold blocks."""
    from .labels import VectorLabels

    folder = samples.brandenburg_dir(cache)
    scene = stacked_scene(folder, samples.cache_dir(cache), _check_band_names(bands))
    labels = VectorLabels(folder / OSM_POLYGONS, "fclass", OSM_CLASSES)
    return SceneSource("brandenburg", [scene], labels, samples.cache_dir(cache))


def bigearthnet(cache: str | os.PathLike | None = None, bands=None, req=None):
    """The real BigEarthNet v2 sample (24 patches, reBEN LMDB) as labelled chips (multi-label,
    the release's own split)."""
    from .bigearthnet import bigearthnet_source

    return bigearthnet_source(samples.bigearthnet_dir(cache), req)


SOURCES = {"brandenburg": brandenburg, "brandenburg-patches": brandenburg,
           "bigearthnet": bigearthnet}

# Modules that add sources of other kinds (time series, sensor pairs, shards, ...) by calling
# register_source on import. Listed rather than discovered: data/ also holds plain modules.
SOURCE_MODULES = ("eossl.data.timeseries_source", "eossl.data.pairs", "eossl.data.shards")
_plugins_loaded = False


def register_source(name: str):
    """Decorator: make ``factory(cache, bands) -> source`` available as ``--data NAME``."""

    def decorate(factory):
        SOURCES[name] = factory
        return factory

    return decorate


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    import importlib

    for mod in SOURCE_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:  # a missing dependency inside the module is a real error
                raise
    _plugins_loaded = True


def available_sources() -> list[str]:
    _load_plugins()
    return sorted(SOURCES)


def open_source(name: str, cache: str | os.PathLike | None = None,
                labels: str | os.PathLike | None = None, bands=None, **options):
    """``--data NAME`` (+ labels and band options) as a source: see data/resolve.py, the one
    resolver every command uses. Kept under this name for callers of the older API."""
    from .resolve import DataRequest, open_data

    return open_data(DataRequest(data=name, labels=labels, bands=bands, **options), cache)
