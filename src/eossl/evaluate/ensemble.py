"""The colorization paper's downstream ensemble: an RGB classifier and a spectral classifier
whose logits are averaged.

The spectral member starts from an encoder that sees none of the visible bands (a
colorization encoder); the RGB member sees only the visible bands and starts from ImageNet
weights when the user has a local timm weights file, from random weights otherwise. Both are
fine-tuned on the same labelled patches; the claim under test is that their average beats both
members, because they look at different inputs. The reference row puts the spectral member's
random twin in the same ensemble.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..bands import find_sensor
from ..checkpoint import load_timm_weights
from ..errors import ConfigError, DataError
from ..models.encoder import Encoder
from ..normalization import BandStats
from .base import Context, Evaluation, figure_record, register_evaluation
from .finetune import PatchNet, epochs_to_steps, fit, predict
from .metrics import classification_metrics
from .probe import CLASS_METRICS
from .saliency import input_gradient_saliency, saliency_figure

MEMBERS = ("rgb", "spectral", "ensemble")


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
        return enc, f"ImageNet weights from {weights}"
    return enc, "random init (no ImageNet weights file given)"


@register_evaluation("ensemble", position=80)
class Ensemble(Evaluation):
    title = "RGB + spectral ensemble"
    comparisons = (("ensemble", "rgb"), ("ensemble", "spectral"))
    settings = dict(epochs=6, lr=1e-3, batch_size=32, patch_size=16, saliency_patches=4,
                    saliency_size=64)
    quick = {"epochs": 2}
    description = ("Two classifiers fine-tuned on the training patches of {patch_size} px "
                   "(about {epochs} epochs of batch {batch_size}, AdamW lr {lr}, the encoder "
                   "of a pretrained member at 0.1 x lr): 'spectral' starts from the row's "
                   "encoder (which sees no visible band), 'rgb' sees the red, green and blue "
                   "bands and starts from {rgb_init}; 'ensemble' averages their logits. The "
                   "claim under test: the ensemble beats both members, in accuracy and in "
                   "balanced accuracy. Saliency (gradient x input) of both members on "
                   "{saliency_patches} test windows of {saliency_size} px (at the "
                   "{patch_size} px of the scores a ResNet's last map is 1 x 1, and every "
                   "map would show where its strided convolutions sample, not what the "
                   "member looks at).")

    def protocol(self) -> str:
        return self.description.format(**self.params(), rgb_init=getattr(
            self, "_rgb_init", "random weights (no ImageNet weights file offline)"))

    def applies(self, encoder: Encoder) -> str | None:
        from ..bands import find_sensor as sensor_of

        bands = list(encoder.wanted_bands)
        sensor = sensor_of(bands)
        visible = [b for b in bands if sensor is not None and sensor.band(b).role in
                   ("red", "green", "blue", "pan")]
        if sensor is None or visible:
            return ("needs an encoder that sees none of the visible bands (a colorization "
                    "encoder): it is the spectral member beside the RGB one")
        return None

    def run(self, ctx: Context, encoders: Mapping, seed: int) -> list[dict]:
        from .classify import _accelerator

        out = []
        for fold in ctx.track(ctx.patch_folds(self.patch_size)):
            tr, te = fold.train, fold.test
            classes = list(tr.classes)
            rgb = rgb_bands_of(tr.bands)
            enc_rgb, self._rgb_init = rgb_encoder(ctx.source.stats(), rgb,
                                                  weights=ctx.options.get("rgb_weights"),
                                                  seed=seed)
            steps = epochs_to_steps(self.epochs, len(tr), self.batch_size)
            kw = dict(steps=steps, batch_size=self.batch_size, lr=self.lr, seed=seed,
                      accelerator=_accelerator(ctx))
            rgb_net = fit(PatchNet(enc_rgb.for_bands(tr.bands), len(classes)), tr,
                          "cross_entropy", backbone_lr_scale=0.1 if ctx.options.get(
                              "rgb_weights") else 1.0, **kw)
            y = np.asarray(te.labels)
            rgb_logits = torch.cat(predict(rgb_net, te)[0]).numpy()
            for name, enc in encoders.items():
                spectral = fit(PatchNet(self.fed(name, copy.deepcopy(enc), tr.bands),
                                        len(classes)), tr, "cross_entropy",
                               backbone_lr_scale=1.0 if enc.is_random_twin else 0.1, **kw)
                logits = {"rgb": rgb_logits,
                          "spectral": torch.cat(predict(spectral, te)[0]).numpy()}
                logits["ensemble"] = (logits["rgb"] + logits["spectral"]) / 2.0
                for member in MEMBERS:
                    m = classification_metrics(y, logits[member].argmax(1), classes)
                    out += self.rec(self.tables[0], name, seed, fold.index, member,
                                    MEMBERS.index(member), m, CLASS_METRICS, n_test=len(y),
                                    rgb_init=self._rgb_init)
                path = (ctx.figure_path(f"ensemble-saliency-{_slug(name)}.png")
                        if seed == ctx.options.get("first_seed", seed) and fold.index == 0
                        and self.saliency_patches > 0 else None)
                if path is not None:
                    windows = self._saliency_windows(ctx, fold.index) or te
                    saliency_picture({"rgb": rgb_net, "spectral": spectral}, windows, rgb,
                                     classes, path, self.saliency_patches, seed)
                    out.append(figure_record(
                        ctx, self.name, name, seed, path,
                        f"{name}: saliency of the RGB and the spectral member (seed {seed}, "
                        f"test windows of {getattr(windows, 'size', self.patch_size)} px)"))
        return out


    def _saliency_windows(self, ctx: Context, fold: int):
        """The test windows of ``saliency_size`` px of a fold (wholly inside its test area),
        or None where the test area holds none that large."""
        from ..errors import EosslError

        try:
            folds = ctx.patch_folds(self.saliency_size)
        except EosslError:
            return None
        test = folds[fold].test if fold < len(folds) else None
        return test if test is not None and len(test) > 0 else None


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")


def saliency_picture(members, test, rgb, classes, path, n, seed) -> Path:
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
