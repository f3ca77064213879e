"""``eossl evaluate regress``: frozen-feature (ridge) and fine-tuned regression heads, RMSE and
R^2 per target, on the built-in class-share task or a user's table (--table FILE.csv/.parquet
with columns row, col = top-left pixel of each patch, plus numeric targets).
"""

from __future__ import annotations

from .evaluate_pixel_probe import add_common, load_encoders, parse_checkpoints, write_results

TASK = "regress"


def add_parser(tsub) -> None:
    p = tsub.add_parser(TASK, help="regression heads (ridge and fine-tuned), RMSE and R^2")
    add_common(p)
    p.add_argument("--table", help="CSV or Parquet of patch targets: columns row, col (top-left "
                                   "pixel), optional split (train/test), numeric targets. "
                                   "Default: the share of each OSM class per patch")
    p.add_argument("--targets", help="comma-separated target columns of --table (default: all "
                                     "numeric columns)")
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--min-labelled", type=float, default=0.5,
                   help="class-share task: keep patches with at least this labelled share")
    p.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs (default 10)")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning head learning rate; the "
                                                          "backbone gets 0.1 x")
    p.add_argument("--no-finetune", action="store_true", help="frozen ridge heads only")
    p.add_argument("--no-spectral", action="store_true", help="leave out the spectral baseline")


def run(args) -> int:
    from ._data_options import open_from_args
    from ..evaluate.regress import (class_share_patches, compare_regression, read_target_table,
                                    regression_table)

    # Labels are only needed by the built-in task, so a --table run works on unlabelled data.
    source = open_from_args(args)
    info = {}
    if getattr(source, "task", None) == "regression":  # a chip table with numeric targets
        fold = source.folds()[0]
        train, test = fold.train, fold.test
        task = f"chip targets {', '.join(source.classes)} ({source.split_note})"
    elif args.table:
        targets = [t for t in args.targets.split(",") if t.strip()] if args.targets else None
        train, test, info = read_target_table(args.table, source.scenes[0], args.patch_size,
                                              targets)
        task = f"table {args.table}"
    else:
        train = class_share_patches(source, "train", args.patch_size, args.min_labelled,
                                    classes=source.classes)
        test = class_share_patches(source, "test", args.patch_size, args.min_labelled,
                                   classes=source.classes)
        task = f"share of each class per {args.patch_size} px patch"
    encoders = load_encoders(parse_checkpoints(args.checkpoint), not args.no_random_init)
    encoders = {n: e.for_bands(source.bands) for n, e in encoders.items()}
    records = compare_regression(train, test, encoders, seeds=args.seeds,
                                 spectral=not args.no_spectral, finetune=not args.no_finetune,
                                 epochs=args.epochs, lr=args.lr)
    table = regression_table(records)
    print(f"task: {task}; {len(train)} train / {len(test)} test patches")
    if info.get("left_out_straddling"):
        print(f"left out {info['left_out_straddling']} patch(es) straddling the train/test "
              "border")
    print(table)
    md = (f"# eossl evaluate regress\n\n- data: {args.data}\n- task: {task}\n- patches: "
          f"{len(train)} train (west), {len(test)} test (east)\n- seeds (fine-tune): "
          f"{args.seeds}\n\n{table}")
    path = write_results(args.out, {"task": TASK, "target_task": task, "records": records,
                                    **info}, md)
    if path:
        print(f"report: {path}")
    return 0
