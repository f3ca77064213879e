"""``eossl evaluate ensemble``: the colorization paper's RGB + spectral ensemble.

Fine-tunes an RGB classifier (visible bands; ImageNet weights from a local file, or random) and
a spectral classifier initialised from a colorization checkpoint on the labelled patches'
spatial train block, then scores both and their logit average on the test block, per seed,
and draws the two members' saliency maps side by side.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..cli import seed_list

TASK = "ensemble"


def add_parser(tsub) -> None:
    p = tsub.add_parser(TASK, help="RGB + spectral (colorization) classifier ensemble, with "
                                   "saliency maps")
    p.add_argument("--checkpoint", required=True,
                   help="colorization checkpoint: initialises the spectral member")
    from ._data_options import add_data_options

    add_data_options(p, default="brandenburg")
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--seeds", type=seed_list, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs (default 10)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--balanced", action="store_true",
                   help="weight the cross-entropy by inverse class frequency")
    p.add_argument("--rgb-weights", help="local timm weights file (.pth/.safetensors) of the "
                   "same backbone, e.g. ImageNet resnet18, for the RGB member; default: random")
    p.add_argument("--saliency-patches", type=int, default=6)
    p.add_argument("--accelerator", default="cpu", help="cpu, gpu, auto (default cpu)")
    p.add_argument("--out", help="write results.json, report.md and saliency.png here")


def run(args) -> int:
    from ..errors import OutputExistsError
    from ._data_options import open_from_args
    from ..evaluate.ensemble import rgb_bands_of, run_ensemble, summarize
    from ..checkpoint import load_encoder
    from ..report import atomic_write_text

    out = Path(args.out) if args.out else None
    if out is not None and (out / "results.json").exists():
        raise OutputExistsError(f"{out} already holds results.json; choose another --out")
    encoder = load_encoder(args.checkpoint)
    source = open_from_args(args)
    train = source.patches("train", args.patch_size)
    test = source.patches("test", args.patch_size)
    stats = source.stats()
    res = run_ensemble(train, test, encoder, stats=stats, seeds=args.seeds, epochs=args.epochs,
                       lr=args.lr, batch_size=args.batch_size, balanced=args.balanced,
                       rgb_weights=args.rgb_weights,
                       saliency_path=(out / "saliency.png") if out else None,
                       saliency_patches=args.saliency_patches, accelerator=args.accelerator)
    lines = [f"RGB member ({', '.join(rgb_bands_of(train.bands))}): {res.rgb_init}",
             f"spectral member: {args.checkpoint} ({', '.join(encoder.bands)})",
             f"patches: {len(train)} train (west block), {len(test)} test (east block); "
             f"{args.epochs} epochs per member; seeds {args.seeds}", ""]
    lines += ["| model | seed | accuracy | balanced acc. | macro F1 |", "|---|---|---|---|---|"]
    for r in res.records:
        lines.append(f"| {r['model']} | {r['seed']} | {r['accuracy']:.3f} | "
                     f"{r['balanced_accuracy']:.3f} | {r['macro_f1']:.3f} |")
    lines += ["", "| model | accuracy | balanced acc. | macro F1 |", "|---|---|---|---|"]
    summary = summarize(res.records)
    for s in summary:
        lines.append(f"| {s['model']} | {s['accuracy']:.3f} ± {s['accuracy_std']:.3f} | "
                     f"{s['balanced_accuracy']:.3f} ± {s['balanced_accuracy_std']:.3f} | "
                     f"{s['macro_f1']:.3f} ± {s['macro_f1_std']:.3f} |")
    text = "\n".join(lines)
    print(text)
    if out is not None:
        payload = {"task": TASK, "command": "eossl " + " ".join(sys.argv[1:]),
                   "checkpoint": str(args.checkpoint), "rgb_init": res.rgb_init,
                   "records": res.records, "summary": summary,
                   "saliency": str(res.saliency_path) if res.saliency_path else None}
        atomic_write_text(out / "results.json", json.dumps(payload, indent=2))
        atomic_write_text(out / "report.md", f"# eossl evaluate ensemble\n\n{text}\n")
        print(f"report: {out / 'report.md'}")
        if res.saliency_path:
            print(f"saliency: {res.saliency_path}")
    return 0
