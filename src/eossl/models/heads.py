"""Projector and predictor heads used only during pretraining, taken from lightly.

Thin factories rather than subclasses: each method composes its heads from these parts with its
paper's sizes in one line, and lightly keeps the well-tested layer definitions.
"""

from __future__ import annotations

from lightly.models.modules.heads import (
    BYOLPredictionHead,
    BYOLProjectionHead,
    MoCoProjectionHead,
    SimCLRProjectionHead,
)
from torch import nn


def moco_projection_head(input_dim: int, hidden_dim: int | None = None,
                         output_dim: int = 128) -> nn.Module:
    """MoCo v2 projector: Linear(d, d) - ReLU - Linear(d, 128); hidden defaults to d."""
    return MoCoProjectionHead(input_dim, hidden_dim or input_dim, output_dim)


def simclr_projection_head(input_dim: int, hidden_dim: int | None = None,
                           output_dim: int = 128) -> nn.Module:
    """SimCLR projector (Linear-BN-ReLU-Linear); hidden defaults to d as in the paper."""
    return SimCLRProjectionHead(input_dim, hidden_dim or input_dim, output_dim)


def byol_projection_head(input_dim: int, hidden_dim: int = 4096,
                         output_dim: int = 256) -> nn.Module:
    """BYOL projector: MLP 4096 hidden, 256 out (paper defaults)."""
    return BYOLProjectionHead(input_dim, hidden_dim, output_dim)


def byol_prediction_head(input_dim: int = 256, hidden_dim: int = 4096,
                         output_dim: int = 256) -> nn.Module:
    """BYOL predictor on the projector output; same shape as the projector (paper)."""
    return BYOLPredictionHead(input_dim, hidden_dim, output_dim)
