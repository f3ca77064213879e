"""Fine-tuning: a classification head on an eossl encoder, trained end to end.

The probes (probe.py) freeze the encoder; fine-tuning lets the labels change it, which is how
the colorization paper evaluates its encoders and how its RGB + spectral ensemble is built.

API (small on purpose):

- ``Classifier(encoder, num_classes)``: an :class:`~eossl.models.encoder.Encoder` (any kind)
  + dropout + linear head; ``forward(raw) -> logits``.
- ``finetune(encoder, train, num_classes, ...) -> Classifier``: trains a copy of ``encoder``
  and a new head with a Lightning Trainer (AdamW, cosine decay, flips/90-degree rotations,
  cross-entropy); ``train`` yields {"image": raw (C, H, W), "label": int}. Seeded.
- ``predict_logits(model, dataset) -> (logits (N, K), labels (N,))`` as numpy arrays.
"""

from __future__ import annotations

import copy
import warnings

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..errors import ConfigError

__all__ = ["Classifier", "FinetuneTask", "finetune", "predict_logits", "random_dihedral"]


class Classifier(nn.Module):
    """Encoder + dropout + linear head: raw values (N, C, H, W) -> logits (N, num_classes)."""

    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.out_dim, num_classes)

    @property
    def bands(self) -> list[str]:
        return list(self.encoder.bands)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.encoder(x)))


def random_dihedral(x: torch.Tensor) -> torch.Tensor:
    """Per-sample random flip and 90-degree rotation (the 8 symmetries of a square): labels of
    nadir image patches do not depend on orientation."""
    n = x.shape[0]
    flip = torch.rand(n, device=x.device) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    if x.shape[-1] == x.shape[-2]:
        k = torch.randint(0, 4, (n,), device=x.device)
        x = torch.stack([torch.rot90(xi, int(ki), dims=(-2, -1)) for xi, ki in zip(x, k)])
    return x


class FinetuneTask(L.LightningModule):
    """The Lightning side of :func:`finetune`: cross-entropy, AdamW, cosine decay per step."""

    def __init__(self, model: Classifier, lr: float = 1e-3, weight_decay: float = 1e-4,
                 augment: bool = True, class_weights: torch.Tensor | None = None,
                 backbone_lr_scale: float = 0.1) -> None:
        super().__init__()
        self.model = model
        self.lr, self.weight_decay, self.augment = lr, weight_decay, augment
        self.backbone_lr_scale = backbone_lr_scale
        self.register_buffer("class_weights", class_weights, persistent=False)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, y = batch["image"].float(), batch["label"].long()
        if self.augment:
            x = random_dihedral(x)
        loss = F.cross_entropy(self.model(x), y, weight=self.class_weights)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        # The pretrained encoder moves more slowly than the new head (methods.md: fine-tune
        # the whole network with a smaller backbone learning rate), so a few labelled patches
        # do not wash out what pretraining learnt.
        groups = [{"params": self.model.encoder.parameters(),
                   "lr": self.lr * self.backbone_lr_scale},
                  {"params": self.model.head.parameters(), "lr": self.lr}]
        opt = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def finetune(encoder: nn.Module, train, num_classes: int, *, epochs: int = 10,
             lr: float = 1e-3, weight_decay: float = 1e-4, batch_size: int = 32,
             dropout: float = 0.0, augment: bool = True, balanced: bool = False,
             backbone_lr_scale: float = 0.1, seed: int = 0, accelerator: str = "cpu",
             devices: int | str = 1) -> Classifier:
    """Fine-tune a copy of ``encoder`` with a new linear head on labelled patches.

    The encoder trains at ``backbone_lr_scale`` x ``lr`` (0.1: a pretrained encoder); pass 1.0
    for an encoder from random weights, which has nothing to keep.

    ``balanced=True`` weights the cross-entropy by inverse class frequency (for skewed label
    sets such as the scene's farm-dominated patches). The given encoder is not modified.
    Returns the trained Classifier in eval mode on the CPU.
    """
    if epochs < 1 or lr <= 0 or batch_size < 1 or backbone_lr_scale < 0:
        raise ConfigError(f"fine-tuning needs epochs >= 1, lr > 0, batch_size >= 1 and "
                          f"backbone_lr_scale >= 0; got {epochs}, {lr}, {batch_size}, "
                          f"{backbone_lr_scale}")
    labels = np.asarray(getattr(train, "labels", [train[i]["label"] for i in range(len(train))]))
    if len(labels) == 0:
        raise ConfigError("fine-tuning needs at least one labelled training patch")
    L.seed_everything(seed, workers=True, verbose=False)
    model = Classifier(copy.deepcopy(encoder), num_classes, dropout=dropout)
    model.train()
    weights = None
    if balanced:
        counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
        w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / (counts > 0).sum(), 0.0)
        weights = torch.tensor(w, dtype=torch.float32)
    task = FinetuneTask(model, lr=lr, weight_decay=weight_decay, augment=augment,
                        class_weights=weights, backbone_lr_scale=backbone_lr_scale)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(train, batch_size=min(batch_size, len(train)), shuffle=True,
                        drop_last=len(train) > batch_size, generator=gen)
    trainer = L.Trainer(max_epochs=epochs, accelerator=accelerator, devices=devices,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*number of training batches.*")
        trainer.fit(task, loader)
    return model.cpu().eval()


@torch.no_grad()
def predict_logits(model: nn.Module, dataset, batch_size: int = 256,
                   device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, K) float32 and labels (N,) int64 of a labelled dataset, in dataset order."""
    was_training = model.training
    model.eval().to(device)
    logits, labels = [], []
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            logits.append(model(batch["image"].float().to(device)).float().cpu())
            labels.append(torch.as_tensor(batch["label"]).long())
    finally:
        model.train(was_training)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()
