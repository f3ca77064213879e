"""``eossl benchmark``: pretrain every method under one budget and compare them fairly."""

from __future__ import annotations

import sys
from datetime import datetime

COMMAND = "benchmark"


def _seeds(text: str) -> list[int]:
    """'3' -> seeds 0, 1, 2 (a count); '0,4,7' or '5,' -> those seeds (a list, checked as
    every command's --seeds)."""
    import argparse

    from ._options import seed_list

    if "," not in text:
        try:
            count = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a seed count (3) or a list (0,1,2), "
                                             f"got {text!r}") from None
        if count < 1:
            raise argparse.ArgumentTypeError(f"expected a seed count of at least 1 (or a "
                                             f"list such as 0,), got {count}")
        return list(range(count))
    return seed_list(text)


SEEDS_HELP = ("a count (3 = seeds 0,1,2) or a comma-separated list (0,4,7; one seed: 5,); "
              "each method is pretrained once per seed (default: 3, or 1 with --quick)")


def add_parser(sub) -> None:
    import argparse

    from ._options import (add_budget, add_checkpoint, add_devices, add_out, add_progress,
                           fractions)

    p = sub.add_parser("benchmark", help="pretrain every method with the same backbone and "
                       "budget, run every evaluation that applies, write a report")
    p.add_argument("--methods", default="all", help="'all', a comma-separated list (see "
                   "'eossl methods'), or 'none' (only the --checkpoint encoders)")
    add_checkpoint(p, many=True, required=False, help="an encoder pretrained elsewhere, "
                   "evaluated beside the methods with its own random twin: external weights "
                   "(docs/external-encoders.md), torchgeo:WEIGHTS_NAME, an eossl checkpoint or "
                   "export; repeatable, NAME=PATH names its row (default: the file's name)")
    add_budget(p, what="pretraining (per run)", max_time_help_default="2m, or 45s with "
               "--quick")
    p.add_argument("--budget", help=argparse.SUPPRESS)  # the old spelling (run() says so)
    p.add_argument("--seeds", type=_seeds, help=SEEDS_HELP)
    from ._data_options import add_data_options

    add_data_options(p, default="brandenburg", pretrain=True, data_help="pretraining data for "
                     "crop-based methods, and (with --labels) the evaluations' labelled data; "
                     "brandenburg is the shipped Sentinel-2 sample scene")
    p.add_argument("--backbone", default="resnet18", help="timm backbone for every method")
    p.add_argument("--fractions", type=fractions, help="label fractions, e.g. "
                   "0.01,0.1,1 (default: 0.01,0.1,1, or 0.1,1 with --quick)")
    p.add_argument("--evaluations", help="comma-separated subset of evaluations "
                   "(default: all that apply)")
    p.add_argument("--quick", action="store_true", help="a small preset: 45 s per run, one "
                   "seed, fractions 10%% and 100%%, the evaluations' small settings")
    add_devices(p, many=True, what="pretraining; the evaluations run on one device of this "
                "kind")
    add_out(p, "benchmark folder (default: runs/benchmark-TIMESTAMP)")
    p.add_argument("--resume", action="store_true", help="continue the benchmark in --out with "
                   "its stored plan: finished runs and evaluations are kept (--accelerator and "
                   "--devices may change)")
    p.add_argument("--eval-workers", type=int, default=1, metavar="N",
                   help="run the evaluations in N processes sharing the CPU cores (on 2 "
                   "cores, 2 workers do about 1.4x the evaluations per hour of one); "
                   "pretraining stays one process (default: 1)")
    p.add_argument("--eval-worker", help=argparse.SUPPRESS)  # I/N: a process --eval-workers starts
    add_progress(p)


def _budget(a) -> str:
    """The plan's budget text from --max-time / --max-steps (or the old --budget), checked."""
    from ..bench.plan import QUICK, Budget
    from ..config import parse_duration
    from ..errors import ConfigError
    from ._options import note

    if a.budget is not None:
        if a.max_time is not None or a.max_steps is not None:
            raise ConfigError("--budget and --max-time/--max-steps: give the budget once "
                              "(--budget is the old spelling)")
        note("--budget is now --max-time DURATION / --max-steps N (both: whichever ends "
             "first); the old name will be removed in a later version")
        try:
            return Budget.parse(a.budget).spec()
        except ConfigError as e:
            raise ConfigError(f"--{e}") from None  # "budget 'x': ..." -> "--budget 'x': ..."
    if a.max_time is None and a.max_steps is None:
        return QUICK["budget"] if a.quick else "2m"
    seconds = None
    if a.max_time is not None:
        try:
            seconds = parse_duration(a.max_time)
        except ConfigError:
            raise ConfigError(f"--max-time {a.max_time!r}: expected a duration such as 90s, "
                              "10m, 1.5h or HH:MM:SS") from None
    if a.max_steps is not None and a.max_steps < 1:
        raise ConfigError(f"--max-steps {a.max_steps}: expected at least 1 step")
    return Budget(seconds=seconds, steps=a.max_steps).spec()


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


def _external(a) -> dict[str, str]:
    """{row name: absolute path} of the --checkpoint encoders, each read now (an unreadable
    one is refused before any pretraining); absolute, so a resume from elsewhere finds them."""
    from pathlib import Path

    from ..checkpoint import load_encoder
    from ._options import parse_checkpoints

    out = {}
    for name, path in parse_checkpoints(a.checkpoint).items():
        load_encoder(path)
        out[name] = str(Path(path).resolve())
    return out


def _progress_line(out, plan) -> str:
    """Where a resumed benchmark stands: pretraining runs finished, evaluation steps saved."""
    from pathlib import Path

    from ..bench.plan import BenchmarkFolder
    from ..bench.runner import finished_runs

    folder = BenchmarkFolder(Path(out))
    done = len(finished_runs(plan, folder))
    saved = len(list((folder.root / "evals").glob("*/*.json")))
    return (f"so far: {done} of {len(plan.methods) * len(plan.seeds)} pretraining runs "
            f"finished, {saved} evaluation steps saved")


def _command_line(a) -> str:
    import shlex

    return "eossl " + shlex.join(getattr(a, "argv", sys.argv[1:]))


def run(a) -> int:
    import dataclasses

    from ..bench.plan import QUICK, Plan, resolve_methods
    from ..bench.runner import evaluation_device, run_benchmark
    from ..errors import ConfigError
    from ..evaluate.base import get_evaluation
    from ..io import check_writable_folder

    if a.eval_worker:  # one of the processes that --eval-workers starts
        from ..bench.runner import evaluation_worker

        index, workers = (int(v) for v in a.eval_worker.split("/"))
        evaluation_worker(a.out, index, workers, cache=a.cache)
        return 0
    if a.eval_workers < 1:
        raise ConfigError(f"--eval-workers {a.eval_workers}: expected at least 1 process")
    if a.out:
        check_writable_folder(a.out)  # a file, or a folder under one: refused before any work
    stored = _stored_plan(a)
    if stored is not None:
        out = a.out
        changed = {k: getattr(a, k) for k in stored.RUNTIME if getattr(a, k) is not None}
        if changed:  # where it runs may change on a resume (another machine)
            stored = dataclasses.replace(stored, **changed)
        rows = ", ".join(stored.methods + list(stored.encoders)) or "none"
        print(f"resuming {out}: methods and encoders {rows}, seeds "
              f"{', '.join(map(str, stored.seeds))}, budget {stored.budget_obj} (its stored plan)")
        print(_progress_line(out, stored))
        report = run_benchmark(stored, out, cache=a.cache, progress=not a.no_progress,
                               command=_command_line(a), eval_workers=a.eval_workers)
        print(f"report: {report} (and {report.with_suffix('.html')})")
        return 0

    fractions = a.fractions or (QUICK["fractions"] if a.quick else [0.01, 0.1, 1.0])
    evals = [e.strip() for e in a.evaluations.split(",")] if a.evaluations else []
    for e in evals:
        get_evaluation(e)  # ConfigError naming the unknown evaluation and the choices
    from ._data_options import data_request

    opts = data_request(a).options()
    if opts:  # refuse bad data options now, not after the first pretraining run
        from ..data.resolve import open_data

        open_data(data_request(a), a.cache)
    encoders = _external(a)
    plan = Plan(methods=resolve_methods(a.methods), data_options=opts,
                seeds=a.seeds or (QUICK["seeds"] if a.quick else [0, 1, 2]),
                budget=_budget(a), data=a.data, backbone=a.backbone, fractions=fractions,
                evaluations=evals, quick=a.quick, encoders=encoders,
                accelerator=a.accelerator, devices=a.devices)
    evaluation_device(plan)  # an accelerator this machine lacks: refused before any work
    from ..bench.runner import run_config

    for method in plan.methods:  # a mistake common to every run is refused before any work
        run_config(plan, method, plan.seeds[0])
    out = a.out or f"runs/benchmark-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    report = run_benchmark(plan, out, cache=a.cache, progress=not a.no_progress,
                           command=_command_line(a), eval_workers=a.eval_workers)
    print(f"report: {report} (and {report.with_suffix('.html')})")
    return 0
