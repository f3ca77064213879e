"""SimCLR (Chen et al. 2020): the generic in-batch contrastive baseline. Two augmentations of
one image are positives; every other view in the (global) batch is a negative. Built from
lightly's projection head and NT-Xent loss.
"""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss

from ..errors import ConfigError
from ..models.heads import simclr_projection_head
from ..views import ContrastiveViews
from . import register_method
from .base import PretextMethod, float32_loss


@register_method("simclr")
class SimCLR(PretextMethod):
    """SimCLR: NT-Xent over 2N views, each view's positive is the other view of its image.

    Options (``model:`` section of a recipe):

    - ``temperature`` (default 0.5): the value the paper uses for small batches (its CIFAR-10
      runs, batch 256-1024); the paper's ImageNet default is 0.1 with batch 4096 (see
      configs/simclr.yaml). Lower temperatures need many negatives.
    - ``proj_hidden_dim`` (default: the backbone width, as in the paper), ``proj_dim`` (128):
      the Linear-BN-ReLU-Linear projector; downstream tasks keep the backbone only.
    - ``gather_distributed`` (default True): under DDP the negatives come from the views of
      ALL ranks (lightly gathers them with gradients), so a run on k devices with batch B
      each optimises the same loss as one device with batch kB. Without it each rank would
      only contrast against its own B images. It is a no-op in a single process.
    - ``views``: ContrastiveViews options (crop ``scale``, ``brightness``, ``contrast``,
      ``jitter_p``, ``gray_p``, ``blur_p``, ``rot90``, ``blur_sigma``).

    Each view is its own forward pass of N images, with its own BatchNorm statistics, as in
    lightly's and torchgeo's SimCLR (and eossl's BYOL). The paper's implementation runs one
    batch of 2N; on CPUs that one batch ran slower than two of N (by 0-7% depending on the
    machine, 10% with channels-last: benchmarks/README.md), and two passes cost what the
    benchmark's ceiling assumes. With ``sync_batchnorm`` under DDP each view's statistics
    cover all ranks (the paper used global BN).
    """

    def __init__(self, bands: list[str], stats: dict, *, temperature: float = 0.5,
                 proj_dim: int = 128, proj_hidden_dim: int | None = None,
                 gather_distributed: bool = True, views: dict | None = None, **kwargs) -> None:
        super().__init__(bands, stats, **kwargs)
        if temperature <= 0 or proj_dim < 1 or (proj_hidden_dim is not None
                                                 and proj_hidden_dim < 1):
            raise ConfigError(f"simclr: need temperature > 0, proj_dim >= 1 and "
                              f"proj_hidden_dim >= 1; got {temperature}, {proj_dim}, "
                              f"{proj_hidden_dim}")
        self.projection_head = simclr_projection_head(self.backbone.out_dim, proj_hidden_dim,
                                                      proj_dim)
        self.criterion = NTXentLoss(temperature=temperature, memory_bank_size=0,
                                    gather_distributed=gather_distributed)
        self.views = ContrastiveViews(self.hparams.crop_size, **(views or {}))

    def make_views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independent augmentations of a normalised batch (override for other views)."""
        return self.views.pair(x)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x = self.normalizer(batch["image"])
        v0, v1 = self.make_views(x)
        z0, z1 = (self.projection_head(self.backbone(v)) for v in (v0, v1))
        loss = float32_loss(self.criterion, z0, z1)  # logits in float32 under bf16-mixed
        self.log("train/loss", loss, prog_bar=True)
        self.log_collapse(z0)
        return loss
