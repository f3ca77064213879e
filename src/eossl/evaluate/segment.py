"""Land-cover segmentation downstream: fine-tune a U-Net on scarce labels, or probe frozen
features with 1x1 convolutions, and score mIoU on the test tiles of every fold.

The U-Net sits on the encoder (``Encoder.unet``): a ``dense`` checkpoint brings its pretrained
decoder, any other encoder gets a fresh one, and the random twin a fresh one too. Label
fractions are whole training tiles (DenseLabelTiles.fraction_indices), seeded.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset
from torchmetrics.classification import MulticlassConfusionMatrix

from ..data.datasets import IGNORE_INDEX
from .base import Context, Evaluation, register_evaluation
from .features import FeatureScaler
from .finetune import SegmentationNet, fit
from .metrics import iou_scores


class LinearSegProbe(nn.Module):
    """A frozen encoder and 1x1 convolutions on each of its feature scales, upsampled and
    summed: raw (N, C, H, W) -> logits (N, K, H, W).

    Equal to one 1x1 conv on the hypercolumn (all scales upsampled and concatenated), since
    both the convolution and bilinear upsampling are linear, without materialising the
    full-resolution hypercolumn. Each channel is standardised with a FeatureScaler fitted on
    training pixels (a channel active on too few of them is dropped)."""

    def __init__(self, encoder: nn.Module, num_classes: int, scalers: Sequence[FeatureScaler]
                 ) -> None:
        super().__init__()
        self.encoder = copy.deepcopy(encoder).eval()  # frozen here, not for the caller
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.convs = nn.ModuleList()
        for i, s in enumerate(scalers):
            keep = torch.as_tensor(s.keep_)
            mean = torch.zeros(len(keep))
            scale = torch.ones(len(keep))
            mean[keep] = torch.as_tensor(s.mean_, dtype=torch.float32)
            scale[keep] = torch.as_tensor(s.scale_, dtype=torch.float32)
            self.register_buffer(f"keep{i}", keep.float().view(1, -1, 1, 1), persistent=False)
            self.register_buffer(f"mean{i}", mean.view(1, -1, 1, 1), persistent=False)
            self.register_buffer(f"scale{i}", scale.view(1, -1, 1, 1), persistent=False)
            self.convs.append(nn.Conv2d(len(keep), num_classes, 1, bias=(i == 0)))
        self.clip = scalers[0].clip if scalers else 10.0

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            feats = self.encoder.pyramid(x)
        out = 0
        for i, (conv, f) in enumerate(zip(self.convs, feats)):
            z = ((f - getattr(self, f"mean{i}")) / getattr(self, f"scale{i}")).clamp(
                -self.clip, self.clip) * getattr(self, f"keep{i}")
            out = out + F.interpolate(conv(z), size=x.shape[-2:], mode="bilinear",
                                      align_corners=False)
        return out


@torch.no_grad()
def channel_scalers(encoder: nn.Module, data, indices, max_pixels: int = 50_000,
                    seed: int = 0) -> list[FeatureScaler]:
    """One FeatureScaler per pyramid level, fitted on (at most ``max_pixels``) pixel vectors
    of the training tiles."""
    encoder.eval()
    levels: list[list[torch.Tensor]] | None = None
    for s in range(0, len(indices), 32):
        x = torch.stack([data[int(i)]["image"] for i in indices[s:s + 32]]).float()
        fs = [f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for f in encoder.pyramid(x)]
        levels = [[f] for f in fs] if levels is None else [a + [f] for a, f in zip(levels, fs)]
    rng = np.random.default_rng(seed)
    out = []
    for parts in levels:
        v = torch.cat(parts).numpy()
        if len(v) > max_pixels:
            v = v[rng.choice(len(v), max_pixels, replace=False)]
        out.append(FeatureScaler().fit(v))
    return out


@torch.no_grad()
def confusion(net: nn.Module, data, num_classes: int, batch_size: int = 32,
              device: str | torch.device = "cpu") -> torch.Tensor:
    """Confusion matrix (K, K) of argmax predictions on the tiles' labelled pixels."""
    net.eval().to(device)
    cm = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX).to(device)
    for s in range(0, len(data), batch_size):
        items = [data[i] for i in range(s, min(s + batch_size, len(data)))]
        x = torch.stack([it["image"] for it in items]).float().to(device)
        y = torch.stack([it["mask"] for it in items]).to(device)
        cm.update(net(x).argmax(1), y)
    return cm.compute().cpu()


@register_evaluation("segment", position=40)
class Segmentation(Evaluation):
    """U-Net fine-tuning and a frozen-encoder linear probe at label fractions."""

    title = "Land-cover segmentation"
    tables = ("Segmentation: fine-tuned U-Net", "Segmentation: frozen encoder, linear probe")
    shown_metrics = ("miou", "pixel_accuracy")
    fraction_tables, fraction_label = True, "labelled training pixels used, in whole tiles (%)"
    settings = dict(fractions=(0.01, 0.1, 1.0), patch_size=32, steps=20, batch_size=16, lr=1e-3,
                    backbone_lr_scale=0.1, probe_steps=100)
    quick = {"steps": 10, "probe_steps": 50, "fractions": (0.1, 1.0)}
    description = ("OSM land-use map in tiles of {patch_size} px; label fractions {fractions} are "
                   "shares of the training area's labelled pixels taken as whole tiles "
                   "(seeded); mIoU over the classes present in the test tiles. Fine-tuned: "
                   "U-Net on the encoder (a dense checkpoint keeps its pretrained decoder, "
                   "every other row and every random twin gets a fresh one), {steps} AdamW "
                   "steps of batch {batch_size}, lr {lr}, a pretrained encoder at "
                   "{backbone_lr_scale} x lr, warmup and cosine, flips and 90-degree "
                   "rotations of tile and mask together. Linear probe: frozen encoder, 1x1 "
                   "convolutions on every feature scale (channels standardised on training "
                   "pixels), {probe_steps} steps.")

    def protocol(self) -> str:
        return self.description.format(**{**self.params(), "fractions": ", ".join(
            f"{f:.0%}" for f in self.fractions)})

    def run(self, ctx: Context, encoders: Mapping, seed: int) -> list[dict]:
        from .classify import _accelerator

        classes = list(ctx.source.classes)
        k = len(classes)
        folds = ctx.tile_folds(self.patch_size)
        out = []
        for fold, (train, test) in enumerate(ctx.track(folds)):
            counts = train.labelled_counts()
            total = int(counts.sum())
            for name, enc in encoders.items():
                enc = self.fed(name, enc, train.bands)
                for fraction in self.fractions:
                    idx = train.fraction_indices(fraction, seed)
                    used = int(counts[idx].sum())
                    extra = dict(tiles=int(len(idx)), labelled_pixels=used,
                                 labelled_share=used / max(total, 1))
                    column = f"{fraction:.0%} labels"
                    net = SegmentationNet(copy.deepcopy(enc), k)
                    fit(net, Subset(train, idx), "pixel_cross_entropy", steps=self.steps,
                        batch_size=self.batch_size, lr=self.lr, seed=seed,
                        backbone_lr_scale=1.0 if enc.is_random_twin else self.backbone_lr_scale,
                        accelerator=_accelerator(ctx))
                    scores = iou_scores(confusion(net, test, k), classes)
                    out += self.rec(self.tables[0], name, seed, fold, column, fraction, scores,
                                    self.shown_metrics, per_class_iou=scores["per_class_iou"],
                                    **extra)
                    probe = LinearSegProbe(enc, k, channel_scalers(enc, train, idx, seed=seed))
                    fit(probe, Subset(train, idx), "pixel_cross_entropy",
                        steps=self.probe_steps, batch_size=self.batch_size, lr=1e-2,
                        seed=seed, accelerator=_accelerator(ctx))
                    scores = iou_scores(confusion(probe, test, k), classes)
                    out += self.rec(self.tables[1], name, seed, fold, column, fraction, scores,
                                    self.shown_metrics, per_class_iou=scores["per_class_iou"],
                                    **extra)
        return out
