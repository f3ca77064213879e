"""``eossl embed --checkpoint CKPT --data SCENE``: patch embeddings to GeoParquet and dense
embeddings to a GeoTIFF, streamed window by window and resumable; see eossl.embed."""

from __future__ import annotations

COMMAND = "embed"
# the old form was ``eossl embed CHECKPOINT SCENE``
POSITIONALS = ("checkpoint", "data")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(COMMAND, help="embed a scene: patches -> GeoParquet, dense "
                              "features -> GeoTIFF (georeferenced, streamed, resumable)")
    from ._data_options import add_data_options
    from ._options import (SIZE, add_checkpoint, add_devices, add_out, add_patch_size,
                           add_progress, legacy_positionals)

    add_checkpoint(p, required=False)  # required, but an old positional may give it
    add_data_options(p, labels=False, root=False,
                     data_help="the scene: a sample name (brandenburg), a raster file "
                     "(GeoTIFF/COG/VRT) or a folder of band files")
    legacy_positionals(p, POSITIONALS)
    add_out(p, "output folder (default: embeddings-SCENE)")
    add_patch_size(p, help="side of the embedded patches in px (default: the checkpoint's "
                   "crop size)")
    p.add_argument("--window", type=SIZE, default=512, metavar="PX",
                   help="side of the window read at a time in px (memory, not results)")
    p.add_argument("--min-valid", type=float, default=0.5,
                   help="skip patches with a smaller share of valid pixels")
    p.add_argument("--no-dense", action="store_true", help="patch embeddings only")
    add_devices(p, many=False)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_progress(p)


def run(args) -> int:
    from pathlib import Path

    from ..embed import embed_scene
    from ._options import require, take_positionals, torch_device

    take_positionals(args, COMMAND, POSITIONALS)
    require(args, COMMAND, *POSITIONALS)
    from ..models.external import weights_path

    args.checkpoint = str(weights_path(args.checkpoint))  # torchgeo:NAME -> its file
    device = torch_device(args.accelerator, args.devices)
    out = args.out or f"embeddings-{Path(args.data).stem}"
    res = embed_scene(args.checkpoint, args.data, out, patch_size=args.patch_size,
                      window=args.window, dense=not args.no_dense, min_valid=args.min_valid,
                      resume=args.resume, overwrite=args.overwrite, cache=args.cache,
                      progress=not args.no_progress, device=device,
                      bands=[b.strip() for b in args.band_names.split(",") if b.strip()]
                      if args.band_names else None,
                      data_options={k: getattr(args, k) for k in ("sensor", "nodata", "bands")
                                    if getattr(args, k, None) is not None})
    print(f"{res.n_patches} patch embeddings: {res.patches}")
    if res.dense:
        print(f"dense embeddings: {res.dense}")
    return 0
