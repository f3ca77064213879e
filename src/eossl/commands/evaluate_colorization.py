"""``eossl evaluate colorization-picture``: predicted vs true colour of a colorization
checkpoint on a few patches of a scene (true RGB | true L + predicted a,b | a,b error)."""

from __future__ import annotations

from pathlib import Path

TASK = "colorization-picture"


def add_parser(tsub) -> None:
    p = tsub.add_parser(TASK, help="picture of predicted vs true colour of a colorization "
                                   "checkpoint")
    p.add_argument("--checkpoint", required=True, help="colorization checkpoint")
    p.add_argument("--data", default="brandenburg",
                   help="sample name or folder of band files (default brandenburg)")
    p.add_argument("--out", required=True, help="folder for colorization.png")
    p.add_argument("--patches", type=int, default=6, help="number of patches (default 6)")
    p.add_argument("--size", type=int, help="patch size in px (default: the training crop size)")
    p.add_argument("--split", choices=("test", "train", "all"), default="test",
                   help="columns to draw patches from: the east test block (default), the west "
                        "train block, or the whole scene")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    import torch

    from ..data.datasets import SpatialSplit
    from ..data.sources import open_source
    from ..errors import ConfigError, OutputExistsError
    from ..checkpoint import load_method
    from ..methods.colorization import PICTURE_NAME, colorization_figure

    out = Path(args.out) / PICTURE_NAME
    if out.exists():
        raise OutputExistsError(f"{out} already exists; choose another --out")
    if args.patches < 1:
        raise ConfigError(f"--patches must be >= 1, got {args.patches}")
    model = load_method(args.checkpoint, "colorization")
    source = open_source(args.data, args.cache, bands=model.hparams.bands)
    size = args.size or int(model.hparams.crop_size)
    width = source.scenes[0].width
    region = None if args.split == "all" else SpatialSplit(gap=size).columns(args.split, width)
    crops = source.crops(size, args.patches, seed=args.seed, region=region)
    raw = torch.stack([crops[i]["image"] for i in range(args.patches)])
    colorization_figure(model.colorize(raw), out,
                        title=f"{Path(args.checkpoint).name}: {args.patches} {size}px patches "
                              f"({args.split} block)")
    print(f"picture: {out}")
    return 0
