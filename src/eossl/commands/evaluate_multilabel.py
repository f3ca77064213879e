"""``eossl evaluate multilabel``: BigEarthNet-style multi-label linear probe and fine-tuning
(micro/macro mAP, F1 and F2 at 0.5) on a BigEarthNet v2 LMDB folder (default: the real sample).
"""

from __future__ import annotations

from .evaluate_pixel_probe import add_common, load_encoders, parse_checkpoints, write_results

TASK = "multilabel"


def add_parser(tsub) -> None:
    p = tsub.add_parser(TASK, help="BigEarthNet v2 multi-label probe and fine-tune (mAP, F1, F2)")
    add_common(p, data_default=None)
    p.add_argument("--root", help="BigEarthNet v2 folder (BigEarthNet-V2-LMDB/ + "
                                  "metadata.parquet); default: the configilm sample")
    p.add_argument("--train-splits", default="train,validation",
                   help="splits to train on (default train,validation; the test split scores)")
    p.add_argument("--size", type=int, default=120, help="patch side in px (default 120)")
    p.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs (default 20)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--no-finetune", action="store_true", help="linear probe only")


def run(args) -> int:
    from torch.utils.data import ConcatDataset

    from ..data import samples
    from ..data.bigearthnet import BigEarthNetV2
    from ..errors import ConfigError
    from ..evaluate.multilabel import compare_multilabel, multilabel_table

    root = args.root or samples.bigearthnet_dir(args.cache)
    splits = [s.strip() for s in args.train_splits.split(",") if s.strip()]
    if not splits or "test" in splits:
        raise ConfigError(f"--train-splits {args.train_splits!r}: name train and/or validation; "
                          "the test split is the one scored")
    train_parts = [BigEarthNetV2(root, split=s, size=args.size) for s in splits]
    train = train_parts[0] if len(train_parts) == 1 else ConcatDataset(train_parts)
    test = BigEarthNetV2(root, split="test", size=args.size)
    data_bands = test.band_names
    encoders = load_encoders(parse_checkpoints(args.checkpoint), not args.no_random_init)
    filled = {}
    for name, enc in list(encoders.items()):
        encoders[name] = enc.for_bands(data_bands)
        filled[name] = encoders[name].architecture().get("filled", [])
    records = compare_multilabel(train, test, encoders, class_names=test.classes,
                                 seeds=args.seeds, finetune=not args.no_finetune,
                                 epochs=args.epochs, lr=args.lr)
    table = multilabel_table(records)
    notes = [f"- {n}: encoder bands missing from the data, filled with the training mean: "
             f"{', '.join(m) or 'none'}" for n, m in filled.items()]
    print(f"BigEarthNet v2 at {root}: {len(train)} train ({'+'.join(splits)}) / {len(test)} "
          f"test patches, bands {', '.join(data_bands)}")
    print("\n".join(notes))
    print(table)
    md = (f"# eossl evaluate multilabel\n\n- data: {root}\n- train: {'+'.join(splits)} "
          f"({len(train)} patches), test: {len(test)} patches\n- seeds: {args.seeds}\n"
          + "\n".join(notes) + f"\n\n{table}")
    path = write_results(args.out, {"task": TASK, "records": records, "missing_bands": filled},
                         md)
    if path:
        print(f"report: {path}")
    return 0
