"""The one fine-tuning loop: classification, multi-label, regression, segmentation and change
detection are a network on an eossl encoder, a loss and a Lightning Trainer.

- Networks: :class:`PatchNet` (encoder + dropout + linear head: classification, multi-label,
  regression), :class:`SegmentationNet` (U-Net on the encoder; a dense checkpoint keeps its
  pretrained decoder) and :class:`ChangeNet` (frozen encoder on both dates, |f1 - f2| per scale,
  trained U-Net decoder). Each takes RAW images; the encoder normalises them.
- :class:`FineTune` (the LightningModule): AdamW, the encoder at ``backbone_lr_scale`` x lr
  (as in the SSL literature: a smaller backbone learning rate, so a few labels do not wash out what
  pretraining learnt; 1.0 for a random twin, which has nothing to keep), linear warmup then
  cosine decay per step, and ONE augmentation for image and mask alike: kornia's
  AugmentationSequential of flips and 90-degree rotations (the 8 symmetries of a square: nadir
  patches have no up).
- :func:`fit` trains a copy-free network for a number of steps on a dataset of dicts
  (``image`` and ``label`` or ``mask``), drawing batches with replacement (seeded), so tiny
  label fractions still get full batches; :func:`predict` runs it over a dataset in order.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence

import kornia.augmentation as K
import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from ..data.datasets import IGNORE_INDEX
from ..errors import ConfigError, DataError
from ..models.unet import DEFAULT_DECODER_CHANNELS

__all__ = ["PatchNet", "SegmentationNet", "ChangeNet", "FineTune", "fit", "predict",
           "dihedral_augmentation", "LOSSES"]

LOSSES = ("cross_entropy", "bce", "mse", "pixel_cross_entropy", "change_bce")


# ------------------------------------------------------------------------------ networks
class PatchNet(nn.Module):
    """Encoder + dropout + linear head: raw (N, C, H, W) -> (N, out_dim)."""

    def __init__(self, encoder: nn.Module, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.encoder(x)))


class SegmentationNet(nn.Module):
    """U-Net on the encoder: raw (N, C, H, W) -> class logits (N, K, H, W)."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.unet = encoder.unet(num_classes)

    @property
    def encoder(self) -> nn.Module:
        return self.unet.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(x)


class ChangeNet(nn.Module):
    """Frozen encoder on both dates, |f1 - f2| at every scale, a trained smp U-Net decoder ->
    one change logit per pixel. Input: the two dates stacked on the channel axis (N, 2C, H, W),
    so one augmentation moves both dates and the mask together."""

    def __init__(self, encoder: nn.Module,
                 decoder_channels: Sequence[int] | None = None) -> None:
        super().__init__()
        from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder

        self.encoder = copy.deepcopy(encoder).eval()  # frozen here, not for the caller
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        ch = encoder.pyramid_channels()
        dec = tuple(decoder_channels or DEFAULT_DECODER_CHANNELS[:len(ch)])
        self.decoder = UnetDecoder(encoder_channels=[1, *ch], decoder_channels=dec,
                                   n_blocks=len(ch))
        self.head = nn.Conv2d(dec[-1], 1, 3, padding=1)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen, BatchNorm statistics included
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1] // 2
        with torch.no_grad():
            f1, f2 = self.encoder.pyramid(x[:, :c]), self.encoder.pyramid(x[:, c:])
        diffs = [(a - b).abs() for a, b in zip(f1, f2)]
        return self.head(self.decoder([x, *diffs]))[:, 0]


# ------------------------------------------------------------------------------ the loop
def dihedral_augmentation(with_mask: bool) -> K.AugmentationSequential:
    """Random flips and 90-degree rotations, the same for an image and its mask.

    kornia draws ``times`` uniformly and rounds it, so (-1.5, 2.5) gives the four rotations
    with equal probability; flips and quarter turns map pixels onto pixels, so masks stay
    exact (checked in the tests)."""
    return K.AugmentationSequential(
        K.RandomHorizontalFlip(), K.RandomVerticalFlip(),
        K.RandomRotation90(times=(-1.5, 2.5), p=1.0),
        data_keys=["input", "mask"] if with_mask else ["input"])


class FineTune(L.LightningModule):
    """Loss, optimiser and schedule of every fine-tuning evaluation (see the module doc)."""

    def __init__(self, net: nn.Module, loss: str, *, lr: float = 1e-3,
                 backbone_lr_scale: float = 0.1, weight_decay: float = 1e-4,
                 warmup: float = 0.1, augment: bool = True,
                 class_weights: torch.Tensor | None = None,
                 pos_weight: float | None = None) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ConfigError(f"unknown fine-tuning loss {loss!r}; expected one of "
                              f"{', '.join(LOSSES)}")
        self.net, self.loss_name = net, loss
        self.lr, self.backbone_lr_scale, self.weight_decay = lr, backbone_lr_scale, weight_decay
        self.warmup = warmup
        self.with_mask = loss in ("pixel_cross_entropy", "change_bce")
        self.augment = dihedral_augmentation(self.with_mask) if augment else None
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.pos_weight = pos_weight

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x = batch["image"].float()
        y = batch["mask"] if self.with_mask else batch["label"]
        if self.augment is not None:
            with torch.no_grad():
                if self.with_mask:
                    x, m = self.augment(x, y[:, None].float())
                    y = m[:, 0].round().long()
                else:
                    x = self.augment(x)
        loss = self.loss(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        name = self.loss_name
        if name == "cross_entropy":
            return F.cross_entropy(out, y.long(), weight=self.class_weights)
        if name == "bce":
            return F.binary_cross_entropy_with_logits(out, y.float())
        if name == "mse":
            return F.mse_loss(out, y.float())
        if name == "pixel_cross_entropy":
            return F.cross_entropy(out, y.long(), ignore_index=IGNORE_INDEX)
        valid = y >= 0  # change masks mark padding -1
        pw = None if self.pos_weight is None else torch.tensor(self.pos_weight, device=out.device)
        return F.binary_cross_entropy_with_logits(out[valid], y[valid].float(), pos_weight=pw)

    def configure_optimizers(self):
        encoder = [p for p in self.net.encoder.parameters() if p.requires_grad]
        ids = {id(p) for p in self.net.encoder.parameters()}
        rest = [p for p in self.net.parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": rest, "lr": self.lr}]
        if encoder:
            groups.append({"params": encoder, "lr": self.lr * self.backbone_lr_scale})
        opt = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        steps = max(1, int(self.trainer.max_steps))
        warm = max(1, int(self.warmup * steps))

        def factor(step: int) -> float:  # linear warmup, then cosine to 0
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def fit(net: nn.Module, data, loss: str, *, steps: int, batch_size: int = 32,
        lr: float = 1e-3, backbone_lr_scale: float = 0.1, weight_decay: float = 1e-4,
        augment: bool = True, class_weights: torch.Tensor | None = None,
        pos_weight: float | None = None, seed: int = 0, accelerator: str = "cpu") -> nn.Module:
    """Train ``net`` in place for ``steps`` optimiser steps of ``batch_size`` samples drawn
    from ``data`` with replacement (seeded); returns it in eval mode on the CPU."""
    if steps < 1 or lr <= 0 or batch_size < 1 or backbone_lr_scale < 0:
        raise ConfigError(f"fine-tuning needs steps >= 1, lr > 0, batch_size >= 1 and "
                          f"backbone_lr_scale >= 0; got {steps}, {lr}, {batch_size}, "
                          f"{backbone_lr_scale}")
    if len(data) == 0:
        raise DataError("fine-tuning needs at least one labelled training sample")
    L.seed_everything(seed, workers=True, verbose=False)
    gen = torch.Generator().manual_seed(seed)
    # a batch of one would break BatchNorm in training mode
    bs = max(2, batch_size)
    loader = DataLoader(data, batch_size=bs, drop_last=True, sampler=RandomSampler(
        data, replacement=True, num_samples=steps * bs, generator=gen))
    task = FineTune(net.train(), loss, lr=lr, backbone_lr_scale=backbone_lr_scale,
                    weight_decay=weight_decay, augment=augment, class_weights=class_weights,
                    pos_weight=pos_weight)
    from ..progress import inner_bar

    shown = inner_bar(steps, "fine-tuning")  # below the evaluation's bar, when it has one
    # Lightning's own bar counts an epoch, and would stand beside the evaluation's bar
    trainer = L.Trainer(max_steps=steps, max_epochs=-1, accelerator=accelerator, devices=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[_Steps(shown)])
    with shown, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*number of training batches.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        # a frozen encoder (change, linear probe) stays in eval mode on purpose
        warnings.filterwarnings("ignore", message=".*in eval mode at the start of training.*")
        trainer.fit(task, loader)
    return net.cpu().eval()


class _Steps(L.Callback):
    """Moves a bar by one after each optimiser step of a fit."""

    def __init__(self, bar) -> None:
        self.bar = bar

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.bar.update(1)


def epochs_to_steps(epochs: int, n: int, batch_size: int) -> int:
    """Optimiser steps that see about ``epochs`` x ``n`` samples."""
    return max(1, epochs * math.ceil(n / max(1, batch_size)))


@torch.no_grad()
def predict(net: nn.Module, data, batch_size: int = 64, device: str | torch.device = "cpu"):
    """``(outputs, batches)``: the network's outputs (CPU, float32) and the batches in
    dataset order."""
    was = net.training
    net.eval().to(device)
    outs, batches = [], []
    try:
        for batch in DataLoader(data, batch_size=batch_size, shuffle=False):
            outs.append(net(batch["image"].float().to(device)).float().cpu())
            batches.append(batch)
    finally:
        net.train(was)
    return outs, batches
