"""``eossl evaluate segment``: land-cover segmentation with scarce labels (mIoU on the east
block), rows random init / dense U-Net / other encoders, columns label fractions."""

from __future__ import annotations

TASK = "segment"


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def add_parser(tsub) -> None:
    from .evaluate_pixel_probe import add_common

    p = tsub.add_parser(TASK, help="U-Net land-cover segmentation, label fractions (mIoU)")
    add_common(p)
    p.add_argument("--fractions", type=_floats, default=[0.01, 0.1, 1.0],
                   help="shares of the training block's labelled pixels, as whole tiles "
                        "(default 0.01,0.1,1)")
    p.add_argument("--tile-size", type=int, default=32, help="tile side in px (default 32)")
    p.add_argument("--steps", type=int, default=100, help="fine-tuning steps per fit")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--backbone-lr-factor", type=float, default=0.1,
                   help="encoder lr = lr x this for pretrained encoders (default 0.1)")
    p.add_argument("--linear-probe", action="store_true",
                   help="also a frozen-encoder 1x1-conv probe per model")
    p.add_argument("--probe-only", action="store_true", help="only the frozen linear probe")
    p.add_argument("--probe-steps", type=int, default=300)
    p.add_argument("--train-block", choices=("west", "east"), default="west",
                   help="block to train on; the other is scored (east = cross-region check "
                        "for a model pretrained with data.region: west)")
    p.add_argument("--device", default="cpu")


def run(args) -> int:
    from ..errors import ConfigError
    from ._data_options import open_from_args
    from ..evaluate.segment import (evaluate_segmentation, per_class_iou_table,
                                    specs_from_checkpoints)
    from ..report import markdown_table
    from .evaluate_pixel_probe import parse_checkpoints, write_results

    if args.out:
        from pathlib import Path

        from ..errors import OutputExistsError
        if (Path(args.out) / "results.json").exists():  # refuse before minutes of training
            raise OutputExistsError(f"{args.out} already holds results.json; choose another "
                                    "--out")
    if args.steps < 1 or args.batch_size < 1:
        raise ConfigError(f"--steps and --batch-size must be >= 1, got {args.steps}, "
                          f"{args.batch_size}")
    source = open_from_args(args)
    specs = specs_from_checkpoints(parse_checkpoints(args.checkpoint), not args.no_random_init)
    records = evaluate_segmentation(
        source, specs, fractions=args.fractions, seeds=args.seeds, tile_size=args.tile_size,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        backbone_lr_factor=args.backbone_lr_factor,
        linear_probe=args.linear_probe or args.probe_only, probe_steps=args.probe_steps,
        finetune_u_net=not args.probe_only, train_side=args.train_block, device=args.device,
        log=print, classes=source.classes)
    parts = [f"# eossl evaluate segment\n\n- data: {args.data}, train block: {args.train_block}"
             f", tiles {args.tile_size} px\n- seeds: {args.seeds}; fine-tuning {args.steps} "
             f"steps x batch {args.batch_size}, lr {args.lr} (pretrained encoders x "
             f"{args.backbone_lr_factor})\n- models: "
             + ", ".join(s.name for s in specs) + "\n"]
    for kind, title in (("finetune", "Fine-tuned U-Net"),
                        ("linear", "Frozen encoder, 1x1-conv linear probe")):
        if any(r["kind"] == kind for r in records):
            t = markdown_table(records, metrics=("miou",), kind=kind)
            pc = per_class_iou_table(records, fraction=max(args.fractions), kind=kind)
            print(f"{title}: mIoU (mean ± std over seeds)\n{t}")
            parts += [f"## {title}: mIoU\n", t, f"Per-class IoU at {max(args.fractions):.0%}:\n",
                      pc]
    path = write_results(args.out, {"task": TASK, "records": records}, "\n".join(parts))
    if path:
        print(f"report: {path}")
    return 0
