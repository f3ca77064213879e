"""BYOL (Grill et al. 2020): an online network predicts a slowly moving (EMA) target network's
projection of another view of the same image; no negatives. Built from lightly's heads, EMA
utilities and loss. ``BYOL`` is also the base of RS-BYOL (methods/rsbyol.py), which only
changes how the two views are made.
"""

from __future__ import annotations

import copy

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.utils import deactivate_requires_grad, update_momentum

from ..errors import ConfigError
from ..models.backbones import build_backbone
from ..models.heads import byol_prediction_head, byol_projection_head
from ..views import ContrastiveViews
from . import register_method
from .base import PretextMethod, float32_loss


@register_method("byol")
class BYOL(PretextMethod):
    """BYOL: loss = mean over the two directions of 2 - 2 cos(q(v_i), stopgrad(z'(v_j))).

    Online network: backbone -> projector -> predictor (q). Target: an EMA copy of backbone +
    projector (z'), updated with tau rising from ``ema_momentum`` (paper 0.996) to 1 by a cosine
    over the run's budget (``PretextMethod.cosine_momentum``). The target never gets gradients
    and is not in the optimiser. Each direction is the paper's 2 - 2 cos; their mean keeps the
    loss in [0, 4] (the paper sums them: the same gradient direction, twice the scale).

    Options: ``proj_hidden_dim``/``proj_dim``/``pred_hidden_dim`` (class defaults 1024/256/1024
    are CPU-sized; paper 4096/256/4096, see configs/byol.yaml), ``ema_momentum`` (0.996),
    ``views`` (ContrastiveViews options).

    Extension API (used by RS-BYOL; keep it small):

    - ``make_views(x) -> (v0, v1)``: two views of a NORMALISED batch ``x`` (N, C, H, W) from
      ``batch["image"]``. Default: two ContrastiveViews draws. Views may have a different
      channel count than ``x``;
    - ``view_channels() -> int``: channels of those views (default ``len(bands)``). The online
      backbone (and so the target copy) is built with ``in_chans=view_channels()``; a subclass
      whose views have other channels must return that number and make sure its checkpoint
      metadata describes the encoder's inputs (``load_encoder`` builds ``len(bands)`` inputs).
    """

    def __init__(self, bands: list[str], stats: dict, *, ema_momentum: float = 0.996,
                 proj_hidden_dim: int = 1024, proj_dim: int = 256, pred_hidden_dim: int = 1024,
                 views: dict | None = None, **kwargs) -> None:
        super().__init__(bands, stats, **kwargs)
        if not 0 <= ema_momentum <= 1 or min(proj_hidden_dim, proj_dim, pred_hidden_dim) < 1:
            raise ConfigError(f"byol: need 0 <= ema_momentum <= 1 and head sizes >= 1; got "
                              f"ema_momentum={ema_momentum}, proj_hidden_dim={proj_hidden_dim},"
                              f" proj_dim={proj_dim}, pred_hidden_dim={pred_hidden_dim}")
        channels = int(self.view_channels())
        if channels != self.backbone.in_chans:
            hp = self.hparams
            self.backbone = build_backbone(hp.backbone, in_chans=channels,
                                           stem_stride=hp.stem_stride,
                                           **(hp.backbone_kwargs or {}))
        self.projection_head = byol_projection_head(self.backbone.out_dim, proj_hidden_dim,
                                                    proj_dim)
        self.prediction_head = byol_prediction_head(proj_dim, pred_hidden_dim, proj_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()
        self.views = ContrastiveViews(self.hparams.crop_size, **(views or {}))

    # ---------------------------------------------------------------- extension points
    def view_channels(self) -> int:
        """Channels of the views ``make_views`` returns (the online encoder's in_chans)."""
        return len(self.hparams.bands)

    def make_views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two augmentations of the normalised batch ``x`` (override for other view types)."""
        return self.views.pair(x)

    # ---------------------------------------------------------------- training
    def current_ema_momentum(self) -> float:
        return self.cosine_momentum(self.hparams.ema_momentum)

    def online(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(projection, prediction) of the online network."""
        z = self.projection_head(self.backbone(v))
        return z, self.prediction_head(z)

    @torch.no_grad()
    def target(self, v: torch.Tensor) -> torch.Tensor:
        return self.projection_head_momentum(self.backbone_momentum(v))

    def byol_loss(self, p0: torch.Tensor, p1: torch.Tensor, t0: torch.Tensor,
                  t1: torch.Tensor) -> torch.Tensor:
        """Symmetrised loss: mean of (2 - 2 cos(p0, t1)) and (2 - 2 cos(p1, t0))."""
        return 2.0 + float32_loss(self.criterion, p0, t1.detach()) + float32_loss(
            self.criterion, p1, t0.detach())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x = self.normalizer(batch["image"])
        v0, v1 = self.make_views(x)
        tau = self.current_ema_momentum()
        # The EMA step for the previous optimiser update, taken before this step's forward.
        update_momentum(self.backbone, self.backbone_momentum, tau)
        update_momentum(self.projection_head, self.projection_head_momentum, tau)
        # Each view is its own forward (own BatchNorm statistics), as in BYOL's implementation.
        z0, p0 = self.online(v0)
        _, p1 = self.online(v1)
        t0, t1 = self.target(v0), self.target(v1)
        loss = self.byol_loss(p0, p1, t0, t1)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/ema_momentum", tau)
        self.log_collapse(z0)
        return loss
