"""``eossl data pack``: write a corpus into LitData shards (data/shards.py)."""

from __future__ import annotations

DATA_COMMAND = "pack"


def add_data_parser(data_subparsers) -> None:
    p = data_subparsers.add_parser(
        "pack", help="pack scenes, the Landsat series or GeoTIFFs into streaming shards",
        description="Tile the input into chips and write them as LitData shards with band "
        "names and statistics; train with 'eossl pretrain --data OUT'.")
    from ._data_options import add_data_options
    from ._options import add_out, add_patch_size, add_progress, legacy_positionals

    add_data_options(p, labels=False, data_help="imagery to pack: a sample name (brandenburg, "
                     "landsat), a raster file, a folder or glob of rasters, a folder of "
                     "Sentinel-2 band files or a time series (docs/data.md)")
    legacy_positionals(p, ("data",))  # eossl data pack INPUT (before --data)
    add_out(p, "new corpus folder (must not exist, or be empty)", required=True)
    add_patch_size(p, default=64, minimum=8, old=("--chip-size",),
                   help="side of the chips in px")
    p.add_argument("--stride", type=int, metavar="PX", help="tile stride in px (default: the "
                   "patch size, no overlap)")
    p.add_argument("--max-nodata", type=float, default=0.1, help="share of nodata pixels "
                   "(nodata value or NaN in any band) a chip may hold")
    p.add_argument("--chunk-bytes", default="64MB", help="shard size")
    add_progress(p)


def run_data(args) -> int:
    from ..data import shards
    from ..errors import ConfigError, OutputExistsError
    from ..io import check_writable_folder

    from ._options import require, take_positionals

    take_positionals(args, "data pack", ("data",))
    require(args, "data pack", "data")
    # every argument is checked before any input is read
    if args.stride is not None and args.stride < 1:
        raise ConfigError(f"--stride must be >= 1, got {args.stride}")
    if not 0 <= args.max_nodata < 1:
        raise ConfigError(f"--max-nodata {args.max_nodata:g}: expected a share of nodata "
                          "pixels in [0, 1), e.g. 0.1")
    shards.check_chunk_bytes(args.chunk_bytes)
    out = check_writable_folder(args.out)
    if out.exists() and any(out.iterdir()):
        raise OutputExistsError(f"{out} already exists and is not empty; choose another --out "
                                "(a new corpus folder)")
    existed = out.exists()
    from ..data.timeseries_source import MultiDateSource
    from ._data_options import open_from_args

    inp = args.data
    kw = dict(stride=args.stride, max_nodata=args.max_nodata)
    src = open_from_args(args)
    names = src.bands
    if isinstance(src, MultiDateSource) and getattr(src, "series", None) is not None:
        if args.bands:
            raise ConfigError("--bands: the Landsat series is packed with its bands b3, b4, b5 "
                              "and its Fmask")
        gen = shards.landsat_chips(src.series.root, args.patch_size, **kw)
        meta = {"sensor": src.sensor}
    elif hasattr(src, "scenes"):
        shards.check_scenes_share_grid(src.scenes)
        gen = shards.scene_chips(src, args.patch_size, **kw)
        meta = {"sensor": src.sensor, "nodata": src.scenes[0].nodata}
    else:
        raise ConfigError(f"{inp}: a {type(src).__name__} cannot be packed; pack scenes, "
                          "rasters or the Landsat series")
    try:
        from ..progress import bar as progress_bar

        with progress_bar(unit="chip", desc="pack", enabled=not args.no_progress) as bar:
            m = shards.pack(gen, out, names, description=f"eossl data pack {inp}",
                            chunk_bytes=args.chunk_bytes, progress=bar, **meta)
    except BaseException:
        _remove_failed_pack(out, existed)  # a rerun of the corrected command starts clean
        raise
    print(f"packed {m['count']} chips of {m['shape']} {m['dtype']} into {len(m['chunks'])} "
          f"shard(s) in {out}\ntrain: eossl pretrain --data {out} --max-steps 100")
    return 0


def _remove_failed_pack(out, existed: bool) -> None:
    """Undo a pack that failed: its folder was new or empty, so all it holds is the pack's."""
    import shutil

    if not out.is_dir():
        return
    if not existed:
        shutil.rmtree(out, ignore_errors=True)
        return
    for e in out.iterdir():
        if e.is_dir() and not e.is_symlink():
            shutil.rmtree(e, ignore_errors=True)
        else:
            e.unlink(missing_ok=True)
