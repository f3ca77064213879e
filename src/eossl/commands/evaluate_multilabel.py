"""``eossl evaluate multilabel``: BigEarthNet-style multi-label linear probe and fine-tuning
(micro/macro mAP, F1 and F2 at 0.5) on a BigEarthNet v2 LMDB folder (default: the real sample).
"""

from __future__ import annotations

from .evaluate_pixel_probe import add_common, load_encoders, parse_checkpoints, write_results

TASK = "multilabel"


def add_parser(tsub) -> None:
    p = tsub.add_parser(TASK, help="multi-label probe and fine-tune (mAP, F1, F2): BigEarthNet "
                        "or any multi-label chip table")
    add_common(p, data_default="bigearthnet")
    p.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs (default 20)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--no-finetune", action="store_true", help="linear probe only")


def run(args) -> int:
    from pathlib import Path

    from ..errors import ConfigError
    from ..evaluate.multilabel import compare_multilabel, multilabel_table
    from ._data_options import open_from_args

    # --root alone (the earlier form) names a BigEarthNet v2 LMDB folder
    data = args.data
    if args.root and data == "bigearthnet" and not str(data).startswith("torchgeo:"):
        data, args.root = args.root, None
    source = open_from_args(args, data=data)
    if getattr(source, "task", None) != "multilabel":
        raise ConfigError(f"--data {data}: not a multi-label data set (its task is "
                          f"{getattr(source, 'task', 'unlabelled')}); give BigEarthNet, a "
                          "chip table with several 0/1 label columns, or torchgeo:BigEarthNet")
    fold = source.folds()[0]
    train, test = fold.train, fold.test
    data_bands = list(source.bands)
    encoders = load_encoders(parse_checkpoints(args.checkpoint), not args.no_random_init)
    filled = {}
    for name, enc in list(encoders.items()):
        encoders[name] = enc.for_bands(data_bands)
        filled[name] = encoders[name].architecture().get("filled", [])
    records = compare_multilabel(train, test, encoders, class_names=list(source.classes),
                                 seeds=args.seeds, finetune=not args.no_finetune,
                                 epochs=args.epochs, lr=args.lr)
    table = multilabel_table(records)
    notes = [f"- {n}: encoder bands missing from the data, filled with the training mean: "
             f"{', '.join(m) or 'none'}" for n, m in filled.items()]
    where = data if not str(data).startswith(("/", ".")) else Path(data).name
    print(f"{where}: {len(train)} train / {len(test)} test patches ({source.split_note}), "
          f"bands {', '.join(data_bands)}")
    print("\n".join(notes))
    print(table)
    md = (f"# eossl evaluate multilabel\n\n- data: {data}\n- split: {source.split_note}\n"
          f"- train: {len(train)} patches, test: {len(test)} patches\n- seeds: {args.seeds}\n"
          + "\n".join(notes) + f"\n\n{table}")
    path = write_results(args.out, {"task": TASK, "records": records, "missing_bands": filled,
                                    "split": source.split_note}, md)
    if path:
        print(f"report: {path}")
    return 0
