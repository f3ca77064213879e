"""``eossl evaluate dense-map``: the picture of a dense checkpoint's pixel embeddings (first
three principal components as RGB) beside the true-colour scene and its OSM label map."""

from __future__ import annotations

TASK = "dense-map"


def add_parser(tsub) -> None:
    p = tsub.add_parser(TASK, help="PCA picture of a dense checkpoint's pixel embeddings")
    p.add_argument("--checkpoint", required=True, help="a checkpoint of method 'dense'")
    from ._data_options import add_data_options

    add_data_options(p, default="brandenburg")
    p.add_argument("--out", required=True, help="PNG file to write (never overwritten)")
    from ._options import add_devices

    add_devices(p, many=False)


def run(args) -> int:
    from pathlib import Path

    import torch

    from ..checkpoint import load_encoder
    from ._data_options import open_from_args
    from ..errors import ConfigError, OutputExistsError
    from ..methods.dense import write_embedding_map
    from ._options import torch_device

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: expected a .png file name")
    if out.exists():
        raise OutputExistsError(f"{out} exists; choose another --out")
    encoder = load_encoder(args.checkpoint)
    device = torch_device(args.accelerator, args.devices)
    unet = encoder.unet().to(device).eval()  # the dense checkpoint's own U-Net
    source = open_from_args(args, bands=args.bands or encoder.bands)
    labels = source.label_map() if getattr(source, "labels", None) is not None else None

    def embed(raw: torch.Tensor) -> torch.Tensor:
        return unet(raw)

    write_embedding_map(embed, source.scenes[0], labels, out, device=device,
                        class_names=source.classes)
    print(f"embedding picture: {out}")
    return 0
