"""``eossl collect``: SeCo collection from a STAC API into a shard corpus (data/collect.py)."""

from __future__ import annotations

from pathlib import Path

COMMAND = "collect"


def _list(text):
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _int_list(text):
    import argparse

    try:
        return [int(v) for v in _list(text) or []]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got "
                                         f"{text!r}") from None


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "collect", help="SeCo collection from a STAC API into a shard corpus (resumable)",
        description="Sample locations around large cities, find five dates 12 weeks apart with "
        "clear patches in a STAC API, and read only the patch from each cloud-optimised "
        "GeoTIFF. Rerun it with --resume to continue an interrupted collection.")
    from ._options import add_out, add_patch_size, add_progress, document_default

    add_out(p, "corpus folder (new, or with --resume one that holds an interrupted "
            "collection)", required=True)
    p.add_argument("--resume", action="store_true", help="continue the collection in --out "
                   "(same settings; no duplicates, no gaps)")
    p.add_argument("--locations", type=int, required=True, metavar="N",
                   help="locations to draw in total")
    p.add_argument("--preset", metavar="NAME", help="STAC API, collection, assets "
                   "and cloud mask of a known source (earth-search-s2l2a: Sentinel-2 L2A on "
                   "AWS); the other options override its values")
    p.add_argument("--stac-url", help="STAC API root URL")
    p.add_argument("--collection", help="STAC collection id")
    p.add_argument("--assets", type=_list, help="comma-separated asset keys to read, in order")
    p.add_argument("--band-names", type=_list, help="band names for the assets (default: the "
                   "asset keys)")
    p.add_argument("--mask-asset", help="cloud/scene-classification asset (e.g. scl, fmask)")
    p.add_argument("--mask-bad", type=_int_list,
                   help="mask values that reject a patch (e.g. 0,1,3,8,9,10 for SCL)")
    add_patch_size(p, old=("--patch-px",), help="side of the collected patches in px (the "
                   "paper: 264 at 10 m)")
    p.add_argument("--resolution", type=float, help="patch pixel size in m")
    p.add_argument("--max-scene-cloud", type=float, help="largest eo:cloud_cover (percent) "
                   "of a scene")
    p.add_argument("--max-patch-bad", type=float, help="share of masked pixels a patch may "
                   "hold")
    p.add_argument("--dates", type=int, dest="n_dates", help="dates per location")
    p.add_argument("--spacing-days", type=int, help="days between dates (84 = 12 weeks)")
    p.add_argument("--window-days", type=float, help="half window around each date in days")
    p.add_argument("--sigma-km", type=float, help="Gaussian offset from the city in km")
    p.add_argument("--reference-date", help="latest possible first date, YYYY-MM-DD")
    p.add_argument("--cities", help="CSV of name,lat,lon,population (default: the shipped "
                   "list)")
    p.add_argument("--top-cities", type=int, help="draw among the N most populous cities")
    p.add_argument("--max-tries", type=int, help="redraws per location before giving up")
    p.add_argument("--seed", type=int, help="random seed of the draws")
    p.add_argument("--commit-every", type=int, help="locations per atomic commit")
    p.add_argument("--retries", type=int, help="tries per request on timeouts/5xx")
    add_progress(p)
    for action in p._actions:  # the defaults are CollectConfig's (a preset may change some)
        if action.dest in CONFIG_KEYS and action.default is None:
            document_default(action, _config_default(CONFIG_KEYS[action.dest]))


# option dest -> CollectConfig field (--patch-size is the field patch_px)
CONFIG_KEYS = {k: k for k in (
    "stac_url", "collection", "assets", "band_names", "mask_asset", "mask_bad", "resolution",
    "max_scene_cloud", "max_patch_bad", "n_dates", "spacing_days", "window_days", "sigma_km",
    "reference_date", "cities", "top_cities", "max_tries", "seed", "commit_every", "retries")}
CONFIG_KEYS["patch_size"] = "patch_px"


def _config_default(field: str):
    def get():
        import dataclasses

        from ..data.collect import CollectConfig

        f = {f.name: f for f in dataclasses.fields(CollectConfig)}[field]
        return None if f.default is dataclasses.MISSING else f.default

    return get


def collect_config(args):
    """The CollectConfig the options describe (a preset's values, then the options given)."""
    from ..data.collect import CollectConfig
    from ..errors import ConfigError

    given = {field: getattr(args, dest) for dest, field in CONFIG_KEYS.items()
             if getattr(args, dest, None) is not None}
    if args.preset:
        return CollectConfig.preset(args.preset, **given)
    missing = [f"--{k.replace('_', '-')}" for k in ("stac_url", "collection", "assets")
               if k not in given]
    if missing:
        raise ConfigError(f"collect needs {', '.join(missing)} (or --preset "
                          "earth-search-s2l2a)")
    return CollectConfig(**given)


def run(args) -> int:
    from ..data.collect import collect
    from ..errors import ConfigError

    cfg = collect_config(args)
    if args.locations < 1:
        raise ConfigError(f"--locations must be >= 1, got {args.locations}")
    out = Path(args.out)
    existed = _check_resume(out, args.resume)
    try:
        prog = collect(cfg, out, args.locations, progress=not args.no_progress)
    except BaseException:
        _forget_empty_start(out, existed)
        raise
    print(f"collected {prog['collected']} of {prog['next_index']} locations "
          f"({len(prog['failed'])} gave up after {cfg.max_tries} draws) into {out}; "
          f"cloud filter: {prog['filter_mode']}")
    return 0


def _progress(out: Path) -> dict | None:
    """The collection progress recorded in ``out`` (None: no collection there)."""
    import json

    from ..errors import DataError

    meta = out / "eossl.json"
    if not meta.is_file():
        return None
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("progress") or {}
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise DataError(f"{meta}: unreadable ({e}); it is not the eossl.json eossl wrote") \
            from None


def _started(prog: dict | None) -> bool:
    """Whether a collection got anywhere (a failed first request leaves next_index 0)."""
    return bool(prog) and (prog.get("next_index") or 0) > 0


def _check_resume(out: Path, resume: bool) -> bool:
    """Refuse an --out this collection may not use, before any request; returns whether the
    folder existed. A folder holding a collection is only continued when asked (--resume),
    like pretrain's run folders; --resume on a folder with no collection is a mistake worth
    saying. A collection that never got past its first location (a wrong URL, no network)
    holds nothing: a plain rerun replaces it."""
    from ..errors import ConfigError, OutputExistsError
    from ..io import check_writable_folder

    check_writable_folder(out)
    prog = _progress(out)
    if prog is not None and not resume and not _started(prog):
        _clear_collection(out)
        prog = None
    if prog is not None:
        if not resume:
            raise OutputExistsError(
                f"{out} already holds a collection ({prog.get('collected', '?')} locations "
                f"collected, next index {prog.get('next_index', '?')}); pass --resume to "
                "continue it, or choose another --out")
    elif resume:
        raise ConfigError(f"--resume: {out} holds no collection to continue (no eossl.json)")
    elif out.exists() and any(out.iterdir()):
        raise OutputExistsError(f"{out} exists, is not empty and is not a collection; choose "
                                "another --out")
    return out.exists()


def _forget_empty_start(out: Path, existed: bool) -> None:
    """After a failure: a collection that recorded no location is removed (the folder too if
    this command made it), so the corrected command runs as if nothing happened."""
    try:
        if _started(_progress(out)):
            return
    except Exception:  # an unreadable record is not ours to delete
        return
    _clear_collection(out)
    if not existed and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def _clear_collection(out: Path) -> None:
    """Remove the files of a shard corpus that holds no sample (eossl.json, index.json, a
    commit's temporary folder); anything else in the folder is left alone."""
    import shutil

    from ..data.shards import INDEX, META

    for name in (META, INDEX):
        (out / name).unlink(missing_ok=True)
    for tmp in out.glob(".commit-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    from ..io import remove_stale_parts

    remove_stale_parts(out)
