"""``eossl evaluate segment``: land-cover segmentation with scarce labels (evaluate/segment.py):
a U-Net fine-tuned on the encoder and a frozen-encoder linear probe, mIoU on the test tiles of
every fold, beside each encoder's random twin."""

from __future__ import annotations

TASK = "segment"


def add_parser(tsub) -> None:
    from .evaluate import add_evaluation_parser, add_scene_options

    add_scene_options(add_evaluation_parser(tsub, TASK), TASK)


def run(args) -> int:
    from .evaluate import run_evaluation

    return run_evaluation(TASK, args)
