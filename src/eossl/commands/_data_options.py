"""The one option family for imagery and labels, shared by every command that takes them
(pretrain, probe, evaluate *, embed, data pack, benchmark): ``add_data_options`` defines the
options on a parser, ``data_request`` / ``open_from_args`` turn the parsed values into a data
source through the resolver (eossl.data.resolve). docs/data.md explains each form."""

from __future__ import annotations

DATA_HELP = ("imagery: a sample name (brandenburg), a raster file (GeoTIFF/COG/VRT), a folder or "
             "glob of rasters, a folder of Sentinel-2 band files, a shard corpus, "
             "torchgeo:NAME (with --root), a chip folder or table, or a STAC item JSON")


def add_data_options(p, *, default: str | None = None, labels: bool = True,
                     pretrain: bool = False, data_help: str | None = None,
                     root: bool = True):
    """Add ``--data``, ``--root``, ``--sensor``, ``--bands``, ``--band-names``, ``--nodata``
    and, with ``labels``, ``--labels``, ``--label-column``, ``--classes``, ``--min-share``,
    ``--split`` (and ``--pretrain-on-test-areas`` for pretraining). Returns the group, so a
    command's own data options join it."""
    from ._options import document_default

    g = p.add_argument_group("data")
    g.add_argument("--data", default=default, metavar="DATA", help=data_help or DATA_HELP)
    if root:
        g.add_argument("--root", help="the dataset folder of --data torchgeo:NAME")
    g.add_argument("--sensor", help="band-name preset the file's band names are read against "
                   "(sentinel2-l1c, sentinel2-l2a, sentinel1, landsat5, landsat7, landsat8, "
                   "landsat9; several joined by commas)")
    g.add_argument("--bands", help="bands to use, in order, by name (default: all of the "
                   "imagery's)")
    g.add_argument("--band-names", help="names of a raster's bands in file order, for files "
                   "without band descriptions")
    g.add_argument("--nodata", type=float, help="nodata value of the imagery; NaN is always "
                   "invalid (default: the file's)")
    if labels:
        g.add_argument("--labels", help="labels: a vector file (GeoPackage, GeoJSON, Shapefile, "
                       "GeoParquet; polygons or points) or a label raster of class codes")
        g.add_argument("--label-column", help="the labels' class column")
        g.add_argument("--classes", help="classes to use, in order (corn,soy); for a label "
                       "raster CODE=NAME pairs (1=corn,5=soy) (default: every value found)")
        document_default(g.add_argument(
            "--min-share", type=float, help="share of a patch its majority class must cover "
            "to label it"), _default_min_share)
        g.add_argument("--split", help="kfold (spatial blocks; kfold:k=5,block=128,gap=16,"
                       "seed=0,eval_share=0.5 spells out its settings), west-east, column:NAME "
                       "(train/test or fold numbers in the label file) or a polygon file of "
                       "test areas (default: kfold)")
    if pretrain:
        g.add_argument("--pretrain-on-test-areas", action="store_const", const=True,
                       default=None, help="pretrain on the whole imagery, test areas included "
                       "(reports then say so); without it they are left out")
    return g


def _default_min_share() -> float:
    from ..data.sources import DEFAULT_MIN_SHARE

    return DEFAULT_MIN_SHARE


FIELDS = ("root", "sensor", "bands", "band_names", "nodata", "labels", "label_column",
          "classes", "min_share", "split", "pretrain_on_test_areas")


def data_request(args, attr: str = "data", **override):
    """The DataRequest the parsed options describe (``override`` wins)."""
    from ..data.resolve import DataRequest

    kw = {"data": getattr(args, attr, None)}
    for f in FIELDS:
        v = getattr(args, f, None)
        if v is not None:
            kw[f] = v
    kw.update({k: v for k, v in override.items() if v is not None})
    return DataRequest(**kw)


def open_from_args(args, attr: str = "data", **override):
    """The data source the parsed options describe."""
    from ..data.resolve import open_data

    return open_data(data_request(args, attr, **override), getattr(args, "cache", None))
