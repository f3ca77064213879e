"""The resolver: ``--data`` and its options become a data source with band names attached.

Every command that takes imagery or labels comes through :func:`open_data`, so the same
forms work everywhere (docs/data.md lists them):

- a registered name: ``brandenburg`` (the sample scene), ``landsat``, ``bigearthnet-pairs``...
- one raster file rasterio opens (GeoTIFF, COG, VRT, JPEG 2000): one scene, read in place;
- a glob or a folder of such rasters: several scenes, each on its own grid and CRS (cropped
  one by one, never mosaicked);
- a folder of Sentinel-2 band files (``*_B04.jp2``), stacked once into the cache;
- a folder of dated GeoTIFFs (``LOCATION/YYYY-MM-DD.tif``) or Landsat scene folders: a time
  series;
- a shard corpus (a folder holding ``eossl.json``, or a URL).

Band names come from :func:`eossl.bands.resolve_band_names` (file descriptions, ``sensor``,
``band_names``); labels from data/labels.py; the split from data/splits.py.
"""

from __future__ import annotations

import glob as _glob
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ConfigError, DataError
from . import samples

IMAGE_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".nc", ".hdf", ".h5")


@dataclass
class DataRequest:
    """What the user asked for (the command-line options / the ``data`` config section)."""

    data: str | None = None
    root: str | None = None            # torchgeo datasets: the dataset folder
    sensor: str | None = None          # --sensor: preset(s) the band names are read against
    bands: object = None               # --bands: which bands to use, in order
    band_names: object = None          # --band-names: names of a file's bands, in file order
    nodata: float | None = None        # --nodata: overrides the file's nodata value
    labels: str | None = None          # --labels: vector file or label raster
    label_column: str | None = None    # --label-column
    classes: object = None             # --classes: NAME,... or CODE=NAME,...
    min_share: float | None = None     # --min-share: majority share for a patch's label
    split: object = None               # --split: kfold[:...], west-east, column:NAME, FILE
    pretrain_on_test_areas: bool = False

    def options(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, False) and k != "data"}


def _listify(v) -> list[str] | None:
    if v is None:
        return None
    if isinstance(v, str):
        return [b.strip() for b in v.split(",") if b.strip()]
    return [str(b).strip() for b in v]


def data_id(text: str) -> str:
    """A stable id of the imagery for checkpoint metadata: a registered name as is, a path
    made absolute (so a relative path from another folder still matches)."""
    if "://" in text or text.startswith("torchgeo:"):
        return text
    p = Path(text)
    return str(p.resolve()) if p.exists() else text


def open_data(req: DataRequest, cache: str | os.PathLike | None = None):
    """The source ``req`` names (see the module docstring). Raises DataError / ConfigError /
    BandError with one line naming the file, band or option and what was expected."""
    from .sources import SOURCES, _load_plugins

    _load_plugins()
    name = req.data
    if not name:
        raise ConfigError("--data is required: a sample name, a raster file, a folder or glob "
                          "of rasters, a folder of Sentinel-2 band files, a shard corpus or "
                          "torchgeo:NAME --root DIR")
    name = str(name)
    if req.min_share is not None and not 0 < float(req.min_share) <= 1:
        raise ConfigError(f"--min-share must be in (0, 1], got {req.min_share}")
    if name.startswith("torchgeo:"):
        from .torchgeo_data import open_torchgeo

        return open_torchgeo(name.partition(":")[2], req, cache)
    if name in SOURCES:
        return _registered(name, req, cache)
    if "://" in name or (Path(name) / "eossl.json").is_file():  # a shard corpus
        from .shards import open_shards

        _no_labels(req, name, "a shard corpus")
        return open_shards(name, cache, _listify(req.bands))
    if any(ch in name for ch in "*?["):
        files = sorted(Path(p) for p in _glob.glob(name) if Path(p).is_file())
        if not files:
            raise DataError(f"--data {name}: the pattern matches no file; expected raster "
                            "files (GeoTIFF, COG, VRT, ...)")
        return _scenes(files, req, cache, name)
    p = Path(name)
    if p.is_file() and p.suffix.lower() in (".csv", ".parquet"):
        from .chips import chip_table

        _chip_options(req, name)
        return chip_table(p, label_column=req.label_column, classes=req.classes,
                          sensor=req.sensor, band_names=req.band_names, bands=req.bands,
                          nodata=req.nodata, split=req.split,
                          exclude_test_areas=not req.pretrain_on_test_areas)
    if p.is_file() and p.suffix.lower() == ".json":
        from .stac import stac_scenes

        return _with_labels(stac_scenes(p, req, cache), req)
    if p.is_file():
        return _scenes([p], req, cache, name)
    if p.is_dir():
        return _folder(p, req, cache)
    if p.suffix:
        raise DataError(f"{p}: no such file; expected an image (GeoTIFF, COG, VRT, JPEG 2000) "
                        "or a label/chip table")
    raise ConfigError(f"--data {name}: no such file or folder, and not a registered name "
                      f"({', '.join(sorted(SOURCES))}); see docs/data.md for the accepted forms")


def _chip_options(req: DataRequest, name: str) -> None:
    if req.labels is not None:
        raise ConfigError(f"--labels {req.labels}: --data {name} is labelled chips, which bring "
                          "their labels (the class folders, or the table's --label-column)")
    if req.min_share is not None:
        raise ConfigError(f"--min-share: --data {name} is labelled chips; a chip's label is "
                          "its own, there is no majority to take")


def _no_labels(req: DataRequest, name: str, what: str) -> None:
    if req.labels is not None:
        raise ConfigError(f"--labels {req.labels}: --data {name} is {what}, which takes no "
                          "label file")


def _registered(name: str, req: DataRequest, cache):
    from .sources import SOURCES, SceneSource

    factory = SOURCES[name]
    bands = _listify(req.bands)
    if name in ("brandenburg", "brandenburg-patches"):
        src = factory(cache, bands)
        if req.labels is not None:
            from .labels import open_labels

            src.labels = open_labels(req.labels, req.label_column, req.classes)
        elif req.label_column or req.classes:
            from .labels import VectorLabels

            src.labels = VectorLabels(src.labels.path, req.label_column or "fclass",
                                      _listify(req.classes))
        for k, v in _label_kw(req).items():
            setattr(src, k, v)
        if req.nodata is not None:
            for s in src.scenes:
                s.nodata = float(req.nodata)
        src.check_labels()
        return src
    if name == "bigearthnet":
        _chip_options(req, name)
        return factory(cache, bands, req)
    _no_labels(req, name, "a registered data set with no label file")
    import inspect

    if "root" in inspect.signature(factory).parameters:
        src = factory(cache, bands, root=req.root)
    elif req.root:
        raise ConfigError(f"--root: --data {name} takes no folder")
    else:
        src = factory(cache, bands)
    if isinstance(src, SceneSource):
        src.data_id = name
    return src


def _label_kw(req: DataRequest) -> dict:
    from .sources import DEFAULT_MIN_SHARE
    from .splits import parse_split

    kw = {"min_share": DEFAULT_MIN_SHARE if req.min_share is None else float(req.min_share),
          "exclude_test_areas": not req.pretrain_on_test_areas,
          "explicit_classes": req.classes is not None}
    if req.split is not None:
        kw["split"] = parse_split(req.split)
    return kw


def _scenes(files: list[Path], req: DataRequest, cache, name: str):
    """Raster files as a SceneSource (each file one scene)."""
    from .readers import raster_scene
    from .sources import SceneSource

    scenes = []
    for f in files:
        if f.suffix.lower() not in IMAGE_SUFFIXES and not _opens(f):
            raise DataError(f"{f}: not an image rasterio can open; expected a GeoTIFF, COG, VRT "
                            "or JPEG 2000 file (for chip tables and STAC items see "
                            "docs/data.md)")
        scenes.append(raster_scene(f, sensor=req.sensor, band_names=req.band_names,
                                   bands=req.bands, nodata=req.nodata))
    first = scenes[0]
    for s in scenes[1:]:
        if s.bands != first.bands:
            raise DataError(f"{s.path}: bands {', '.join(s.bands)} differ from "
                            f"{first.path.name}'s ({', '.join(first.bands)}); every scene of "
                            "one data set needs the same bands (select them with --bands)")
    label = Path(files[0]).stem if len(files) == 1 else Path(name).name or "scenes"
    return _with_labels(SceneSource(label, scenes, cache=samples.cache_dir(cache),
                                    data_id=data_id(name)), req)


def _opens(path: Path) -> bool:
    import rasterio

    try:
        with rasterio.open(path):
            return True
    except Exception:  # any failure to open means "not a raster"
        return False


def _with_labels(src, req: DataRequest):
    if req.labels is None:
        if req.label_column or req.classes or req.split:
            raise ConfigError("--label-column, --classes and --split describe labels; give the "
                              "label file with --labels")
        return src
    from .labels import open_labels

    src.labels = open_labels(req.labels, req.label_column, req.classes)
    for k, v in _label_kw(req).items():
        setattr(src, k, v)
    if src.split is None:
        from .splits import SpatialKFold

        src.split = SpatialKFold()
    src.check_labels()
    return src


def _folder(p: Path, req: DataRequest, cache):
    from .readers import S2_BAND_FILE, stacked_scene
    from .sources import SceneSource, _check_band_names

    entries = sorted(p.iterdir())
    files = [e for e in entries if e.is_file()]
    if any(S2_BAND_FILE.search(f.name) for f in files) or (p / "IMG_DATA").is_dir():
        scene = stacked_scene(p, samples.cache_dir(cache),
                              _check_band_names(req.bands, req.sensor or "sentinel2-l1c"),
                              sensor=req.sensor or "sentinel2-l1c")
        if req.nodata is not None:
            scene.nodata = float(req.nodata)
        return _with_labels(SceneSource(p.name, [scene], cache=samples.cache_dir(cache),
                                        data_id=data_id(str(p))), req)
    from .bigearthnet import LMDB_DIR
    from .chips import chip_folder, is_chip_folder
    from .timeseries import _SCENE_ID

    if (p / LMDB_DIR).is_dir():
        from .bigearthnet import bigearthnet_source

        _chip_options(req, str(p))
        return bigearthnet_source(p, req)
    if _is_dated(p, entries):  # LOCATION/YYYY-MM-DD.tif: before chips, which look alike
        from .timeseries_source import timeseries_folder

        _no_labels(req, str(p), "a time series of dated GeoTIFFs")
        return timeseries_folder(p, _listify(req.bands))
    if is_chip_folder(p):
        _chip_options(req, str(p))
        if req.label_column:
            raise ConfigError(f"--label-column: {p} is a folder of class folders; the folder "
                              "names are the classes")
        return chip_folder(p, classes=req.classes, sensor=req.sensor,
                           band_names=req.band_names, bands=req.bands, nodata=req.nodata,
                           split=req.split, exclude_test_areas=not req.pretrain_on_test_areas)
    if any(e.is_dir() and _SCENE_ID.match(e.name) for e in entries):
        from .timeseries_source import landsat_source

        _no_labels(req, str(p), "a Landsat time series")
        return landsat_source(p, _listify(req.bands))
    rasters = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    if rasters:
        return _scenes(rasters, req, cache, str(p))
    raise DataError(f"{p}: holds no imagery; expected raster files (*.tif, *.vrt, *.jp2), "
                    "Sentinel-2 band files (*_B04.jp2), chips in class folders (CLASS/*.tif), "
                    "dated GeoTIFFs (LOCATION/YYYY-MM-DD.tif), Landsat scene folders or a "
                    "BigEarthNet v2 LMDB folder (see docs/data.md)")


def _is_dated(p: Path, entries) -> bool:
    from .timeseries_source import _DATED_TIF

    if any(e.is_file() and _DATED_TIF.match(e.name) for e in entries):
        return True
    return any(e.is_dir() and any(_DATED_TIF.match(f.name) for f in e.iterdir())
               for e in entries[:50])


def request_from_config(d: dict) -> DataRequest:
    """The DataRequest of a run configuration's ``data`` section."""
    keys = {f for f in DataRequest.__dataclass_fields__ if f != "data"}
    return DataRequest(data=d.get("name"), **{k: d.get(k) for k in keys if d.get(k) is not None})
