"""``eossl evaluate change``: OSCD-style change detection with a Siamese U-Net on frozen eossl
encoders (precision / recall / F1 of "change"; evaluate/change.py), and a label-free change
picture on the Landsat time series (``--landsat``)."""

from __future__ import annotations

TASK = "change"


def add_parser(tsub) -> None:
    from .evaluate import add_evaluation_parser

    p = add_evaluation_parser(tsub, TASK)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", help="torchgeo:OSCD (with --root DIR): train on OSCD's train "
                     "split, score its test split")
    src.add_argument("--oscd", metavar="ROOT", help="OSCD folder (torchgeo layout); the same as "
                     "--data torchgeo:OSCD --root ROOT")
    src.add_argument("--pair", nargs=3, metavar=("BEFORE", "AFTER", "MASK"),
                     help="two co-registered rasters + change mask; west 60%% trains, east "
                          "scores")
    src.add_argument("--landsat", nargs="?", const="", metavar="ROOT",
                     help="label-free change picture between two dates a year apart on the "
                          "Landsat time series (default: the real sample)")
    p.add_argument("--root", help="the dataset folder of --data torchgeo:OSCD")
    p.add_argument("--sensor", help="band-name preset of the --pair rasters (docs/data.md)")
    p.add_argument("--band-names", help="names of the --pair rasters' bands in file order, for "
                   "files without band descriptions")


def run(args) -> int:
    from ..errors import ConfigError
    from .evaluate import parse_checkpoints, run_evaluation

    checkpoints = parse_checkpoints(args.checkpoint)
    if args.landsat is not None:
        return _landsat(args, checkpoints)
    if args.data is not None:
        if args.data.lower() != "torchgeo:oscd":
            raise ConfigError(f"--data {args.data}: change detection reads torchgeo:OSCD (with "
                              "--root DIR) or --pair BEFORE AFTER MASK")
        if not args.root:
            raise ConfigError("--data torchgeo:OSCD needs --root DIR")
        args.oscd, args.data = args.root, None
    options = {"oscd": args.oscd}
    if args.pair:
        options.update(pair=args.pair, bands=_pair_bands(args))
    elif not args.oscd:
        raise ConfigError("give a data set: --data torchgeo:OSCD --root DIR, --pair BEFORE "
                          "AFTER MASK or --landsat")
    return run_evaluation(TASK, args, options)


def _pair_bands(args) -> list[str]:
    """The --pair rasters' own band names (descriptions, --sensor, --band-names), never the
    encoder's list laid over them by position."""
    import rasterio

    from ..data.readers import name_raster_bands
    from ..errors import ConfigError

    with rasterio.open(args.pair[0]) as f:
        count, desc = f.count, list(f.descriptions or [])
    bands, _, _ = name_raster_bands(args.pair[0], count, desc, sensor=args.sensor,
                                    band_names=args.band_names)
    if all(b.startswith("band") for b in bands):
        raise ConfigError(f"{args.pair[0]}: its {len(bands)} bands have no names (no band "
                          "descriptions); name them with --band-names NAME,... (file order) "
                          "or --sensor")
    return list(bands)


def _landsat(args, checkpoints: dict) -> int:
    """The label-free picture: feature change between two dates a year apart."""
    from pathlib import Path

    from ..checkpoint import load_encoder
    from ..data import samples
    from ..data.timeseries import LandsatTimeSeries
    from ..errors import ConfigError, OutputExistsError
    from ..evaluate.change import write_landsat_change_map
    from ..report import write_blocks

    if not checkpoints:
        raise ConfigError("--landsat needs --checkpoint (an encoder whose bands have "
                          "Landsat counterparts, e.g. pretrained with --bands B04,B08,B11)")
    if not args.out:
        raise ConfigError("--landsat draws a picture: give --out FOLDER")
    out = Path(args.out)
    ts = LandsatTimeSeries(args.landsat or samples.landsat_series_dir(args.cache))
    lines = []
    for name, path in checkpoints.items():
        png = out / f"landsat_change_{name}.png"
        if png.exists():
            raise OutputExistsError(f"{png} exists; choose another --out")
        enc = load_encoder(path).for_bands(ts.band_names)
        info = write_landsat_change_map(enc, ts, png)
        print(f"{name}: {info['date_a']} -> {info['date_b']}: {png}")
        lines.append((name, info, png))
    blocks = [("h1", "eossl evaluate change --landsat"),
              ("p", "No labels: a picture of the feature change (1 - cosine) between two clear "
                    "dates about a year apart, not a score.")]
    blocks += [("img", png, f"{name}: {info['date_a']} -> {info['date_b']}")
               for name, info, png in lines]
    write_blocks(out, blocks, title="eossl evaluate change --landsat")
    return 0
