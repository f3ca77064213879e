"""The one option family for imagery and labels, shared by every command that takes them
(pretrain, probe, evaluate *, embed, data pack, benchmark): ``add_data_options`` defines the
options on a parser, ``data_request`` / ``open_from_args`` turn the parsed values into a data
source through the resolver (eossl.data.resolve). docs/data.md explains each form."""

from __future__ import annotations

DATA_HELP = ("imagery: a sample name (brandenburg), a raster file (GeoTIFF/COG/VRT), a folder or "
             "glob of rasters, a folder of Sentinel-2 band files, a shard corpus, "
             "torchgeo:NAME (with --root), a chip folder or table, or a STAC item JSON")


def add_data_options(p, *, default: str | None = None, labels: bool = True,
                     pretrain: bool = False, positional: str | None = None,
                     data_help: str | None = None, root: bool = True) -> None:
    """Add ``--data`` (or a positional), ``--root``, ``--sensor``, ``--bands``,
    ``--band-names``, ``--nodata`` and, with ``labels``, ``--labels``, ``--label-column``,
    ``--classes``, ``--min-share``, ``--split`` (and ``--pretrain-on-test-areas`` for
    pretraining)."""
    g = p.add_argument_group("data")
    if positional:
        g.add_argument(positional, metavar=positional.upper(), help=data_help or DATA_HELP)
    else:
        g.add_argument("--data", default=default, help=(data_help or DATA_HELP)
                       + (f" (default {default})" if default else ""))
    if root:
        g.add_argument("--root", help="the dataset folder of --data torchgeo:NAME")
    g.add_argument("--sensor", help="band-name preset the file's band names are read against "
                   "(sentinel2-l1c, sentinel2-l2a, sentinel1, landsat5, landsat7, landsat8, "
                   "landsat9; several joined by commas)")
    g.add_argument("--bands", help="bands to use, in order, by name (default: all)")
    g.add_argument("--band-names", help="names of a raster's bands in file order, for files "
                   "without band descriptions")
    g.add_argument("--nodata", type=float, help="nodata value of the imagery (default: the "
                   "file's; NaN is always invalid)")
    if labels:
        g.add_argument("--labels", help="labels: a vector file (GeoPackage, GeoJSON, Shapefile, "
                       "GeoParquet; polygons or points) or a label raster of class codes")
        g.add_argument("--label-column", help="the labels' class column")
        g.add_argument("--classes", help="classes to use, in order (corn,soy); for a label "
                       "raster CODE=NAME pairs (1=corn,5=soy). Default: every value found")
        g.add_argument("--min-share", type=float, help="share of a patch its majority class "
                       "must cover to label it (default 0.8)")
        g.add_argument("--split", help="kfold (default; kfold:k=5,block=128,gap=16,seed=0,"
                       "eval_share=0.5), west-east, column:NAME (train/test or fold numbers in "
                       "the label file) or a polygon file of test areas")
    if pretrain:
        g.add_argument("--pretrain-on-test-areas", action="store_const", const=True,
                       default=None, help="pretrain on the whole imagery, test areas included "
                       "(reports then say so); default: they are left out")


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
