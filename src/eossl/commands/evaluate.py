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


# Options several tasks share, checked here once before any task starts work: sizes and
# counts must be positive, rates positive, --out a folder that can be written.
POSITIVE = ("patch_size", "tile", "tile_size", "size", "epochs", "steps", "probe_steps",
            "batch_size", "per_class", "test_per_class", "crop", "patches")
RATES = ("lr", "backbone_lr_factor")
SHARES = ("min_labelled",)


def check_common(args) -> None:
    from ..errors import ConfigError
    from ..io import check_writable_folder

    for name in POSITIVE:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {value}: expected at least 1")
    for name in RATES:
        value = getattr(args, name, None)
        if value is not None and not value > 0:
            raise ConfigError(f"--{name.replace('_', '-')} {value}: expected a number > 0")
    for name in SHARES:
        value = getattr(args, name, None)
        if value is not None and not 0 <= value <= 1:
            raise ConfigError(f"--{name.replace('_', '-')} {value}: expected a share in [0, 1]")
    if getattr(args, "out", None):
        check_writable_folder(args.out)


def run(args) -> int:
    check_common(args)
    for mod in _task_modules():
        if mod.TASK == args.evaluate_task:
            return mod.run(args)
    raise AssertionError(f"no module for evaluate task {args.evaluate_task!r}")
