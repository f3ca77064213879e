"""``eossl evaluate NAME``: one registered evaluation (eossl.evaluate) of pretrained checkpoints,
each beside its random twin and the spectral baseline; the same class ``eossl benchmark`` runs.

Every evaluation gets the common options (checkpoints, seeds, output folder, device) and one
option per setting of its class (``--epochs`` for ``epochs``, ...). Its data options live in
``eossl/commands/evaluate_NAME.py`` (``TASK``, ``add_parser(task_subparsers)``, ``run(args)``)
when it needs more than a scene (``--data``, ``--labels``); such a module may also be a tool
of its own (a picture), found here by name, so a new one touches no shared file.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys

from ._options import (add_devices, add_progress, parse_checkpoints, seed_list,
                       torch_device)

COMMAND = "evaluate"


def _task_modules() -> dict:
    from .. import commands

    mods = [importlib.import_module(f"{commands.__name__}.{m.name}")
            for m in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name)
            if m.name.startswith("evaluate_")]
    return {m.TASK: m for m in mods}


def add_parser(sub) -> None:
    from ..evaluate.base import available_evaluations

    p = sub.add_parser("evaluate", help="downstream evaluations of pretrained encoders")
    tsub = p.add_subparsers(dest="evaluate_task", required=True, metavar="TASK")
    modules = _task_modules()
    for name in available_evaluations():
        if name in modules:
            modules[name].add_parser(tsub)
        else:
            add_scene_options(add_evaluation_parser(tsub, name), name)
    for name, mod in modules.items():
        if name not in available_evaluations():
            mod.add_parser(tsub)


# Options several tasks share, checked here once before any task starts work: sizes and
# counts must be positive, rates positive, --out a folder that can be written.
POSITIVE = ("patch_size", "size", "epochs", "steps", "probe_steps",
            "batch_size", "per_class", "test_per_class", "patches")
RATES = ("lr", "backbone_lr_scale", "C")
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
        if isinstance(value, (int, float)) and not value > 0:  # (C may also be "cv")
            raise ConfigError(f"--{name.replace('_', '-')} {value}: expected a number > 0")
    for name in SHARES:
        value = getattr(args, name, None)
        if value is not None and not 0 <= value <= 1:
            raise ConfigError(f"--{name.replace('_', '-')} {value}: expected a share in [0, 1]")
    bad = [f for f in getattr(args, "fractions", None) or () if not 0 < f <= 1]
    if bad:
        raise ConfigError(f"--fractions {bad[0]:g}: expected label shares in (0, 1], e.g. "
                          "0.01,0.1,1")
    if getattr(args, "out", None):
        check_writable_folder(args.out)


def run(args) -> int:
    check_common(args)
    modules = _task_modules()
    if args.evaluate_task in modules:
        return modules[args.evaluate_task].run(args)
    return run_evaluation(args.evaluate_task, args)


# ------------------------------------------------------------------ options
def _typed(default):
    """An argparse type for a setting, from its default value."""
    def number_or_cv(text):
        if text == "cv":
            return text
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number or 'cv', got {text!r}")

    def seq(cast):
        def parse(text):
            try:
                return tuple(cast(v.strip()) for v in text.split(",") if v.strip())
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected a comma-separated list, got "
                                                 f"{text!r}")
        return parse

    if isinstance(default, (list, tuple)):
        return seq(type(default[0]) if default else str)
    if default is None:
        return seq(str)
    if isinstance(default, str) or default == "cv":
        return number_or_cv
    return type(default)


def add_evaluation_parser(tsub, name: str):
    """The task parser of a registered evaluation: common options and its settings."""
    from ..evaluate.base import get_evaluation

    cls = get_evaluation(name)
    p = tsub.add_parser(name, help=cls.title)
    p.add_argument("--checkpoint", action="append", default=[],
                   help="pretrained checkpoint (repeatable; NAME=PATH names the row)")
    p.add_argument("--seeds", type=seed_list, default=[0, 1, 2],
                   help="seeds (comma-separated); each is a random twin's and a fit's seed")
    p.add_argument("--no-random-init", action="store_true",
                   help="leave out the random-twin reference rows")
    add_devices(p, many=False)
    p.add_argument("--out", help="write results.json, report.md and report.html here "
                                 "(never overwritten)")
    add_progress(p)
    for key, default in cls.settings.items():
        flag = "--" + key.replace("_", "-")
        if default is True:  # on by default: --no-KEY turns it off
            p.add_argument("--no-" + key.replace("_", "-"), action="store_false", default=None,
                           dest=key, help=f"leave out {key.replace('_', ' ')} (default on)")
        elif isinstance(default, bool):
            p.add_argument(flag, action="store_true", default=None,
                           help=f"setting {key} (default off)")
        else:
            shown = (",".join(map(str, default)) if isinstance(default, (list, tuple))
                     else default)
            p.add_argument(flag, type=_typed(default), default=None, dest=key,
                           help=f"default {shown}")
    return p


def add_scene_options(p, name: str) -> None:
    """The data options of an evaluation (the one option family, commands/_data_options.py),
    defaulting to the evaluation's own data."""
    from ..evaluate.base import get_evaluation
    from ._data_options import add_data_options

    add_data_options(p, default=get_evaluation(name).default_data)


# ------------------------------------------------------------------ running
def run_evaluation(name: str, args, options: dict | None = None) -> int:
    """Run evaluation ``name`` as the options in ``args`` say, print its tables and findings,
    and (``--out``) write results.json, report.md and report.html."""
    from ..checkpoint import load_encoder
    from ..errors import ConfigError, OutputExistsError
    from ..evaluate.base import Context, compare, get_evaluation
    from ..evaluate.summary import report_blocks
    from ..io import atomic_write_text, check_writable_folder
    from ..report import blocks_to_text, write_blocks
    from ._data_options import data_request

    # every argument is checked before any work (minutes of training may follow)
    check_common(args)
    cls = get_evaluation(name)
    settings = {k: getattr(args, k) for k in cls.settings if getattr(args, k, None) is not None}
    ev = cls(**settings)
    checkpoints = parse_checkpoints(args.checkpoint)
    if not checkpoints:
        raise ConfigError(f"evaluate {name}: give --checkpoint PATH (repeatable); the "
                          "reference row is each checkpoint's random twin")
    # parse_checkpoints has checked each path exists (a file, or an export's folder)
    seeds = list(args.seeds)
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    out = None
    if getattr(args, "out", None):
        out = check_writable_folder(args.out)
        if (out / "results.json").exists():
            raise OutputExistsError(f"{out} already holds results.json; choose another --out")
    device = str(torch_device(getattr(args, "accelerator", None),
                              getattr(args, "devices", "1")))
    encoders = {n: load_encoder(p) for n, p in checkpoints.items()}  # unreadable: refused now
    request = data_request(args)
    ctx = Context(request, cache=args.cache, root=out, device=device,
                  options={**(options or {}), "first_seed": seeds[0]})
    why = ev.available(ctx)
    if why:
        raise ConfigError(f"evaluate {name}: {why}")
    print(f"split: {ev.splits(ctx)}")
    for n, enc in encoders.items():  # whether each pretraining saw these test areas
        note = ev.pretraining_note(ctx, enc)
        if note:
            print(f"{n}: {note}")
    records = compare(ev, ctx, encoders, seeds, twins=not args.no_random_init, log=print,
                      progress=not getattr(args, "no_progress", False))
    command = "eossl " + " ".join(getattr(args, "argv", sys.argv[1:]))
    header = [f"**command**: `{command}`", f"**seeds**: {', '.join(map(str, seeds))}"]
    blocks = report_blocks([ev], records, title=f"eossl evaluate {name}", header=header,
                           splits={name: ev.splits(ctx)},
                           figures=(out / "figures") if out else None)
    print(blocks_to_text(blocks))
    if out is not None:
        atomic_write_text(out / "results.json", json.dumps(
            {"command": command, "evaluation": name, "settings": ev.params(),
             "protocol": ev.protocol(), "splits": ev.splits(ctx), "records": records},
            indent=1, default=_plain))
        path = write_blocks(out, blocks, title=f"eossl evaluate {name}")
        print(f"report: {path} (and {path.with_suffix('.html')})")
    return 0


def _plain(v):
    if isinstance(v, (set, tuple)):
        return list(v)
    return float(v)
