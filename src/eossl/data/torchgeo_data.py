"""torchgeo's datasets already on disk as eossl sources: ``--data torchgeo:NAME --root DIR``.

The images and labels are read by torchgeo's own classes (``download=False``), with their own
train/val/test splits; eossl adds band names (its canonical ones), the split as folds, and
pretraining on the training split only (the test split left out by default). Supported:

| NAME | what eossl makes of it |
|---|---|
| EuroSAT, EuroSATSpatial, EuroSAT100 | 13-band chips, 10 classes (classification) |
| BigEarthNet | v1 folders: S2 (or ``--sensor sentinel1`` / both) chips, 19 classes, multi-label |
| BigEarthNetV2 | v2 GeoTIFF folders + metadata.parquet: the same, v2 labels and splits |
| SEN12MS | S1 + S2 chips labelled with their majority IGBP land-cover class |
| OSCD | 24 city pairs as a two-date time series (pretraining); ``evaluate change`` scores it |
| SeasonalContrastS2 | SeCo's multi-date corpus (pretraining) |
| SSL4EOS12 | SSL4EO-S12's multi-date corpus (pretraining; ``--sensor`` picks s1 / s2c / s2a) |

A dataset that is not under ``--root`` is one line saying where torchgeo expects which files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bands import SENTINEL1, resolve_band_names
from ..errors import ConfigError, DataError

# BigEarthNet's S2 band files sorted as torchgeo sorts them (B8A after B08)
BEN_S2 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
IGBP = ("Evergreen needleleaf forest", "Evergreen broadleaf forest",
        "Deciduous needleleaf forest", "Deciduous broadleaf forest", "Mixed forest",
        "Closed shrublands", "Open shrublands", "Woody savannas", "Savannas", "Grasslands",
        "Permanent wetlands", "Croplands", "Urban and built-up", "Cropland/natural mosaic",
        "Snow and ice", "Barren", "Water")


@dataclass(frozen=True)
class Entry:
    cls: str
    kind: str  # classification | multilabel | multidate
    expects: str  # where torchgeo looks, for the "not on disk" line


EXPECTS_EUROSAT = ("ROOT/eurosat-{train,val,test}.txt and the chips in ROOT/ds/images/"
                   "remote_sensing/otherDatasets/sentinel_2/tif/<Class>/*.tif (or "
                   "ROOT/EuroSATallBands.zip)")
DATASETS = {
    "eurosat": Entry("EuroSAT", "classification", EXPECTS_EUROSAT),
    "eurosatspatial": Entry("EuroSATSpatial", "classification",
                            EXPECTS_EUROSAT.replace("eurosat-", "eurosat-spatial-")),
    "eurosat100": Entry("EuroSAT100", "classification",
                        EXPECTS_EUROSAT.replace("eurosat-", "eurosat-100-").replace(
                            "EuroSATallBands", "EuroSAT100")),
    "bigearthnet": Entry("BigEarthNet", "multilabel",
                         "ROOT/bigearthnet-{train,val,test}.csv, ROOT/BigEarthNet-v1.0/<patch>/ "
                         "(S2 band files) and ROOT/BigEarthNet-S1-v1.0/<patch>/ (S1), each patch "
                         "with its *_labels_metadata.json (or the .tar.gz archives)"),
    "bigearthnetv2": Entry("BigEarthNetV2", "multilabel",
                           "ROOT/metadata.parquet and the folders ROOT/BigEarthNet-S2/<tile>/"
                           "<patch>/*.tif, ROOT/BigEarthNet-S1/, ROOT/Reference_Maps/ (or their "
                           ".tar.gz* parts)"),
    "sen12ms": Entry("SEN12MS", "classification",
                     "ROOT/{train,test}_list.txt and ROOT/ROIs<...>_<season>/{s1,s2,lc}_<scene>/"
                     "ROIs<...>_<season>_{s1,s2,lc}_<scene>_p<patch>.tif"),
    "oscd": Entry("OSCD", "multidate",
                  "ROOT/Onera Satellite Change Detection dataset - Images/<city>/imgs_{1,2}_rect/"
                  "*.tif with dates.txt, and ROOT/Onera Satellite Change Detection dataset - "
                  "{Train,Test} Labels/<city>/cm/cm.png"),
    "seasonalcontrasts2": Entry("SeasonalContrastS2", "multidate",
                                "ROOT/seasonal_contrast_{100k,1m}/<6-digit location>/"
                                "<timestamp>/B1.tif ... B12.tif"),
    "ssl4eos12": Entry("SSL4EOS12", "multidate",
                       "ROOT/{s1,s2c,s2a}/<7-digit location>/<timestamp>/<band>.tif"),
}


def supported() -> list[str]:
    return [e.cls for e in DATASETS.values()]


def entry(name: str) -> Entry:
    key = name.lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise ConfigError(f"--data torchgeo:{name}: no such dataset; eossl reads "
                          f"{', '.join(supported())} (torchgeo's class names)")
    return DATASETS[key]


def _not_found(e: Entry, root: Path) -> DataError:
    return DataError(f"torchgeo:{e.cls}: not found under --root {root}: torchgeo expects "
                     f"{e.expects}; download it there with torchgeo ({e.cls}(root, "
                     "download=True)) or point --root at it")


def _make(e: Entry, root: Path, **kw):
    """torchgeo's class, download=False; its DatasetNotFoundError becomes our one line."""
    import torchgeo.datasets as tgd
    from torchgeo.datasets import DatasetNotFoundError

    import inspect

    cls = getattr(tgd, e.cls)
    if "download" in inspect.signature(cls.__init__).parameters:
        kw["download"] = False  # SEN12MS has no download at all
    try:
        return cls(root=str(root), **kw)
    except DatasetNotFoundError:
        raise _not_found(e, root) from None
    except (FileNotFoundError, OSError) as err:
        raise DataError(f"torchgeo:{e.cls} under {root}: {str(err).splitlines()[0][:160]}; "
                        f"torchgeo expects {e.expects}") from None


def open_torchgeo(name: str, req, cache=None):
    """The source ``--data torchgeo:NAME --root DIR`` names."""
    e = entry(name)
    if not req.root:
        raise ConfigError(f"--data torchgeo:{e.cls} needs --root DIR, the folder torchgeo "
                          f"reads it from ({e.expects})")
    root = Path(req.root)
    if not root.is_dir():
        raise _not_found(e, root)
    if req.labels is not None:
        raise ConfigError(f"--labels: torchgeo:{e.cls} brings its own labels")
    if e.kind == "multidate":
        return _multidate(e, root, req)
    return _chips(e, root, req)


def _wanted(req, available: list[str], sensor: str) -> list[int] | None:
    if not req.bands:
        return None
    names = resolve_band_names(req.bands if not isinstance(req.bands, str) else
                               [b for b in req.bands.split(",") if b.strip()],
                               req.sensor or sensor, where="--bands").names
    missing = [n for n in names if n not in available]
    if missing:
        raise ConfigError(f"--bands {', '.join(missing)}: not in this dataset's bands "
                          f"({', '.join(available)})")
    return [available.index(n) for n in names]


def _ben_bands(req) -> tuple[str, list[str], str | None]:
    """torchgeo's ``bands`` argument (s1, s2, all) from --sensor, and the band names."""
    from ..bands import sensors_of

    sens = {s.family for s in sensors_of(req.sensor)} if req.sensor else {"sentinel2"}
    if sens == {"sentinel1"}:
        return "s1", list(SENTINEL1.band_names), "sentinel1"
    if sens == {"sentinel2"}:
        return "s2", list(BEN_S2), "sentinel2-l2a"
    if sens == {"sentinel1", "sentinel2"}:
        return "all", list(SENTINEL1.band_names) + list(BEN_S2), None
    raise ConfigError(f"--sensor {req.sensor}: BigEarthNet holds sentinel2-l2a and sentinel1")


def _chips(e: Entry, root: Path, req):
    from torch.utils.data import ConcatDataset

    from .chips import ChipSource, ChipSplit, DatasetChips

    parts, targets, classes, bands, sensor, key = [], [], None, None, None, "image"
    if e.cls.startswith("EuroSAT"):
        names = ("train", "val", "test")
        for s in names:
            ds = _make(e, root, split=s)
            parts.append(ds)
            targets.append(np.asarray(ds.targets, np.int64))
        classes = list(parts[0].classes)
        bands, sensor, task = list(parts[0].all_band_names), "sentinel2-l1c", "classification"
    elif e.cls.startswith("BigEarthNet"):
        which, bands, sensor = _ben_bands(req)
        names = ("train", "val", "test")
        kw = {"num_classes": 19} if e.cls == "BigEarthNet" else {}
        for s in names:
            ds = _make(e, root, split=s, bands=which, **kw)
            parts.append(ds)
            targets.append(np.stack([ds._load_target(i).numpy() for i in range(len(ds))])
                           if len(ds) else np.zeros((0, 19), np.int64))
        from .bigearthnet import CLASSES_19

        classes, task = list(CLASSES_19), "multilabel"
        if which == "all" and e.cls == "BigEarthNetV2":
            raise ConfigError("torchgeo:BigEarthNetV2 gives S1 and S2 as separate images; "
                              "choose --sensor sentinel2-l2a or sentinel1")
    elif e.cls == "SEN12MS":
        names = ("train", "test")
        for s in names:
            ds = _make(e, root, split=s)
            parts.append(ds)
            targets.append(np.asarray([_majority(ds[i]["mask"]) for i in range(len(ds))],
                                      np.int64))
        classes, task = list(IGBP), "classification"
        bands, sensor = list(parts[0].band_names), None
    else:  # pragma: no cover - DATASETS and this function list the same names
        raise ConfigError(f"torchgeo:{e.cls} is not a chip dataset")
    sizes = [len(p) for p in parts]
    if not sizes[-1]:
        raise DataError(f"torchgeo:{e.cls} under {root}: the test split is empty; torchgeo "
                        f"expects {e.expects}")
    offsets = np.cumsum([0] + sizes)
    test = np.arange(offsets[-2], offsets[-1])
    train = np.arange(0, offsets[-2])
    split = ChipSplit("dataset", f"torchgeo {e.cls}'s own split: "
                      + " + ".join(names[:-1]) + " train, test scores",
                      {"kind": "dataset", "name": e.cls}, [test], [train])
    pick = _wanted(req, bands, sensor or "sentinel2-l1c")
    reader = DatasetChips(ConcatDataset(parts), [bands[i] for i in pick] if pick else bands,
                          pick, key, sensor=sensor)
    y = np.concatenate(targets)
    if e.kind == "classification" and e.cls == "SEN12MS":
        present = sorted(set(y.tolist()))
        remap = {c: i for i, c in enumerate(present)}
        classes = [IGBP[c] for c in present]
        y = np.asarray([remap[v] for v in y], np.int64)
    first = reader.read(0)
    src = ChipSource(f"torchgeo:{e.cls}", reader, y, classes, task, split,
                     data_id=f"torchgeo:{e.cls}:{root.resolve()}",
                     exclude_test_areas=not req.pretrain_on_test_areas,
                     shape=tuple(first.shape[-2:]))
    src.check()
    return src


def _majority(mask) -> int:
    """The IGBP class (0-based) covering most of a SEN12MS patch."""
    m = np.asarray(mask).ravel()
    m = m[(m >= 1) & (m <= len(IGBP))]
    if not m.size:
        raise DataError("a SEN12MS patch has no IGBP label (values 1-17 in its lc band 1)")
    return int(np.bincount(m - 1, minlength=len(IGBP)).argmax())


def _multidate(e: Entry, root: Path, req):
    from .timeseries_source import MultiDateSource, seco_source, ssl4eo_s12_source

    if e.cls == "SeasonalContrastS2":
        _make(e, root)  # torchgeo's own check of the layout, for its "not found"
        return seco_source(root, req.bands)
    if e.cls == "SSL4EOS12":
        split = {"sentinel1": "s1", "sentinel2-l1c": "s2c", "sentinel2-l2a": "s2a"}
        from ..bands import get_sensor

        key = split.get(get_sensor(req.sensor).name) if req.sensor else "s2c"
        if key is None:
            raise ConfigError(f"--sensor {req.sensor}: SSL4EO-S12 holds sentinel1 (s1), "
                              "sentinel2-l1c (s2c) and sentinel2-l2a (s2a)")
        _make(e, root, split=key)
        return ssl4eo_s12_source(root, key, req.bands)
    # OSCD: every city's two dates, both splits, as one two-date location each
    from .timeseries_source import MemoryLocation

    locs = []
    for s in ("train", "test"):
        ds = _make(e, root, split=s)
        for i in range(len(ds)):
            img = ds[i]["image"].float()  # (2, C, H, W)
            locs.append(MemoryLocation(f"{s}-{i}", img, [None, None]))
    if not locs:
        raise _not_found(e, root)
    bands = list(ds.bands)
    pick = _wanted(req, bands, "sentinel2-l1c")
    if pick:
        for loc in locs:
            loc.images = loc.images[:, pick]
        bands = [bands[i] for i in pick]
    src = MultiDateSource("torchgeo:OSCD", bands, locs)
    src.sensor = "sentinel2-l1c"
    return src


__all__ = ["open_torchgeo", "supported", "DATASETS"]
