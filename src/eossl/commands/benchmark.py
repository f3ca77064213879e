"""``eossl benchmark``: pretrain every method under one budget and compare them fairly."""

from __future__ import annotations

import sys
from datetime import datetime

COMMAND = "benchmark"


def _seeds(text: str) -> list[int]:
    """'3' -> seeds 0, 1, 2; '0,4,7' -> those seeds."""
    import argparse

    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a seed count (3) or a list (0,1,2), got "
                                         f"{text!r}") from None
    if len(vals) == 1 and "," not in text:
        if vals[0] < 1:
            raise argparse.ArgumentTypeError(f"--seeds {text}: need at least one seed")
        return list(range(vals[0]))
    return vals


def add_parser(sub) -> None:
    p = sub.add_parser("benchmark", help="pretrain every method with the same backbone and "
                       "budget, run every evaluation that applies, write a report")
    p.add_argument("--methods", default="all", help="'all' or a comma-separated list "
                   "(see 'eossl methods')")
    p.add_argument("--budget", help="per run: wall clock (10m, 90s) or steps (500-steps); "
                   "default 2m (--quick: 45s)")
    p.add_argument("--seeds", type=_seeds, help="a count (3 -> 0,1,2) or a list (0,1,2); "
                   "default 3 (--quick: 1)")
    from ._data_options import add_data_options

    add_data_options(p, default="brandenburg", pretrain=True, data_help="pretraining data for "
                     "crop-based methods, and (with --labels) the evaluations' labelled data; "
                     "brandenburg is the shipped Sentinel-2 sample scene")
    p.add_argument("--backbone", default="resnet18", help="timm backbone for every method")
    p.add_argument("--fractions", help="label fractions, e.g. 0.01,0.1,1")
    p.add_argument("--evaluations", help="comma-separated subset of evaluations "
                   "(default: all that apply)")
    p.add_argument("--quick", action="store_true", help="a small preset: 45 s per run, one "
                   "seed, fractions 10%% and 100%%, the evaluations' small settings")
    p.add_argument("--out", help="benchmark folder (default runs/benchmark-TIMESTAMP)")
    p.add_argument("--resume", action="store_true", help="continue the benchmark in --out with "
                   "its stored plan: finished runs and evaluations are kept")
    p.add_argument("--no-progress", action="store_true")


def _stored_plan(a):
    """The plan of the benchmark in --out when resuming; None for a new benchmark. A folder
    holding a benchmark is only continued when asked, like pretrain's run folders."""
    from pathlib import Path

    from ..bench.plan import BenchmarkFolder
    from ..errors import ConfigError, OutputExistsError

    if a.resume and not a.out:
        raise ConfigError("--resume needs --out BENCHMARK_FOLDER (the benchmark to continue)")
    if not a.out:
        return None
    folder = BenchmarkFolder(Path(a.out))
    if folder.plan_path.exists():
        if not a.resume:
            raise OutputExistsError(f"{a.out} already holds a benchmark; pass --resume to "
                                    "continue it (finished runs are kept), or choose another "
                                    "--out")
        return folder.load_plan()
    if a.resume:
        raise ConfigError(f"--resume: {a.out} holds no benchmark to continue (no plan.json)")
    return None


def _command_line(a) -> str:
    import shlex

    return "eossl " + shlex.join(getattr(a, "argv", sys.argv[1:]))


def run(a) -> int:
    from ..bench.plan import QUICK, Plan, resolve_methods
    from ..bench.runner import run_benchmark
    from ..evaluate.base import get_evaluation
    from ..io import check_writable_folder

    if a.out:
        check_writable_folder(a.out)  # a file, or a folder under one: refused before any work
    stored = _stored_plan(a)
    if stored is not None:
        out = a.out
        print(f"resuming {out}: methods {', '.join(stored.methods)}, seeds "
              f"{', '.join(map(str, stored.seeds))}, budget {stored.budget_obj} (its stored plan)")
        report = run_benchmark(stored, out, cache=a.cache, progress=not a.no_progress,
                               command=_command_line(a))
        print(f"report: {report} (and {report.with_suffix('.html')})")
        return 0

    fractions = ([float(v) for v in a.fractions.split(",") if v.strip()] if a.fractions
                 else (QUICK["fractions"] if a.quick else [0.01, 0.1, 1.0]))
    evals = [e.strip() for e in a.evaluations.split(",")] if a.evaluations else []
    for e in evals:
        get_evaluation(e)  # ConfigError naming the unknown evaluation and the choices
    from ._data_options import data_request

    opts = data_request(a).options()
    if opts:  # refuse bad data options now, not after the first pretraining run
        from ..data.resolve import open_data

        open_data(data_request(a), a.cache)
    plan = Plan(methods=resolve_methods(a.methods), data_options=opts,
                seeds=a.seeds or (QUICK["seeds"] if a.quick else [0, 1, 2]),
                budget=a.budget or (QUICK["budget"] if a.quick else "2m"), data=a.data,
                backbone=a.backbone, fractions=fractions, evaluations=evals, quick=a.quick)
    from ..bench.runner import run_config

    for method in plan.methods:  # a mistake common to every run is refused before any work
        run_config(plan, method, plan.seeds[0])
    out = a.out or f"runs/benchmark-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    report = run_benchmark(plan, out, cache=a.cache, progress=not a.no_progress,
                           command=_command_line(a))
    print(f"report: {report} (and {report.with_suffix('.html')})")
    return 0
