"""``eossl data pack``: write a corpus into LitData shards (data/shards.py)."""

from __future__ import annotations

DATA_COMMAND = "pack"


def add_data_parser(data_subparsers) -> None:
    p = data_subparsers.add_parser(
        "pack", help="pack scenes, the Landsat series or GeoTIFFs into streaming shards",
        description="Tile the input into chips and write them as LitData shards with band "
        "names and statistics; train with 'eossl pretrain --data OUT'.")
    p.add_argument("input", help="a sample name (brandenburg, landsat), a folder of Sentinel-2 "
                   "band files, or a folder of multi-band GeoTIFFs")
    p.add_argument("--out", required=True, help="new corpus folder (must not exist)")
    p.add_argument("--chip-size", type=int, default=64, help="chip size in px (64)")
    p.add_argument("--stride", type=int, help="tile stride in px (default: chip size)")
    p.add_argument("--max-nodata", type=float, default=0.1, help="nodata share allowed (0.1)")
    p.add_argument("--bands", help="band names (GeoTIFF folders: names of the bands)")
    p.add_argument("--chunk-bytes", default="64MB", help="shard size (64MB)")


def run_data(args) -> int:
    from pathlib import Path

    from tqdm.auto import tqdm

    from ..data import samples, shards
    from ..errors import ConfigError

    if args.chip_size < 8:
        raise ConfigError(f"--chip-size must be >= 8, got {args.chip_size}")
    bands = [b for b in args.bands.split(",") if b.strip()] if args.bands else None
    inp = args.input
    kw = dict(stride=args.stride, max_nodata=args.max_nodata)
    if inp in ("landsat", "landsat-series"):
        from ..data.timeseries import LandsatTimeSeries

        root = samples.landsat_series_dir(args.cache)
        names = LandsatTimeSeries(root).band_names
        gen, meta = shards.landsat_chips(root, args.chip_size, **kw), {"sensor": "landsat"}
    elif Path(inp).is_dir() and not any(Path(inp).glob("*_B0[1-9].*")) and \
            not (Path(inp) / "IMG_DATA").is_dir():
        names, gen = shards.geotiff_chips(inp, args.chip_size, bands=bands, **kw)
        meta = {}
    else:
        from ..data.sources import open_source

        src = open_source(inp, args.cache, bands=bands)
        names = src.bands
        gen = shards.scene_chips(src, args.chip_size, **kw)
        meta = {"sensor": src.scenes[0].sensor, "nodata": src.scenes[0].nodata}
    with tqdm(unit="chip", desc="pack") as bar:
        m = shards.pack(gen, args.out, names, description=f"eossl data pack {inp}",
                        chunk_bytes=args.chunk_bytes, progress=bar, **meta)
    print(f"packed {m['count']} chips of {m['shape']} {m['dtype']} into {len(m['chunks'])} "
          f"shard(s) in {args.out}\ntrain: eossl pretrain --data {args.out} --max-steps 100")
    return 0
