"""``eossl export --checkpoint CKPT --format {timm,torchgeo,onnx,torchscript}``: the encoder in
a form another library loads as it is, checked in each of them on a real batch before it is kept
(eossl.export; docs/export.md)."""

from __future__ import annotations

COMMAND = "export"
POSITIONALS = ("checkpoint",)  # the old form was ``eossl export CHECKPOINT``


def add_parser(subparsers) -> None:
    from ..export import FORMATS
    from ._options import add_checkpoint, add_out, legacy_positionals

    p = subparsers.add_parser(COMMAND, help="export a pretrained encoder for timm, torchgeo, "
                              "terratorch, ONNX or TorchScript, checked in each library")
    add_checkpoint(p, required=False)  # required, but an old positional may give it
    legacy_positionals(p, POSITIONALS)
    p.add_argument("--format", default="timm", choices=list(FORMATS),
                   help="timm: a folder with config.json + model.safetensors, for "
                   "timm.create_model('local-dir:FOLDER', pretrained=True) and terratorch; "
                   "torchgeo: a checkpoint for ClassificationTask / SemanticSegmentationTask "
                   "(weights=FILE); onnx; torchscript")
    add_out(p, "output folder (timm) or file (default: beside the checkpoint: last-timm/, "
            "last-torchgeo.ckpt, last.onnx, last.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")


def run(args) -> int:
    from ..export import export
    from ._options import require, take_positionals

    take_positionals(args, COMMAND, POSITIONALS)
    require(args, COMMAND, *POSITIONALS)
    from ..models.external import weights_path

    args.checkpoint = str(weights_path(args.checkpoint))  # torchgeo:NAME -> its file

    print(f"exporting {args.checkpoint} as {args.format}; checking it in each library it "
          "claims ...", flush=True)
    res = export(args.checkpoint, args.format, args.out, overwrite=args.overwrite,
                 cache=args.cache, report=lambda line: print(f"  {line}", flush=True))
    for s in res.skipped:
        print(f"  not checked: {s}")
    meta = res.metadata
    print(f"checked on {res.batch}")
    if meta["nonstandard"] and args.format == "timm":
        print(f"non-standard architecture ({'; '.join(meta['nonstandard'])}): load it with "
              f"{' or '.join(x.split('  #')[0] for x in meta['load_with'])}")
    print(f"exported {args.format}: {res.path}")
    return 0
