"""``eossl evaluate TASK``: downstream evaluations beyond the probe (ensemble, segmentation,
change detection, regression, multi-label, per-pixel probe).

Each task lives in ``eossl/commands/evaluate_NAME.py`` with ``TASK`` (its name),
``add_parser(task_subparsers)`` and ``run(args) -> int``, found here by name, so a new
evaluation touches no shared file.
"""

from __future__ import annotations

import importlib
import pkgutil

COMMAND = "evaluate"


def _task_modules() -> list:
    from .. import commands

    return [importlib.import_module(f"{commands.__name__}.{m.name}")
            for m in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name)
            if m.name.startswith("evaluate_")]


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="downstream evaluations of pretrained encoders")
    tsub = p.add_subparsers(dest="evaluate_task", required=True, metavar="TASK")
    for mod in _task_modules():
        mod.add_parser(tsub)


def run(args) -> int:
    for mod in _task_modules():
        if mod.TASK == args.evaluate_task:
            return mod.run(args)
    raise AssertionError(f"no module for evaluate task {args.evaluate_task!r}")
