"""The one place that reads model files: eossl checkpoints and external weight files.

Everything downstream of pretraining (evaluations, the benchmark, export, embed, a resumed
run's safety check) goes through here, so a checkpoint is read one way, always with
``weights_only=True`` (no pickled code runs), and every failure is one clear error naming the
file. What comes out is an :class:`~eossl.models.encoder.Encoder` (whatever the method), the
checkpoint's metadata, or, for the few tools that need a method's pretext heads (the
colorization picture), the whole method.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from .errors import ConfigError, DataError, load_failure
from .models.bandwise import BandwiseEncoder
from .models.encoder import Encoder

# The encoder kind a checkpoint's metadata names (``eossl["encoder"]["type"]``; plain when
# absent). A method whose backbone does not take all bands at once writes its kind there.
ENCODER_TYPES: dict[str, type[Encoder]] = {"plain": Encoder, "bandwise": BandwiseEncoder}

_READ_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError,
                OSError)


def read_checkpoint(path: str | os.PathLike, *, mmap: bool = False) -> dict:
    """An eossl pretraining checkpoint as a dict of tensors and plain data.

    ``mmap=True`` maps the file instead of reading it (a cheap look at the metadata of a large
    checkpoint). DataError naming the file when it is missing, corrupt or not eossl's.
    """
    from .models.external import is_external, read_external, weights_path

    path = weights_path(path)  # torchgeo:NAME -> its file in torch's hub cache
    if is_external(path):  # an export, or weights from elsewhere (docs/external-encoders.md)
        return read_external(path)
    if path.is_dir():
        raise DataError(f"checkpoint {path} is a folder; expected a checkpoint file "
                        "(runs/RUN/checkpoints/last.ckpt) or an export's timm folder")
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # junk fails in many ways (KeyError, IndexError, EOFError, ...)
        raise DataError(f"checkpoint {path} is corrupt or not a plain PyTorch checkpoint: "
                        f"{load_failure(e)}") from None
    if not isinstance(ckpt, dict) or "eossl" not in ckpt or "state_dict" not in ckpt:
        raise DataError(f"checkpoint {path} is not an eossl pretraining checkpoint (no 'eossl' "
                        "metadata); expected a file from 'eossl pretrain' (checkpoints/*.ckpt), or "
                        f"weights from elsewhere with a sidecar {path.name}.json "
                        "(docs/external-encoders.md)")
    return ckpt


def checkpoint_metadata(path: str | os.PathLike) -> dict:
    """The ``eossl`` metadata of a checkpoint (method, bands, statistics, backbone, ...)."""
    return dict(read_checkpoint(path, mmap=True)["eossl"])


def load_encoder(path: str | os.PathLike) -> Encoder:
    """The pretrained encoder of an eossl checkpoint, in eval mode on the CPU; its
    ``metadata`` is the checkpoint's eossl dict. No method class is needed."""
    ckpt = read_checkpoint(path)
    encoder = encoder_from_checkpoint(ckpt, where=f"checkpoint {path}")
    encoder.metadata["checkpoint"] = str(path)  # where it came from (pictures reload it)
    return encoder


def encoder_from_checkpoint(ckpt: dict, where: str = "checkpoint") -> Encoder:
    """The encoder of an already read checkpoint dict."""
    meta, state = ckpt["eossl"], ckpt["state_dict"]
    kind = (meta.get("encoder") or {}).get("type", "plain")
    if kind not in ENCODER_TYPES:
        raise DataError(f"{where}: unknown encoder type {kind!r} in its metadata; this eossl "
                        f"knows {', '.join(ENCODER_TYPES)}")
    try:
        encoder = ENCODER_TYPES[kind].from_state(meta, state)
    except (KeyError, RuntimeError, TypeError) as e:
        raise DataError(f"{where}: eossl metadata and weights do not match: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return encoder.eval()


def load_method(path: str | os.PathLike, method: str | None = None):
    """The whole pretext method of a checkpoint (encoder AND pretext heads, e.g. the
    colorization decoder), in eval mode. ``method`` names the one expected; DataError for a
    checkpoint of another."""
    from .methods import get_method

    ckpt = read_checkpoint(path)
    meta = ckpt["eossl"]
    if method is not None and meta.get("method") != method:
        raise DataError(f"checkpoint {path} is not a {method} checkpoint (method "
                        f"{meta.get('method', 'unknown')!r})")
    if "hyper_parameters" not in ckpt:
        raise DataError(f"checkpoint {path} holds no hyperparameters, so its method cannot be "
                        "rebuilt; expected a file from 'eossl pretrain'")
    model = get_method(meta["method"])(**ckpt["hyper_parameters"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise DataError(f"checkpoint {path}: weights do not fit method {meta['method']!r}: "
                        f"{str(e).splitlines()[0]}") from None
    return model.eval()


def draws_picture(meta: dict) -> bool:
    """Whether the method that wrote a checkpoint draws a picture of what it learned
    (``PretextMethod.picture``), read from its metadata."""
    from .methods import get_method
    from .methods.base import PretextMethod

    try:
        cls = get_method(meta.get("method", ""))
    except ConfigError:
        return False
    return cls.picture is not PretextMethod.picture


def read_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """An external weights file (timm/torchvision/torchgeo .pth/.pt/.bin, or .safetensors) as
    a state dict: a ``state_dict`` entry is unwrapped, DataParallel's ``module.`` dropped."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file {path}: no such file; expected a local timm weights "
                          "file (e.g. resnet18 ImageNet .pth or .safetensors)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and torch raise their own types; all mean unreadable
        raise ConfigError(f"weights file {path}: cannot read it as a weights file "
                          f"({load_failure(e)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"weights file {path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_timm_weights(backbone, path: str | os.PathLike, state: dict | None = None) -> None:
    """Load a local timm/torchvision weights file (``state``: its contents, already read)
    into an eossl Backbone of the same architecture, dropping the ImageNet classifier.
    ConfigError naming the file when its weights do not fit."""
    state = read_weights_file(path) if state is None else state
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "head.", "classifier."))}
    own = backbone.model.state_dict()
    bad = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if bad:
        raise ConfigError(f"weights file {path}: tensor {bad[0]} has shape "
                          f"{tuple(state[bad[0]].shape)}, the {backbone.name} backbone expects "
                          f"{tuple(own[bad[0]].shape)}; give weights of the same architecture")
    missing = [k for k in own if k not in state]
    if missing:
        raise ConfigError(f"weights file {path}: no weights for {len(missing)} tensors of "
                          f"{backbone.name} (first: {missing[0]}); is it another architecture?")
    extra = [k for k in state if k not in own]
    if extra:
        raise ConfigError(f"weights file {path}: {len(extra)} tensors the {backbone.name} "
                          f"backbone does not have (first: {extra[0]}); is it another "
                          "architecture?")
    backbone.model.load_state_dict({k: state[k] for k in own})
