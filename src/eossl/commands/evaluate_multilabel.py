"""``eossl evaluate multilabel``: multi-label linear probe and fine-tuning (micro/macro mAP, F1
and F2 at 0.5; evaluate/multilabel.py) on BigEarthNet v2 (default: the real sample) or any
multi-label chip table; Sentinel-1 bands are loaded for encoders that read radar.
"""

from __future__ import annotations

TASK = "multilabel"


def add_parser(tsub) -> None:
    from .evaluate import add_evaluation_parser, add_scene_options

    add_scene_options(add_evaluation_parser(tsub, TASK), TASK)


def run(args) -> int:
    from .evaluate import run_evaluation

    # --root alone (the earlier form) names a BigEarthNet v2 LMDB folder
    if args.root and args.data == "bigearthnet":
        args.data, args.root = args.root, None
    return run_evaluation(TASK, args)
