"""``eossl evaluate colorization-picture``: predicted vs true colour of a colorization
checkpoint on a few patches of a scene (true RGB | true L + predicted a,b | a,b error)."""

from __future__ import annotations

from pathlib import Path

TASK = "colorization-picture"


def add_parser(tsub) -> None:
    p = tsub.add_parser(TASK, help="picture of predicted vs true colour of a colorization "
                                   "checkpoint")
    p.add_argument("--checkpoint", required=True, help="colorization checkpoint")
    from ._data_options import add_data_options

    add_data_options(p, default="brandenburg")
    p.add_argument("--out", required=True, help="folder for colorization.png")
    p.add_argument("--patches", type=int, default=6, help="number of patches (default 6)")
    p.add_argument("--size", type=int, help="patch size in px (default: the training crop size)")
    p.add_argument("--area", choices=("test", "train", "all"), default="test",
                   help="where to draw patches: fold 0's test area of the data's split "
                        "(default), its train area, or the whole scene")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    import torch

    from ..data.datasets import RandomCropDataset
    from ..errors import ConfigError, OutputExistsError
    from ..checkpoint import load_method
    from ..methods.colorization import PICTURE_NAME, colorization_figure
    from ._data_options import open_from_args

    out = Path(args.out) / PICTURE_NAME
    if out.exists():
        raise OutputExistsError(f"{out} already exists; choose another --out")
    if args.patches < 1:
        raise ConfigError(f"--patches must be >= 1, got {args.patches}")
    model = load_method(args.checkpoint, "colorization")
    source = open_from_args(args, bands=args.bands or model.hparams.bands)
    size = args.size or int(model.hparams.crop_size)
    allowed = None
    if args.area != "all":
        if getattr(source, "labels", None) is None:
            raise ConfigError(f"--area {args.area}: the data have no labels, so no split; give "
                              "--labels or --area all")
        allowed = [getattr(source.fold_areas(i)[0], args.area)
                   for i in range(len(source.scenes))]
    crops = RandomCropDataset(source.scenes, size, args.patches, seed=args.seed,
                              allowed=allowed)
    raw = torch.stack([crops[i]["image"] for i in range(args.patches)])
    colorization_figure(model.colorize(raw), out,
                        title=f"{Path(args.checkpoint).name}: {args.patches} {size}px patches "
                              f"({args.area} area)")
    print(f"picture: {out}")
    return 0
