"""``eossl embed CHECKPOINT SCENE``: patch embeddings to GeoParquet and dense embeddings to a
GeoTIFF, streamed window by window and resumable; see eossl.embed."""

from __future__ import annotations

COMMAND = "embed"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(COMMAND, help="embed a scene: patches -> GeoParquet, dense "
                              "features -> GeoTIFF (georeferenced, streamed, resumable)")
    from ._data_options import add_data_options

    p.add_argument("checkpoint", help="eossl pretraining checkpoint")
    add_data_options(p, positional="scene", labels=False, root=False,
                     data_help="the scene: a sample name (brandenburg), a raster file "
                     "(GeoTIFF/COG/VRT) or a folder of band files")
    p.add_argument("--out", help="output folder (default embeddings-SCENE)")
    p.add_argument("--patch-size", type=int, help="patch size in px (default: the "
                   "checkpoint's crop size)")
    p.add_argument("--window", type=int, default=512, help="window size in px read at a time")
    p.add_argument("--min-valid", type=float, default=0.5,
                   help="skip patches with a smaller share of valid pixels (default 0.5)")
    p.add_argument("--no-dense", action="store_true", help="patch embeddings only")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    from pathlib import Path

    from ..embed import embed_scene

    out = args.out or f"embeddings-{Path(args.scene).stem}"
    res = embed_scene(args.checkpoint, args.scene, out, patch_size=args.patch_size,
                      window=args.window, dense=not args.no_dense, min_valid=args.min_valid,
                      resume=args.resume, overwrite=args.overwrite, cache=args.cache,
                      progress=not args.no_progress,
                      bands=[b.strip() for b in args.band_names.split(",") if b.strip()]
                      if args.band_names else None,
                      data_options={k: getattr(args, k) for k in ("sensor", "nodata", "bands")
                                    if getattr(args, k, None) is not None})
    print(f"{res.n_patches} patch embeddings: {res.patches}")
    if res.dense:
        print(f"dense embeddings: {res.dense}")
    return 0
