"""``eossl export CHECKPOINT --format {safetensors,onnx,torchscript}``: the backbone alone plus a
JSON sidecar (bands, wavelengths, normalisation, patch size, method, version); eossl.export."""

from __future__ import annotations

COMMAND = "export"


def add_parser(subparsers) -> None:
    from ..export import FORMATS

    p = subparsers.add_parser(COMMAND, help="export a pretrained backbone (safetensors, ONNX, "
                              "TorchScript) with a JSON sidecar of bands and normalisation")
    p.add_argument("checkpoint", help="eossl pretraining checkpoint (runs/X/checkpoints/last.ckpt)")
    p.add_argument("--format", default="safetensors", choices=list(FORMATS))
    p.add_argument("--out", help="output file (default: beside the checkpoint, e.g. "
                   "last.safetensors); the sidecar is OUT.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")


def run(args) -> int:
    from ..export import export, sidecar_path

    out = export(args.checkpoint, args.format, args.out, overwrite=args.overwrite)
    print(f"exported {args.format}: {out}\nsidecar: {sidecar_path(out)}")
    return 0
