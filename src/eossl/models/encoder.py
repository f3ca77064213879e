"""An encoder as downstream tasks see it: a backbone plus its band list and normalisation.

Evaluation and export never see a pretext task; they receive an :class:`Encoder`, which takes
raw values in the band order it declares and returns one embedding per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data.stats import Normalizer


class Encoder(nn.Module):
    """Backbone + normaliser. ``forward`` takes RAW values (N, C, H, W) in ``bands`` order."""

    def __init__(self, backbone: nn.Module, normalizer: Normalizer, name: str = "encoder") -> None:
        super().__init__()
        self.backbone = backbone
        self.normalizer = normalizer
        self.name = name

    @property
    def bands(self) -> list[str]:
        return self.normalizer.bands

    @property
    def out_dim(self) -> int:
        return self.backbone.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalizer(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial feature map (N, D, h, w) before pooling."""
        return self.backbone.forward_features(self.normalizer(x))
