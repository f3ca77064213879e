"""``eossl evaluate change``: OSCD-style change detection with a Siamese U-Net on frozen eossl
encoders (precision / recall / F1 of "change"), and a label-free change picture on the Landsat
time series."""

from __future__ import annotations

TASK = "change"


def add_parser(tsub) -> None:
    from .evaluate_pixel_probe import ints

    p = tsub.add_parser(TASK, help="change detection: Siamese U-Net on frozen encoders (F1)")
    p.add_argument("--checkpoint", action="append", default=[],
                   help="pretrained checkpoint (repeatable; NAME=PATH names the row)")
    p.add_argument("--no-random-init", action="store_true", help="leave out the random row")
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
                   "rasters without band descriptions")
    p.add_argument("--seeds", type=ints, default=[0])
    p.add_argument("--steps", type=int, default=200, help="decoder training steps")
    p.add_argument("--crop", type=int, default=64, help="training crop side (multiple of 32)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="write results.json, report.md (and the PNG) here")


def run(args) -> int:
    from pathlib import Path

    from ..errors import ConfigError, OutputExistsError
    from ..evaluate import change as ch
    from .evaluate_pixel_probe import load_encoders, parse_checkpoints, write_results

    if args.out and (Path(args.out) / "results.json").exists():
        raise OutputExistsError(f"{args.out} already holds results.json; choose another --out")
    checkpoints = parse_checkpoints(args.checkpoint)
    if args.landsat is not None:
        from ..data import samples
        from ..data.timeseries import LandsatTimeSeries

        if not checkpoints:
            raise ConfigError("--landsat needs --checkpoint (an encoder whose bands have "
                              "Landsat counterparts, e.g. pretrained with --bands B04,B08,B11)")
        if not args.out:
            raise ConfigError("--landsat draws a picture: give --out FOLDER")
        ts = LandsatTimeSeries(args.landsat or samples.landsat_series_dir(args.cache))
        encoders = load_encoders(checkpoints, random_init=False)
        infos = {}
        for name, enc in encoders.items():
            png = Path(args.out) / f"landsat_change_{name}.png"
            if png.exists():
                raise OutputExistsError(f"{png} exists; choose another --out")
            infos[name] = ch.write_landsat_change_map(enc.for_bands(ts.band_names), ts, png)
            print(f"{name}: {infos[name]['date_a']} -> {infos[name]['date_b']}: {png}")
        lines = [f"- {n}: {i['date_a']} -> {i['date_b']}, ![change]({Path(i['path']).name})"
                 for n, i in infos.items()]
        write_results(args.out, {"task": TASK, "landsat": infos},
                      "# eossl evaluate change --landsat\n\n" + "\n".join(lines)
                      + "\n\nNo labels: a picture, not a score.\n")
        return 0

    encoders = load_encoders(checkpoints, not args.no_random_init)
    if not encoders:
        raise ConfigError("give --checkpoint PATH (a random-init row alone needs an encoder's "
                          "architecture and bands to copy)")
    if args.data is not None:
        if args.data.lower() != "torchgeo:oscd":
            raise ConfigError(f"--data {args.data}: change detection reads torchgeo:OSCD (with "
                              "--root DIR) or --pair BEFORE AFTER MASK")
        if not args.root:
            raise ConfigError("--data torchgeo:OSCD needs --root DIR")
        args.oscd = args.root
    if args.oscd:
        bands = list(ch.OSCD_BANDS)
        train, test = ch.load_oscd(args.oscd, "train"), ch.load_oscd(args.oscd, "test")
        where = f"OSCD at {args.oscd}"
    elif args.pair:
        import rasterio

        from ..data.readers import name_raster_bands

        pair = ch.load_pair(*args.pair)
        with rasterio.open(args.pair[0]) as f:
            desc = list(f.descriptions or [])
        # the rasters' own band names (descriptions, --sensor, --band-names), never the
        # encoder's list laid over them by position
        bands, _, _ = name_raster_bands(args.pair[0], pair.before.shape[0], desc,
                                        sensor=args.sensor, band_names=args.band_names)
        if all(b.startswith("band") for b in bands):
            raise ConfigError(f"{args.pair[0]}: its {len(bands)} bands have no names (no band "
                              "descriptions); name them with --band-names NAME,... (file "
                              "order) or --sensor")
        tr, te = ch.split_pair(pair)
        train, test = [tr], [te]
        where = f"pair {args.pair[0]} / {args.pair[1]} (west 60% train, east test)"
    else:
        raise ConfigError("give a data set: --data torchgeo:OSCD --root DIR, --pair BEFORE "
                          "AFTER MASK or --landsat")
    encoders = {n: e.for_bands(bands) for n, e in encoders.items()}
    records = ch.evaluate_change(encoders, train, test, seeds=args.seeds, steps=args.steps,
                                 crop=args.crop, batch_size=args.batch_size, lr=args.lr,
                                 device=args.device, log=print)
    table = ch.change_table(records)
    print(table)
    md = (f"# eossl evaluate change\n\n- data: {where}\n- train: {len(train)} pair(s), test: "
          f"{len(test)}\n- frozen encoders, Siamese |f1 - f2| U-Net decoder, {args.steps} steps"
          f"\n- seeds: {args.seeds}\n\n{table}")
    path = write_results(args.out, {"task": TASK, "records": records}, md)
    if path:
        print(f"report: {path}")
    return 0
