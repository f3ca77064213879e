"""``eossl evaluate pixel-probe``: per-pixel logistic-regression probe of pretrained encoders on
the labelled pixels of a scene (evaluate/pixel_probe.py), beside each encoder's random twin and
the raw-spectrum baseline."""

from __future__ import annotations

TASK = "pixel-probe"


def add_parser(tsub) -> None:
    from .evaluate import add_evaluation_parser, add_scene_options

    add_scene_options(add_evaluation_parser(tsub, TASK), TASK)


def run(args) -> int:
    from .evaluate import run_evaluation

    return run_evaluation(TASK, args)
