"""``eossl evaluate regress``: frozen-feature (ridge) and fine-tuned regression heads, RMSE and
R^2 per target (evaluate/regress.py), on the built-in class-share task, a regression chip
table, or a user's table (--table FILE.csv/.parquet with columns row, col = top-left pixel of
each patch, plus numeric targets).
"""

from __future__ import annotations

TASK = "regress"


def add_parser(tsub) -> None:
    from .evaluate import add_evaluation_parser, add_scene_options

    p = add_evaluation_parser(tsub, TASK)
    add_scene_options(p, TASK)
    p.add_argument("--table", help="CSV or Parquet of patch targets: columns row, col (top-left "
                                   "pixel), optional split (train/test), numeric targets. "
                                   "Default: the share of each class per patch")
    p.add_argument("--targets", help="comma-separated target columns of --table (default: all "
                                     "numeric columns)")


def run(args) -> int:
    from .evaluate import run_evaluation

    targets = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else None
    return run_evaluation(TASK, args, {"table": args.table, "targets": targets})
