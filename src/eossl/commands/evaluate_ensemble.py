"""``eossl evaluate ensemble``: the colorization paper's RGB + spectral ensemble
(evaluate/ensemble.py): an RGB classifier (visible bands; ImageNet weights from a local file,
or random) and a spectral classifier from a colorization checkpoint, fine-tuned on the training
patches, scored with their logit average on the test patches, with saliency maps.
"""

from __future__ import annotations

TASK = "ensemble"


def add_parser(tsub) -> None:
    from .evaluate import add_evaluation_parser, add_scene_options

    p = add_evaluation_parser(tsub, TASK)
    add_scene_options(p, TASK)
    p.add_argument("--rgb-weights", help="local timm weights file (.pth/.safetensors) of the "
                   "same backbone, e.g. ImageNet resnet18, for the RGB member; default: random")


def run(args) -> int:
    from pathlib import Path

    from ..errors import ConfigError
    from .evaluate import run_evaluation

    if args.rgb_weights and not Path(args.rgb_weights).is_file():
        raise ConfigError(f"--rgb-weights {args.rgb_weights}: no such file; expected a local "
                          "timm weights file (e.g. resnet18 ImageNet .pth)")
    return run_evaluation(TASK, args, {"rgb_weights": args.rgb_weights})
