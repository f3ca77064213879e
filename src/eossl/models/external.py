"""External encoders: weights pretrained elsewhere (torchgeo, timm) read as eossl encoders.

A public foundation model (e.g. torchgeo's SSL4EO-S12 MoCo ResNet-18) is only a fair row
beside eossl's methods when it is fed exactly as it was pretrained: its bands, picked by name
from the data, and its own normalisation. This module turns a local weight file plus that
description into the same checkpoint dict an eossl pretraining writes (metadata + state dict),
so :func:`eossl.checkpoint.read_checkpoint` hands it to every command that takes
``--checkpoint`` (probe, embed, evaluations, ...) with nothing else to learn. The description
comes from (docs/external-encoders.md):

1. a sidecar ``WEIGHTS.json`` beside the file (``architecture``, ``bands``, ``normalization``;
   or ``torchgeo``: the name of a torchgeo weights entry, whose metadata supplies them), or
2. torchgeo's own file name: a file downloaded from a torchgeo weights URL keeps its name
   (``resnet18_sentinel2_all_moco-59bfdff9.pth``), which names the entry.

Nothing is downloaded: the weights are the local file; torchgeo is asked only for metadata.
"""

from __future__ import annotations

import json
import os
import re
from functools import cache
from pathlib import Path

from ..errors import BandError, ConfigError

# the keys a sidecar may hold; anything else is a typo we refuse rather than ignore
SIDECAR_KEYS = {"architecture", "bands", "sensor", "normalization", "stem_stride", "name",
                "torchgeo", "dataset", "timm_kwargs"}
# torchgeo's weight files are named NAME-HASH8.pth (the hash torchvision checks)
_TORCHGEO_FILE = re.compile(r"^[\w.]+-[0-9a-f]{8}\.(pth|pt|safetensors)$")
# timm's native stem (the max-pool kept): what weights from elsewhere were trained with
NATIVE_STEM_STRIDE = 4


def sidecar_path(path: str | os.PathLike) -> Path:
    """``WEIGHTS.json`` beside ``WEIGHTS``: the convention of eossl's own exports."""
    from ..export import sidecar_path as export_sidecar

    return export_sidecar(path)


def _read_sidecar(path: Path) -> dict | None:
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        spec = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{side}: not valid JSON ({e}); expected the description of "
                          f"{path.name} (docs/external-encoders.md)") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{side}: expected a JSON object (architecture, bands, "
                          "normalization; docs/external-encoders.md)")
    return spec


def is_external(path: str | os.PathLike) -> bool:
    """Whether ``path`` is something other than an eossl pretraining checkpoint that holds an
    encoder: weights from elsewhere (described by a sidecar or by torchgeo's file name), or
    an eossl export (a timm folder, a torchgeo file with its sidecar)."""
    path = Path(path)
    if path.is_dir():
        return (path / "config.json").is_file()  # a timm folder
    if not path.is_file():
        return False
    if sidecar_path(path).is_file():
        return True
    return path.suffix == ".safetensors" or torchgeo_weights_for_file(path.name) is not None


def _is_eossl_export(path: Path) -> bool:
    if path.is_dir():
        try:
            return "eossl" in json.loads((path / "config.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            return False
    return "eossl_export" in (_read_sidecar(path) or {})


# --------------------------------------------------------------------------- torchgeo


@cache
def _torchgeo_weights() -> dict:
    """{full name (ResNet18_Weights.SENTINEL2_ALL_MOCO): weights entry} of every torchgeo
    weights enum. Read from torchgeo's registry (its own list), never downloaded."""
    from torchgeo.models import api

    out = {}
    for enum in {id(e): e for e in api._model_weights.values()}.values():
        for w in enum:
            out[f"{enum.__name__}.{w.name}"] = w
    return out


def torchgeo_weights_for_file(filename: str):
    """(full name, entry) of the torchgeo weights whose URL ends in ``filename``, else None."""
    if not _TORCHGEO_FILE.match(filename):  # spares every other file torchgeo's import
        return None
    try:
        entries = _torchgeo_weights()
    except ImportError:
        return None
    for name, w in entries.items():
        if w.url.rsplit("/", 1)[-1] == filename:
            return name, w
    return None


TORCHGEO_PREFIX = "torchgeo:"


def weights_path(text: str | os.PathLike) -> Path:
    """``--checkpoint`` as a path: ``torchgeo:ResNet18_Weights.SENTINEL2_ALL_MOCO`` is that
    entry's file in torch's hub cache, where torchgeo itself keeps what it downloads (eossl
    never downloads weights: a missing file is an error saying where to put it); anything
    else is the path it names."""
    text = str(text)
    if not text.startswith(TORCHGEO_PREFIX):
        return Path(text)
    import torch

    name = text[len(TORCHGEO_PREFIX):]
    entry = _torchgeo_entry(name, f"--checkpoint {text}")
    path = Path(torch.hub.get_dir()) / "checkpoints" / entry.url.rsplit("/", 1)[-1]
    if not path.is_file():
        raise ConfigError(f"--checkpoint {text}: {path} not found; eossl never downloads "
                          f"weights: download {entry.url} to that path (or anywhere, and give "
                          "the file)")
    return path


def _torchgeo_entry(name: str, where: str):
    entries = _torchgeo_weights()
    if name not in entries:
        close = [n for n in entries if name.split(".")[-1].lower() in n.lower()][:5]
        raise ConfigError(f"{where}: torchgeo has no weights {name!r}; expected a full name "
                          f"such as ResNet18_Weights.SENTINEL2_ALL_MOCO"
                          + (f" (close: {', '.join(close)})" if close else ""))
    return entries[name]


def _torchgeo_spec(name: str, where: str) -> dict:
    """A sidecar-like description from a torchgeo weights entry: architecture, bands,
    normalisation (its transforms' Normalize), dataset."""
    import torch

    w = _torchgeo_entry(name, where)
    meta = w.meta
    if "bands" not in meta or "model" not in meta:
        raise ConfigError(f"{where}: torchgeo weights {name} name no bands or no model in "
                          "their metadata; describe them in a sidecar (architecture, bands, "
                          "normalization)")
    norm = [m for m in _modules(w.transforms) if type(m).__name__ == "Normalize"]
    if len(norm) != 1:
        raise ConfigError(f"{where}: cannot read the normalisation of torchgeo weights {name} "
                          "from their transforms; give it in a sidecar (normalization: mean, "
                          "std)")
    flags = getattr(norm[0], "flags", {})  # kornia keeps mean/std in flags
    mean = getattr(norm[0], "mean", flags.get("mean"))
    std = getattr(norm[0], "std", flags.get("std"))
    as_list = lambda v: torch.as_tensor(v, dtype=torch.float64).flatten().tolist()  # noqa: E731
    sensor = next((s for key, s in _TORCHGEO_SENSORS if key in name.upper()), None)
    return {"architecture": meta["model"], "bands": list(meta["bands"]), "sensor": sensor,
            "normalization": {"mean": as_list(mean), "std": as_list(std)},
            "dataset": meta.get("dataset"), "name": f"{name} (torchgeo)",
            "method": meta.get("ssl_method")}


# the sensor a torchgeo weights name says its band names belong to ('B4' alone is Sentinel-2
# red, Landsat TM near infrared or Landsat 8 red)
_TORCHGEO_SENSORS = (("SENTINEL2", "sentinel2-l1c"), ("SENTINEL1", "sentinel1"),
                     ("LANDSAT_TM", "landsat5"), ("LANDSAT_ETM", "landsat7"),
                     ("LANDSAT_OLI", "landsat8"))


def _modules(t) -> list:
    import torch

    if isinstance(t, torch.nn.Module):
        return list(t.modules())
    return []


# --------------------------------------------------------------------------- reading


def describe(path: str | os.PathLike) -> dict:
    """The checked description of an external weight file: architecture, bands (eossl's
    names), per-band mean and std (raw -> (raw - mean) / std), stem stride, name."""
    from ..bands import resolve_band_names

    path = Path(path)
    side = sidecar_path(path)
    spec = _read_sidecar(path)
    where = str(side) if spec is not None else str(path)
    if spec is None:
        found = torchgeo_weights_for_file(path.name)
        if found is None:
            raise ConfigError(f"{path}: weights from elsewhere need a sidecar {side.name} "
                              "naming their architecture, bands and normalisation "
                              "(docs/external-encoders.md)")
        spec = {"torchgeo": found[0]}
    unknown = sorted(set(spec) - SIDECAR_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; expected "
                          f"{', '.join(sorted(SIDECAR_KEYS))}")
    if spec.get("torchgeo"):
        spec = {**_torchgeo_spec(str(spec["torchgeo"]), where),
                **{k: v for k, v in spec.items() if k != "torchgeo"}}
    for key in ("architecture", "bands", "normalization"):
        if key not in spec:
            raise ConfigError(f"{where}: no {key!r}; a sidecar names the architecture (a timm "
                              "model), the bands in input order and the normalization "
                              "(mean, std), or a torchgeo weights entry "
                              "(docs/external-encoders.md)")
    bands = spec["bands"]
    if isinstance(bands, str):
        bands = [b.strip() for b in bands.split(",") if b.strip()]
    if not isinstance(bands, list) or not bands:
        raise ConfigError(f"{where}: 'bands' must be a list of band names in input order")
    given = [str(b) for b in bands]
    try:
        bands = resolve_band_names(given, spec.get("sensor"), where=where).names
    except BandError as e:  # a KeyError: its message is args[0]
        raise ConfigError(e.args[0]) from None
    twice = sorted({b for b in bands if bands.count(b) > 1})
    if twice:
        raise ConfigError(f"{where}: its bands {', '.join(given)} name "
                          f"{', '.join(twice)} twice; name one band per input channel")
    n = len(bands)
    norm = spec["normalization"]
    if not isinstance(norm, dict) or "mean" not in norm or "std" not in norm:
        raise ConfigError(f"{where}: 'normalization' must hold 'mean' and 'std' (one number "
                          f"or one per band): raw values x are fed as (x - mean) / std")
    mean, std = (_per_band(norm[k], n, f"{where}: normalization.{k}") for k in ("mean", "std"))
    if any(s <= 0 for s in std):
        raise ConfigError(f"{where}: normalization.std must be positive, got {std}")
    stem = spec.get("stem_stride", NATIVE_STEM_STRIDE)
    if not isinstance(stem, int) or isinstance(stem, bool):
        raise ConfigError(f"{where}: stem_stride must be an integer (4: timm's own stem), got "
                          f"{stem!r}")
    return {"architecture": str(spec["architecture"]), "bands": bands, "mean": mean,
            "std": std, "stem_stride": int(stem), "timm_kwargs": dict(spec.get("timm_kwargs")
                                                                       or {}),
            "name": str(spec.get("name") or path.name), "dataset": spec.get("dataset"),
            "method": spec.get("method"), "sidecar": str(side) if side.is_file() else None}


def _per_band(value, n: int, what: str) -> list[float]:
    vals = value if isinstance(value, list) else [value]
    try:
        vals = [float(v) for v in vals]
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: expected numbers, got {value!r}") from None
    if len(vals) == 1:
        vals = vals * n
    if len(vals) != n:
        raise ConfigError(f"{what}: {len(vals)} values for {n} bands")
    return vals


def read_external(path: str | os.PathLike) -> dict:
    """An external weight file as an eossl checkpoint dict (``eossl`` metadata and a
    ``state_dict`` of backbone and normaliser), which :mod:`eossl.checkpoint` rebuilds like
    any pretraining's. ConfigError naming the file when the weights do not fit the
    description (channel count, architecture)."""
    from ..checkpoint import load_timm_weights, read_weights_file
    from ..normalization import BandStats, Normalizer
    from .backbones import build_backbone

    path = Path(path)
    if _is_eossl_export(path):  # eossl's own timm or torchgeo export
        from ..export import export_checkpoint

        return export_checkpoint(path)
    if path.is_dir():
        raise ConfigError(f"{path}: a timm folder that is not an eossl export names no bands; "
                          "give its weight file with a sidecar (docs/external-encoders.md)")
    d = describe(path)
    state = read_weights_file(path)
    backbone = build_backbone(d["architecture"], in_chans=len(d["bands"]),
                              stem_stride=d["stem_stride"], **d["timm_kwargs"])
    first = (getattr(backbone.model, "pretrained_cfg", None) or {}).get("first_conv") or "conv1"
    first = first if isinstance(first, str) else first[0]
    w = state.get(f"{first}.weight")
    if w is not None and w.ndim == 4 and w.shape[1] != len(d["bands"]):
        raise ConfigError(f"{path}: its first convolution ({first}) takes {w.shape[1]} "
                          f"channels, but its description names {len(d['bands'])} bands "
                          f"({', '.join(d['bands'])}); name one band per input channel")
    load_timm_weights(backbone, path, state=state)
    n = len(d["bands"])
    stats = BandStats(d["bands"], d["mean"], d["std"],
                      # raw display range: the values that normalise to -2 and +2
                      [m - 2 * s for m, s in zip(d["mean"], d["std"])],
                      [m + 2 * s for m, s in zip(d["mean"], d["std"])], log=[False] * n)
    meta = {**backbone.spec(), "bands": d["bands"], "stats": stats.to_dict(),
            "method": d["name"], "external": {k: d[k] for k in ("name", "sidecar", "method",
                                                                 "dataset")},
            "weights_file": str(path),
            # pretrained on other data: reports say so (never "it may have seen the test")
            "pretrain_data": {"data": d["dataset"] or f"external ({path.name})",
                              "split": None, "excluded_test_areas": False}}
    sd = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    sd.update({f"normalizer.{k}": v for k, v in Normalizer(stats).state_dict().items()})
    return {"eossl": meta, "state_dict": sd}
