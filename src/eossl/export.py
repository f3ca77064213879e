"""Export a pretrained backbone so it can be used without eossl: safetensors, ONNX, TorchScript.

An export is the backbone alone (a plain timm model without classifier, input: standardised
values, output: one pooled embedding per image) plus a JSON sidecar that says everything a user
elsewhere needs to feed it correctly: the band names in order with their centre wavelengths,
the normalisation statistics and formula, the patch size it was trained on, the method, the
eossl version, the timm model name and how to rebuild eossl's stem stride on a plain timm model.

The sidecar sits beside the weights as ``<file>.json`` (``model.onnx`` -> ``model.onnx.json``).
:func:`load_exported` reads both back and refuses input whose bands do not match by name.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .errors import BandError, ConfigError, DataError, OutputExistsError, load_failure
from .report import atomic_path

FORMATS = {"safetensors": ".safetensors", "onnx": ".onnx", "torchscript": ".pt"}
SIDECAR_VERSION = 1
ONNX_OPSET = 18


def sidecar_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def stem_recipe(stem_stride: int) -> list[str]:
    """Python lines that give a plain timm ResNet eossl's stem stride (4 = timm's own)."""
    if stem_stride == 4:
        return []
    lines = ["model.maxpool = torch.nn.Identity()"]
    if stem_stride == 1:
        lines.append("model.conv1.stride = (1, 1)")
    return lines


def _plain_encoder(path: Path):
    """The checkpoint's encoder, refused unless its backbone takes all bands at once."""
    from .checkpoint import load_encoder

    encoder = load_encoder(path)
    if encoder.architecture()["type"] != "plain":
        # Band-wise methods (rsbyol) run the backbone on views of single bands and combine the
        # outputs; that wrapper is eossl code, so a bare-backbone export would be misleading.
        raise ConfigError(f"checkpoint {path}: method {encoder.metadata.get('method')!r} "
                          "encodes bands one view at a time; export supports encoders whose "
                          "backbone takes all bands at once")
    return encoder


def build_sidecar(meta: dict, fmt: str, file: Path, checkpoint: Path, out_dim: int) -> dict:
    from .bands import describe_bands

    bands = list(meta["bands"])
    # the sensor pretraining recorded (Landsat 7 ETM+ vs 5 TM share band names)
    sensor, waves = describe_bands(bands, (meta.get("pretrain_data") or {}).get("sensor"))
    stats = meta["stats"]
    stride = int(meta["stem_stride"])
    return {
        "eossl_export": SIDECAR_VERSION,
        "format": fmt,
        "file": file.name,
        "eossl_version": __version__,
        "method": meta.get("method"),
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": _sha256(checkpoint),
        "timm_model": meta["backbone"],
        "timm_kwargs": dict(meta.get("backbone_kwargs") or {}),
        "in_chans": len(bands),
        "embedding_dim": int(out_dim),
        "stem_stride": stride,
        "timm_stem_stride": 4,
        "stem_recipe": stem_recipe(stride),
        "build": (f"model = timm.create_model({meta['backbone']!r}, in_chans={len(bands)}, "
                  "num_classes=0, global_pool='avg', **timm_kwargs); then run stem_recipe"),
        "sensor": sensor,
        "bands": bands,
        "wavelengths_nm": waves,
        "normalization": {
            "formula": "x = log1p(max(raw, 0)) if log else raw; x = (x - mean) / std",
            "log": list(stats["log"]), "mean": list(stats["mean"]), "std": list(stats["std"]),
            "q02_raw": list(stats["q02"]), "q98_raw": list(stats["q98"]),
        },
        "patch_size": int(meta.get("crop_size", 0)) or None,
        "input": "float32 (N, C, H, W), bands in the order above, normalised as above",
        "output": f"float32 (N, {int(out_dim)}): average-pooled embedding",
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_output(checkpoint: str | os.PathLike, fmt: str) -> Path:
    c = Path(checkpoint)
    return c.with_name(c.stem + FORMATS[fmt])


def export(checkpoint: str | os.PathLike, fmt: str = "safetensors",
           out: str | os.PathLike | None = None, *, overwrite: bool = False) -> Path:
    """Write the backbone of ``checkpoint`` as ``fmt`` to ``out`` (+ ``out.json`` sidecar).

    Refuses (OutputExistsError) to replace an existing file unless ``overwrite``; both files
    are written to temporary names and renamed, so a failure leaves no partial export.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    checkpoint = Path(checkpoint)
    out = Path(out) if out else default_output(checkpoint, fmt)
    side = sidecar_path(out)
    if not overwrite:
        for p in (out, side):
            if p.exists():
                raise OutputExistsError(f"{p} already exists; pass --overwrite to replace it, "
                                        "or choose another --out")
    if out.parent.exists() and not out.parent.is_dir():
        raise OutputExistsError(f"{out.parent} is a file, not a folder; choose another --out")
    if out.parent.exists() and not os.access(out.parent, os.W_OK):
        raise OutputExistsError(f"{out.parent}: cannot write there (permission denied)")
    encoder = _plain_encoder(checkpoint)
    meta = encoder.metadata
    model = encoder.backbone.model.eval()
    sidecar = build_sidecar(meta, fmt, out, checkpoint, encoder.out_dim)
    size = int(sidecar["patch_size"] or 32)
    example = torch.randn(2, len(meta["bands"]), size, size)
    try:
        with atomic_path(out, suffix=out.suffix) as tmp:
            if fmt == "safetensors":
                from safetensors.torch import save_file

                state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
                save_file(state, str(tmp), metadata={"eossl_sidecar": json.dumps(sidecar)})
            elif fmt == "onnx":
                _export_onnx(model, example, tmp)
            else:
                import warnings

                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore", FutureWarning)  # jit is deprecated, not gone
                    traced = torch.jit.trace(model, example)
                    torch.jit.save(traced, str(tmp))
            with atomic_path(side) as tmp_side:
                tmp_side.write_text(json.dumps(sidecar, indent=2))
    except OSError as e:
        raise DataError(f"{out}: write failed ({e.strerror or e}); nothing was written") from None
    return out


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    import warnings

    # dynamo=False: the TorchScript-based exporter writes one self-contained .onnx file with
    # dynamic batch and size axes in about a second; its deprecation warnings are not the
    # user's concern.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=["image"],
                          output_names=["embedding"], opset_version=ONNX_OPSET,
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        "embedding": {0: "batch"}},
                          dynamo=False)


# ------------------------------------------------------------------------------- loading
@dataclass
class ExportedModel:
    """An export read back: ``model(raw)`` takes RAW values in the band order given at load
    time, selects/reorders them into the export's order, normalises and runs the backbone."""

    path: Path
    metadata: dict
    runtime: object            # torch module, or an onnxruntime InferenceSession
    input_index: list[int] | None  # input channel for each export band (None: identity)

    @property
    def bands(self) -> list[str]:
        return list(self.metadata["bands"])

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        n = self.metadata["normalization"]
        shape = (1, len(n["mean"]), 1, 1)
        x = np.asarray(raw, dtype=np.float32)
        logm = np.asarray(n["log"], dtype=bool).reshape(shape)
        x = np.where(logm, np.log1p(np.clip(x, 0, None)), x)
        return ((x - np.asarray(n["mean"], np.float32).reshape(shape))
                / np.asarray(n["std"], np.float32).reshape(shape)).astype(np.float32)

    def __call__(self, raw) -> np.ndarray:
        x = raw.detach().cpu().numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4:
            raise DataError(f"{self.path}: expected input (N, C, H, W), got shape {x.shape}")
        if self.input_index is not None:
            x = x[:, self.input_index]
        if x.shape[1] != len(self.bands):
            raise BandError(f"{self.path}: input has {x.shape[1]} bands; the export expects "
                            f"{len(self.bands)} ({', '.join(self.bands)})")
        x = self.normalize(x)
        if self.metadata["format"] == "onnx":
            return self.runtime.run(None, {"image": x})[0]
        with torch.no_grad():
            return self.runtime(torch.from_numpy(x)).numpy()


def match_bands(export_bands: Sequence[str], input_bands: Sequence[str] | None,
                reorder: bool = False, where: str = "the export") -> list[int] | None:
    """Indices into the input channels that give the export's band order, or None when the
    input already is in that order. Without ``reorder`` the input must name the export's bands
    in the same order; with it, a re-ordering or a superset is mapped by name."""
    export_bands = list(export_bands)
    if input_bands is None:
        return None
    input_bands = [str(b) for b in input_bands]
    if len(set(input_bands)) != len(input_bands):
        raise BandError(f"input band list {', '.join(input_bands)} names a band twice")
    if input_bands == export_bands:
        return None
    missing = [b for b in export_bands if b not in input_bands]
    if missing:
        raise BandError(f"input bands ({', '.join(input_bands)}) lack {', '.join(missing)}, "
                        f"which {where} needs; it was trained on {', '.join(export_bands)}")
    if not reorder:
        raise BandError(f"input bands ({', '.join(input_bands)}) do not match {where}'s bands "
                        f"({', '.join(export_bands)}) in order; pass reorder=True to select and "
                        "reorder them by name")
    return [input_bands.index(b) for b in export_bands]


def load_exported(path: str | os.PathLike, bands: Sequence[str] | None = None,
                  reorder: bool = False) -> ExportedModel:
    """Read an export and its sidecar. ``bands``: names of the input's channels, in order;
    they must equal the export's band list, or (``reorder=True``) contain it in any order."""
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise DataError(f"export {path} does not exist")
    if not side.is_file():
        raise DataError(f"{path}: sidecar {side.name} not found; an eossl export is the model "
                        "file plus its .json sidecar (bands, normalisation)")
    try:
        meta = json.loads(side.read_text())
        fmt = meta["format"]
        export_bands = list(meta["bands"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{side}: not an eossl export sidecar ({type(e).__name__}: {e})") from None
    index = match_bands(export_bands, bands, reorder, where=str(path.name))
    try:
        if fmt == "onnx":
            import onnxruntime as ort

            runtime = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        elif fmt == "torchscript":
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                runtime = torch.jit.load(str(path), map_location="cpu").eval()
        elif fmt == "safetensors":
            runtime = timm_model_from_export(path, meta)
        else:
            raise DataError(f"{side}: unknown format {fmt!r}")
    except DataError:
        raise
    except Exception as e:  # onnxruntime, safetensors and torch.jit each raise their own types
        raise DataError(f"{path}: cannot load the {fmt} export ({load_failure(e)}); the file "
                        "is truncated, corrupt or not what its sidecar says") from None
    return ExportedModel(path, meta, runtime, index)


def timm_model_from_export(path: str | os.PathLike, meta: dict | None = None) -> nn.Module:
    """A plain timm model with the exported weights, built as the sidecar describes (what a
    user without eossl does: ``timm.create_model`` + the stem recipe + ``load_state_dict``)."""
    import timm
    from safetensors.torch import load_file

    path = Path(path)
    meta = meta or json.loads(sidecar_path(path).read_text())
    model = timm.create_model(meta["timm_model"], pretrained=False, in_chans=meta["in_chans"],
                              num_classes=0, global_pool="avg", **meta.get("timm_kwargs", {}))
    if meta["stem_stride"] != 4:
        model.maxpool = nn.Identity()
        if meta["stem_stride"] == 1:
            model.conv1.stride = (1, 1)
    model.load_state_dict(load_file(str(path)))
    return model.eval()
