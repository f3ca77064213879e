"""MoCo v2 (Chen et al. 2020): the generic contrastive baseline, two augmentations of one image,
a momentum key encoder and a queue of negatives; built from lightly's head, EMA and loss.
"""

from __future__ import annotations

import copy

import torch
from lightly.loss import NTXentLoss
from lightly.models.utils import deactivate_requires_grad, update_momentum
from torch import nn

from ..errors import ConfigError
from ..models.heads import moco_projection_head
from ..views import ContrastiveViews
from . import register_method
from .base import PretextMethod, float32_loss

MIN_BN_SPLIT = 16  # fewer samples per BatchNorm group make its statistics too noisy


@register_method("moco")
class MoCoV2(PretextMethod):
    """MoCo v2: InfoNCE of q(v0) against its key k(v1) and a queue of earlier keys.

    ``symmetric=True`` adds the (q(v1), k(v0)) direction in the same call (MoCo v3 style, as
    in MoCo's CIFAR demo): twice the encoder work per image. The default is the paper's
    one-directional loss. Defaults are sized for small CPU runs; paper: queue 65536, EMA
    momentum 0.999, T 0.2.
    """

    def __init__(self, bands: list[str], stats: dict, *, queue_size: int = 4096,
                 temperature: float = 0.2, ema_momentum: float = 0.99, proj_dim: int = 128,
                 proj_hidden_dim: int | None = None, bn_splits: int = 4,
                 gather_distributed: bool = True, views: dict | None = None,
                 symmetric: bool = False, **kwargs) -> None:
        super().__init__(bands, stats, **kwargs)
        if queue_size < 0 or not 0 <= ema_momentum <= 1 or temperature <= 0 or bn_splits < 1:
            raise ConfigError(f"moco: need queue_size >= 0, 0 <= ema_momentum <= 1, "
                              f"temperature > 0, bn_splits >= 1; got {queue_size}, "
                              f"{ema_momentum}, {temperature}, {bn_splits}")
        self.projection_head = moco_projection_head(self.backbone.out_dim, proj_hidden_dim,
                                                    proj_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        # queue_size 0 falls back to in-batch negatives. Under DDP, gather_distributed=True
        # enqueues the keys of all ranks, as MoCo's multi-GPU queue does (default: with False
        # each rank's queue holds only its own keys, so k ranks no longer optimise the loss of
        # one process with the global batch; tests/test_ddp.py pins this). No-op on one process.
        self.criterion = NTXentLoss(temperature=temperature,
                                    memory_bank_size=(queue_size, proj_dim),
                                    gather_distributed=gather_distributed)
        # ``views`` overrides ContrastiveViews options (scale, jitter strength, ...) from a recipe.
        self.views = ContrastiveViews(self.hparams.crop_size, **(views or {}))

    def current_ema_momentum(self) -> float:
        return self.cosine_momentum(self.hparams.ema_momentum)

    # Batch-shuffle BN replacement. MoCo shuffles keys across GPUs because BatchNorm statistics
    # shared by a query and its positive key leak a "same batch" signature that separates the
    # positive from queue negatives (earlier batches). Splitting doesn't need several GPUs:
    # queries and keys run as separate BatchNorm groups, the keys after a random permutation,
    # so a query's group and its key's group share few samples (SplitBatchNorm, as in MoCo's
    # CIFAR demo and lightly's benchmarks). Under DDP each rank does the same on its batch.
    def _split_forward(self, backbone: nn.Module, head: nn.Module, x: torch.Tensor,
                       shuffle: bool) -> torch.Tensor:
        splits = max(1, min(self.hparams.bn_splits, len(x) // MIN_BN_SPLIT))
        if splits == 1:
            return head(backbone(x))
        perm = torch.randperm(len(x), device=x.device) if shuffle else None
        xs = x[perm] if shuffle else x
        out = torch.cat([head(backbone(c)) for c in xs.chunk(splits)])
        return out[torch.argsort(perm)] if shuffle else out

    def make_views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (query, key) views of a normalised batch: two augmentations of one image.
        Subclasses with other positives (moco-tp: two dates of one place) override this."""
        return self.views(x), self.views(x)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x = self.normalizer(batch["image"])
        v0, v1 = self.make_views(x)
        m = self.current_ema_momentum()
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.projection_head, self.projection_head_momentum, m)
        key_views = (v1, v0) if self.hparams.symmetric else (v1,)
        query_views = (v0, v1) if self.hparams.symmetric else (v0,)
        with torch.no_grad():
            keys = [self._split_forward(self.backbone_momentum, self.projection_head_momentum,
                                        v, shuffle=True) for v in key_views]
        queries = [self._split_forward(self.backbone, self.projection_head, v, shuffle=False)
                   for v in query_views]
        # One call: in the symmetric form both directions meet the same queue (two calls would
        # put k1 among the negatives of q1), and all keys are enqueued once afterwards.
        # float32, outside autocast: logits / temperature and the float32 queue
        loss = float32_loss(self.criterion, torch.cat(queries), torch.cat(keys))
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/ema_momentum", m)
        self.log_collapse(queries[0])
        return loss
