"""Land-cover segmentation downstream: fine-tune a U-Net on scarce labels, or probe frozen
features with a 1x1 convolution, and score mIoU on a spatially separate block.

Models start from random weights, from a ``dense`` checkpoint (encoder AND decoder), or from
any eossl checkpoint's encoder with a fresh decoder. Training tiles come from the west block,
scores from the east block (or mirrored, for cross-region checks); label fractions are whole
tiles (DenseLabelTiles.fraction_indices), seeded.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from ..data.datasets import IGNORE_INDEX, OSM_CLASSES, DenseLabelTiles, SpatialSplit
from ..errors import ConfigError, DataError
from ..models.encoder import RANDOM_TWIN, Encoder
from ..models.unet import UNet

RANDOM = RANDOM_TWIN


# ------------------------------------------------------------------------ models
class SegmentationNet(nn.Module):
    """RAW image in the data's band order -> class logits (N, K, H, W): a U-Net on the
    encoder fed from the data's bands (``Encoder.for_bands``), which normalises itself."""

    def __init__(self, unet: UNet, name: str = "model") -> None:
        super().__init__()
        self.unet, self.name = unet, name

    @property
    def encoder(self):
        return self.unet.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(x)


@dataclass
class ModelSpec:
    """A row of the table: its name and the encoder it starts from (a dense checkpoint's
    encoder brings its pretrained U-Net decoder, any other gets a fresh one)."""

    name: str
    encoder: Encoder


def build_segmentation_net(spec: ModelSpec, num_classes: int, data_bands: Sequence[str],
                           seed: int = 0) -> SegmentationNet:
    """A fresh SegmentationNet for one fit (a copy of the encoder, decoder init seeded)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        enc = copy.deepcopy(spec.encoder).for_bands(list(data_bands))
        return SegmentationNet(enc.unet(num_classes), name=spec.name)


# ------------------------------------------------------------------------ metrics
def iou_scores(confusion: torch.Tensor, class_names: Sequence[str]) -> dict:
    """Per-class IoU and mIoU from a (K, K) confusion matrix (rows = truth).

    mIoU averages the classes present in the test truth: a class the test block does not hold
    has no defined IoU, and torchmetrics' JaccardIndex would count it as 0 or 1 depending on
    predictions, which rewards or punishes a model for something the data cannot show.
    """
    cm = confusion.double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    support = cm.sum(1)
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    present = support > 0
    per_class = {n: (None if not present[i] else float(iou[i]))
                 for i, n in enumerate(class_names)}
    miou = float(iou[present].mean()) if present.any() else float("nan")
    acc = float(tp.sum() / cm.sum().clamp(min=1))
    return {"miou": miou, "pixel_accuracy": acc, "per_class_iou": per_class}


# ------------------------------------------------------------------------ training
def _augment(x: torch.Tensor, y: torch.Tensor, g: torch.Generator):
    """The same random flip / 90-degree rotation for an image batch and its masks."""
    if torch.rand(1, generator=g) < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    if torch.rand(1, generator=g) < 0.5:
        x, y = x.flip(-2), y.flip(-2)
    k = int(torch.randint(0, 4, (1,), generator=g))
    return torch.rot90(x, k, (-2, -1)), torch.rot90(y, k, (-2, -1))


def _stack(ds, idx) -> tuple[torch.Tensor, torch.Tensor]:
    items = [ds[int(i)] for i in idx]
    return torch.stack([it["image"] for it in items]), torch.stack([it["mask"] for it in items])


def _cosine(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def finetune(net: SegmentationNet, train: DenseLabelTiles, indices: np.ndarray, *,
             steps: int = 100, batch_size: int = 16, lr: float = 1e-3,
             backbone_lr_factor: float = 0.1, weight_decay: float = 1e-4, seed: int = 0,
             device: str | torch.device = "cpu") -> SegmentationNet:
    """Whole-network fine-tuning (AdamW, warmup + cosine), pixel cross-entropy, unlabelled
    pixels ignored. The encoder learns at ``backbone_lr_factor`` x lr (methods.md: a smaller
    backbone rate keeps what pretraining learned)."""
    if len(indices) == 0:
        raise DataError("no labelled training tile selected; raise the label fraction")
    net = net.to(device).train()
    x_all, y_all = _stack(train, indices)
    g = torch.Generator().manual_seed(seed)
    groups = [{"params": list(net.encoder.parameters()), "lr": lr * backbone_lr_factor},
              {"params": [p for n, p in net.unet.named_parameters()
                          if not n.startswith("encoder.")], "lr": lr}]
    opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
    base = [grp["lr"] for grp in opt.param_groups]
    warmup = max(1, steps // 10)
    bs = min(batch_size, len(x_all)) if len(x_all) >= 2 else 2
    for step in range(steps):
        pick = torch.randint(0, len(x_all), (bs,), generator=g)
        x, y = _augment(x_all[pick], y_all[pick], g)
        for grp, b in zip(opt.param_groups, base):
            grp["lr"] = b * _cosine(step, steps, warmup)
        loss = F.cross_entropy(net(x.to(device)), y.to(device), ignore_index=IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def predict_confusion(predict, test: DenseLabelTiles, num_classes: int, batch_size: int = 64,
                      device: str | torch.device = "cpu") -> torch.Tensor:
    """Confusion matrix (K, K) of argmax predictions on the test tiles' labelled pixels."""
    cm = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX).to(device)
    for s in range(0, len(test), batch_size):
        x, y = _stack(test, range(s, min(s + batch_size, len(test))))
        cm.update(predict(x.to(device)).argmax(1), y.to(device))
    return cm.compute().cpu()


# ------------------------------------------------------------------------ linear probe
class LinearSegProbe(nn.Module):
    """1x1 convolutions on each frozen feature scale, upsampled and summed.

    Equal to one 1x1 conv on the hypercolumn (all scales upsampled and concatenated), since both
    the convolution and bilinear upsampling are linear, but it never materialises the
    full-resolution hypercolumn, so frozen features can be cached at their native sizes.
    """

    def __init__(self, channels: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, num_classes, 1, bias=(i == 0))
                                   for i, c in enumerate(channels))

    def forward(self, feats: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        out = 0
        for conv, f in zip(self.convs, feats):
            out = out + F.interpolate(conv(f), size=size, mode="bilinear", align_corners=False)
        return out


@torch.no_grad()
def _pyramids(net: SegmentationNet, ds, idx, batch_size: int = 64, device="cpu"):
    feats, masks = None, []
    for s in range(0, len(idx), batch_size):
        x, y = _stack(ds, idx[s:s + batch_size])
        fs = [f.cpu() for f in net.encoder.pyramid(x.to(device))]
        feats = [[f] for f in fs] if feats is None else [a + [f] for a, f in zip(feats, fs)]
        masks.append(y)
    return [torch.cat(f) for f in feats], torch.cat(masks)


def linear_probe_segmentation(net: SegmentationNet, train: DenseLabelTiles, indices, test,
                              num_classes: int, *, steps: int = 300, batch_size: int = 32,
                              lr: float = 1e-2, seed: int = 0, device="cpu") -> torch.Tensor:
    """Frozen encoder, trained 1x1 conv probe; returns the test confusion matrix."""
    net = net.to(device).eval()
    ftr, ytr = _pyramids(net, train, np.asarray(indices), device=device)
    fte, yte = _pyramids(net, test, np.arange(len(test)), device=device)
    size = tuple(ytr.shape[-2:])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        probe = LinearSegProbe([f.shape[1] for f in ftr], num_classes).to(device)
    # features are frozen but unnormalised; per-channel standardisation makes one lr fit all
    mu = [f.mean((0, 2, 3), keepdim=True) for f in ftr]
    sd = [f.std((0, 2, 3), keepdim=True).clamp(min=1e-6) for f in ftr]
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        pick = torch.randint(0, len(ytr), (min(batch_size, len(ytr)),), generator=g)
        fs = [((f[pick] - m) / s).to(device) for f, m, s in zip(ftr, mu, sd)]
        for grp in opt.param_groups:
            grp["lr"] = lr * _cosine(step, steps, max(1, steps // 10))
        loss = F.cross_entropy(probe(fs, size), ytr[pick].to(device), ignore_index=IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            opt.step()
    cm = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX)
    with torch.no_grad():
        for s in range(0, len(yte), 64):
            fs = [((f[s:s + 64] - m) / sd_).to(device) for f, m, sd_ in zip(fte, mu, sd)]
            cm.update(probe(fs, size).argmax(1).cpu(), yte[s:s + 64])
    return cm.compute()


# ------------------------------------------------------------------------ the table
def evaluate_segmentation(source, specs: Sequence[ModelSpec], *,
                          fractions: Sequence[float] = (0.01, 0.1, 1.0),
                          seeds: Sequence[int] = (0, 1, 2), tile_size: int = 32,
                          steps: int = 100, batch_size: int = 16, lr: float = 1e-3,
                          backbone_lr_factor: float = 0.1, random_backbone_lr_factor: float = 1.0,
                          linear_probe: bool = False, probe_steps: int = 300,
                          finetune_u_net: bool = True,
                          train_side: str = "west", classes: Sequence[str] = OSM_CLASSES,
                          device: str = "cpu", log=None) -> list[dict]:
    """One record per (model, kind, fraction, seed): mIoU, pixel accuracy, per-class IoU.

    ``kind`` is 'finetune' (whole U-Net) or 'linear' (frozen encoder, 1x1 conv probe). A
    randomly initialised encoder trains at ``random_backbone_lr_factor`` x lr: it has nothing
    to preserve, so slowing it down would handicap the baseline.
    """
    if not fractions or not seeds:
        raise ConfigError("give at least one label fraction and one seed")
    if not (finetune_u_net or linear_probe):
        raise ConfigError("nothing to run: enable fine-tuning and/or the linear probe")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"model names must be unique, got {names}")
    k = len(classes)
    split = SpatialSplit(gap=tile_size, train_side=train_side)
    labels = source.label_map()
    scene = source.scenes[0]
    train = DenseLabelTiles(scene, labels, split="train", size=tile_size, spatial_split=split,
                            min_labelled=1e-9, num_classes=k)
    test = DenseLabelTiles(scene, labels, split="test", size=tile_size, spatial_split=split,
                           min_labelled=1e-9, num_classes=k)
    total = int(train.labelled_counts().sum())
    records = []
    for spec in specs:
        for fraction in fractions:
            for seed in seeds:
                idx = train.fraction_indices(fraction, seed)
                used = int(train.labelled_counts()[idx].sum())
                base = {"model": spec.name, "fraction": float(fraction), "seed": int(seed),
                        "tiles": int(len(idx)), "labelled_pixels": used,
                        "labelled_share": used / max(total, 1)}
                kinds = (["finetune"] if finetune_u_net else []) + (
                    ["linear"] if linear_probe else [])
                for kind in kinds:
                    t0 = time.perf_counter()
                    torch.manual_seed(seed)
                    net = build_segmentation_net(spec, k, source.bands, seed=seed)
                    if kind == "finetune":
                        factor = (random_backbone_lr_factor if spec.encoder.is_random_twin
                                  else backbone_lr_factor)
                        net = finetune(net, train, idx, steps=steps, batch_size=batch_size,
                                       lr=lr, backbone_lr_factor=factor, seed=seed,
                                       device=device)
                        cm = predict_confusion(net, test, k, device=device)
                    else:
                        cm = linear_probe_segmentation(net, train, idx, test, k,
                                                       steps=probe_steps, seed=seed,
                                                       device=device)
                    rec = {**base, "kind": kind, **iou_scores(cm, classes),
                           "seconds": round(time.perf_counter() - t0, 1)}
                    records.append(rec)
                    if log:
                        log(f"{spec.name:>14s} {kind:8s} {fraction:>6.0%} seed {seed}: "
                            f"mIoU {rec['miou']:.3f} ({len(idx)} tiles, {rec['seconds']} s)")
    return records


def per_class_iou_table(records: Sequence[dict], fraction: float = 1.0,
                        kind: str = "finetune") -> str:
    """Per-class IoU (mean over seeds) at one fraction, as Markdown."""
    rows = [r for r in records if r["kind"] == kind and r["fraction"] == fraction]
    if not rows:
        return ""
    classes = list(rows[0]["per_class_iou"])
    models = list(dict.fromkeys(r["model"] for r in rows))
    lines = ["| model | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for m in models:
        cells = []
        for c in classes:
            vals = [r["per_class_iou"][c] for r in rows if r["model"] == m
                    and r["per_class_iou"][c] is not None]
            cells.append(f"{np.mean(vals):.2f}" if vals else "–")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def specs_from_checkpoints(checkpoints: Mapping[str, str], random: bool = True,
                           seed: int = 0) -> list[ModelSpec]:
    """One row per checkpoint, led by the first one's random twin."""
    from ..checkpoint import load_encoder

    specs = [ModelSpec(name, load_encoder(path)) for name, path in checkpoints.items()]
    if not specs:
        raise ConfigError("nothing to evaluate: give --checkpoint NAME=PATH (the random row is "
                          "its encoder's random twin)")
    if random:
        specs.insert(0, ModelSpec(RANDOM, specs[0].encoder.random_twin(seed)))
    return specs
