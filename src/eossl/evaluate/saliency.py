"""Saliency maps: where in a patch a classifier looks, as input gradients.

Grad-CAM needs a spatial feature map of useful size; at 16 px patches a ResNet's last stage is
1x1, so its map would be a single value. Input gradients keep full resolution: the map is
``|d logit_c / d x| * |x|`` (gradient x input, taken on raw values so it is comparable across
models that see different bands), summed over bands, for the predicted class c.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..report import save_figure

__all__ = ["input_gradient_saliency", "saliency_figure"]


def input_gradient_saliency(model: nn.Module, raw: torch.Tensor,
                            target: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) saliency in [0, 1] (each map scaled by its own maximum) and the (N,) classes
    explained (``target`` if given, else the model's prediction)."""
    was_training = model.training
    model.eval()
    try:
        x = raw.float().clone().requires_grad_(True)
        logits = model(x)
        cls = logits.argmax(1) if target is None else torch.as_tensor(target).long()
        logits.gather(1, cls.view(-1, 1)).sum().backward()
        sal = (x.grad.abs() * x.detach().abs()).sum(1)
    finally:
        model.train(was_training)
    peak = sal.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return (sal / peak).numpy(), cls.detach().numpy()


def saliency_figure(rgb: np.ndarray, maps: Mapping[str, np.ndarray],
                    predictions: Mapping[str, np.ndarray], labels: np.ndarray,
                    class_names: Sequence[str], path: str | os.PathLike,
                    title: str = "saliency") -> Path:
    """One row per patch: RGB | one saliency map per model (its prediction in the title).

    ``rgb`` is (N, H, W, 3) in [0, 1]; each entry of ``maps`` (N, H, W). Atomic PNG write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, names = rgb.shape[0], list(maps)
    fig, axes = plt.subplots(n, 1 + len(names), figsize=(2.3 * (1 + len(names)), 2.3 * n + 0.6),
                             squeeze=False)
    for i in range(n):
        ax = axes[i, 0]
        ax.imshow(rgb[i].clip(0, 1), interpolation="nearest")
        ax.set_title(f"RGB, true: {class_names[int(labels[i])]}", fontsize=8)
        ax.axis("off")
        for j, name in enumerate(names, start=1):
            ax = axes[i, j]
            ax.imshow(rgb[i].mean(-1), cmap="gray", interpolation="nearest", alpha=1.0)
            ax.imshow(maps[name][i], cmap="inferno", vmin=0, vmax=1, alpha=0.75,
                      interpolation="nearest")
            ax.set_title(f"{name}: {class_names[int(predictions[name][i])]}", fontsize=8)
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
