"""Named data sources: what ``--data brandenburg`` or ``--data PATH`` means.

A source turns a name (a real sample) or a folder of band files (a user's own scene) into the
datasets that pretraining and evaluation need. New sources register here; the CLI and the
benchmark pick them up by name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..bands import get_sensor
from ..errors import ConfigError
from . import samples
from .datasets import LabelledPatches, RandomCropDataset, SpatialSplit, rasterize_labels
from .readers import SceneStack, stacked_scene
from .stats import BandStats, StatsAccumulator, default_log_flags

OSM_POLYGONS = "gis_osm_landuse-water_a_free_1_area-10000-to-500000.gpkg"


@dataclass
class SceneSource:
    """One scene (or a list) for pretraining, with optional polygons for labelled patches."""

    name: str
    scenes: list[SceneStack]
    polygons: Path | None = None
    cache: Path | None = None
    _label_map: object = field(default=None, repr=False)

    @property
    def bands(self) -> list[str]:
        return self.scenes[0].bands

    def stats(self, region: tuple[int, int] | None = None) -> BandStats:
        """Per-band statistics of the (optionally column-restricted) scenes, valid pixels only."""
        acc = StatsAccumulator(self.bands, default_log_flags(self.bands))
        for s in self.scenes:
            a = s.load()
            if region:
                a = a[:, :, region[0]:region[1]]
            valid = (a != s.nodata).all(axis=0) if s.nodata is not None else None
            acc.update(a, valid)
        return acc.finish()

    def crops(self, size: int, length: int, seed: int | None = None,
              region: tuple[int, int] | None = None) -> RandomCropDataset:
        return RandomCropDataset(self.scenes, size=size, length=length, seed=seed, region=region)

    def label_map(self):
        if self.polygons is None:
            raise ConfigError(f"data source {self.name!r} has no labels; labelled patches need "
                              "a polygon file (--labels FILE.gpkg)")
        if self._label_map is None:
            self._label_map = rasterize_labels(self.scenes[0], self.polygons)
        return self._label_map

    def patches(self, split: str, size: int = 16, min_share: float = 0.8,
                spatial_split: SpatialSplit | None = None) -> LabelledPatches:
        return LabelledPatches(self.scenes[0], self.label_map(), split=split, size=size,
                               min_share=min_share,
                               spatial_split=spatial_split or SpatialSplit(gap=size))


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
    """The real Sentinel-2 L1C sample scene (13 bands, 10 m grid) with OSM land-use labels."""
    folder = samples.brandenburg_dir(cache)
    scene = stacked_scene(folder, samples.cache_dir(cache), _check_band_names(bands))
    return SceneSource("brandenburg", [scene], folder / OSM_POLYGONS, samples.cache_dir(cache))


SOURCES = {"brandenburg": brandenburg, "brandenburg-patches": brandenburg}

# Modules that add sources of other kinds (time series, sensor pairs, shards, ...) by calling
# register_source on import. Listed rather than discovered: data/ also holds plain modules.
SOURCE_MODULES = ("eossl.data.timeseries_source", "eossl.data.pairs", "eossl.data.shards",
                  "eossl.data.hyperspectral")
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
                labels: str | os.PathLike | None = None, bands=None) -> SceneSource:
    """A registered sample by name, or a folder of Sentinel-2 band files given as a path.

    ``bands`` (names or "B02,B03,...") restricts and orders the bands; default: all 13.
    """
    _load_plugins()
    if name in SOURCES:
        src = SOURCES[name](cache, bands)
    elif "://" in name or (Path(name) / "eossl.json").is_file():  # a shard corpus (data/shards.py)
        from .shards import open_shards

        src = open_shards(name, cache, bands)
    elif Path(name).exists():
        folder = Path(name)
        src = SceneSource(folder.name, [stacked_scene(folder, samples.cache_dir(cache),
                                                      _check_band_names(bands))],
                          cache=samples.cache_dir(cache))
    else:
        raise ConfigError(f"unknown data {name!r}; expected one of {', '.join(SOURCES)} or a "
                          "folder of Sentinel-2 band files")
    if labels is not None:
        src.polygons = Path(labels)
    return src
