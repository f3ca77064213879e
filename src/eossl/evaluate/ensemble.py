"""The colorization paper's downstream ensemble: an RGB classifier and a spectral classifier
whose logits are averaged.

The spectral member starts from a colorization encoder (non-visible bands); the RGB member sees
only the visible bands and starts from ImageNet weights when the user has a local timm weights
file, from random weights otherwise. Both are fine-tuned on the same labelled patches; the
claim under test is that their average beats both, because they look at different inputs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..bands import find_sensor
from ..checkpoint import load_timm_weights
from ..errors import ConfigError, DataError
from ..models.encoder import Encoder
from ..normalization import BandStats
from .finetune import finetune, predict_logits
from .metrics import classification_metrics
from .saliency import input_gradient_saliency, saliency_figure

__all__ = ["EnsembleResult", "rgb_bands_of", "rgb_encoder", "run_ensemble", "summarize"]

MEMBERS = ("rgb", "spectral", "ensemble")


@dataclass
class EnsembleResult:
    records: list[dict]                       # one per (model, seed): accuracy, ...
    logits: dict[int, dict[str, np.ndarray]]  # seed -> {"rgb", "spectral"} test logits
    labels: np.ndarray                        # test labels
    rgb_init: str                             # how the RGB member was initialised
    saliency_path: Path | None = None
    class_names: list[str] = field(default_factory=list)


def rgb_bands_of(bands: Sequence[str]) -> list[str]:
    """The red, green, blue band names of a band list, through the registry's roles."""
    sensor = find_sensor(list(bands))
    if sensor is None:
        raise DataError(f"bands {', '.join(bands)} do not belong to one registered sensor")
    out = []
    for role in ("red", "green", "blue"):
        named = [b for b in bands if sensor.band(b).role == role]
        if not named:
            raise ConfigError(f"the RGB ensemble member needs a {role} band; the data have "
                              f"{', '.join(bands)}")
        out.append(named[0])
    return out


def rgb_encoder(stats: BandStats, rgb: Sequence[str], backbone: str = "resnet18",
                stem_stride: int = 2, weights: str | os.PathLike | None = None,
                seed: int = 0) -> tuple[Encoder, str]:
    """The RGB member's encoder and a sentence saying how it was initialised."""
    enc = Encoder.random(stats.subset(list(rgb)), backbone, stem_stride, seed=seed, name="rgb")
    if weights:
        load_timm_weights(enc.backbone, weights)
        init = f"ImageNet weights from {weights}"
    else:
        init = "random init (no --rgb-weights file given)"
    return enc, init


def summarize(records: Sequence[dict], metrics=("accuracy", "balanced_accuracy", "macro_f1")
              ) -> list[dict]:
    """Mean and std over seeds per model, in the order rgb, spectral, ensemble."""
    out = []
    for name in MEMBERS:
        rows = [r for r in records if r["model"] == name]
        if not rows:
            continue
        s = {"model": name, "seeds": len(rows)}
        for m in metrics:
            v = np.array([r[m] for r in rows])
            s[m], s[m + "_std"] = float(v.mean()), float(v.std())
        out.append(s)
    return out


def run_ensemble(train, test, spectral_encoder: torch.nn.Module, *,
                 stats: BandStats, seeds: Sequence[int] = (0,), epochs: int = 10,
                 lr: float = 1e-3, batch_size: int = 32, weight_decay: float = 1e-4,
                 balanced: bool = False, rgb_weights: str | os.PathLike | None = None,
                 saliency_path: str | os.PathLike | None = None, saliency_patches: int = 6,
                 accelerator: str = "cpu") -> EnsembleResult:
    """Fine-tune the RGB and spectral members per seed on ``train``; score them and their
    logit average on ``test`` (labelled patch datasets with ``.bands``, ``.labels``,
    ``.classes``, yielding raw full-band images).

    ``spectral_encoder`` is typically ``load_encoder(colorization checkpoint)``; its bands are
    picked from the data by name. ``stats`` covers at least the data's R, G, B (the RGB
    member's normalisation). The saliency picture uses the first seed's members.
    """
    if not seeds:
        raise ConfigError("give at least one seed")
    data_bands = list(train.bands)
    rgb = rgb_bands_of(data_bands)
    leak = sorted(set(rgb) & set(spectral_encoder.bands))
    if leak:
        raise ConfigError(f"the spectral member must not see the visible bands, but its encoder "
                          f"takes {', '.join(leak)}; give a colorization checkpoint")
    classes = list(train.classes)
    k = len(classes)
    spectral = spectral_encoder.for_bands(data_bands)
    records, logits = [], {}
    labels = None
    rgb_init = ""
    first_models = None
    backbone_name = getattr(getattr(spectral_encoder, "backbone", None), "name", "resnet18")
    stem = getattr(getattr(spectral_encoder, "backbone", None), "stem_stride", 2)
    for seed in seeds:
        enc_rgb, rgb_init = rgb_encoder(stats, rgb, backbone_name, stem, rgb_weights, seed)
        kw = dict(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
                  balanced=balanced, seed=seed, accelerator=accelerator)
        # A randomly initialised RGB member has nothing to keep: its whole network trains at lr.
        rgb_scale = 0.1 if rgb_weights else 1.0
        members = {"rgb": finetune(enc_rgb.for_bands(data_bands), train, k,
                                   backbone_lr_scale=rgb_scale, **kw),
                   "spectral": finetune(spectral, train, k, **kw)}
        out = {}
        for name, model in members.items():
            out[name], y = predict_logits(model, test)
            labels = y if labels is None else labels
        out["ensemble"] = (out["rgb"] + out["spectral"]) / 2.0
        logits[seed] = {"rgb": out["rgb"], "spectral": out["spectral"]}
        for name in MEMBERS:
            m = classification_metrics(labels, out[name].argmax(1), classes)
            records.append({"model": name, "seed": int(seed), "accuracy": m["accuracy"],
                            "balanced_accuracy": m["balanced_accuracy"],
                            "macro_f1": m["macro_f1"], "n_test": int(len(labels))})
        if first_models is None:
            first_models = members
    written = None
    if saliency_path is not None and saliency_patches > 0:
        written = _saliency_picture(first_models, test, rgb, classes, saliency_path,
                                    saliency_patches, seeds[0])
    return EnsembleResult(records, logits, labels, rgb_init, written, classes)


def _saliency_picture(members, test, rgb, classes, path, n, seed) -> Path:
    """Saliency of both members on the same test patches: one patch per class first (so the
    picture is not all farmland), then the rest in dataset order."""
    labels = np.asarray(test.labels)
    pick = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)][:n]
    pick += [i for i in range(len(labels)) if i not in pick][: n - len(pick)]
    raw = torch.stack([test[i]["image"] for i in pick]).float()
    maps, preds = {}, {}
    for name, model in members.items():
        maps[name], preds[name] = input_gradient_saliency(model, raw)
    idx = [list(test.bands).index(b) for b in rgb]
    q = np.quantile(raw[:, idx].numpy(), [0.02, 0.98], axis=(0, 2, 3))
    disp = ((raw[:, idx].numpy() - q[0][None, :, None, None])
            / np.maximum(q[1] - q[0], 1e-6)[None, :, None, None]).clip(0, 1)
    return saliency_figure(disp.transpose(0, 2, 3, 1), maps, preds, labels[pick], classes, path,
                           title=f"input-gradient saliency (gradient x input), seed {seed}: "
                                 "RGB member vs spectral member")
