"""MoCo v2 (Chen et al. 2020): the generic contrastive baseline, two augmentations of one image,
a momentum key encoder and a queue of negatives; built from lightly's head, EMA and loss.
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss
from lightly.models.utils import deactivate_requires_grad, update_momentum
from torch import nn

from ..errors import ConfigError
from ..models.heads import moco_projection_head
from ..views import ContrastiveViews
from . import register_method
from .base import PretextMethod, float32_loss

MIN_BN_SPLIT = 16  # fewer samples per BatchNorm group make its statistics too noisy


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, inside ``batchnorm_groups(module, s)``, normalises s groups of samples
    with their own statistics in one call: sample i belongs to group i % s.

    An (N, C, H, W) batch viewed as (N/s, s*C, H, W) puts group g's channel c at channel
    g*C + c, so one fused BatchNorm over s*C channels computes every group's statistics at
    the cost of a plain BatchNorm (as lightly's ``SplitBatchNorm`` does). Unlike lightly's
    class, parameters and buffers keep BatchNorm2d's shapes (checkpoints load into a plain
    encoder) and the running statistics are updated exactly as s successive BatchNorm calls,
    group 0 first, would update them, which is what the per-group loop this replaces did
    (tests/test_moco.py compares the two). Outside the context, or in eval mode, it is
    BatchNorm2d.
    """

    splits = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.splits
        if s == 1 or not (self.training or not self.track_running_stats):
            return super().forward(x)
        n, c, h, w = x.shape
        if n % s:
            raise ValueError(f"SplitBatchNorm2d: batch of {n} does not split into {s} groups")
        track = self.training and self.track_running_stats
        # With momentum 1 the temporary buffers receive each group's batch mean and unbiased
        # variance, folded into the running statistics below.
        stats = (torch.zeros(s * c, device=x.device, dtype=self.running_mean.dtype),
                 torch.ones(s * c, device=x.device, dtype=self.running_var.dtype)) \
            if track else (None, None)
        out = F.batch_norm(
            x.reshape(n // s, s * c, h, w), *stats,
            self.weight.repeat(s) if self.weight is not None else None,
            self.bias.repeat(s) if self.bias is not None else None,
            True, 1.0, self.eps)
        if track:
            self._fold(*stats, s)
        out = out.view(n, c, h, w)
        if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            # a channels-last batch cannot be viewed group-wise; keep the layout the next
            # convolution expects
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    @torch.no_grad()
    def _fold(self, mean: torch.Tensor, var: torch.Tensor, s: int) -> None:
        """running <- the result of s EMA updates with the groups' statistics, in order."""
        if self.momentum is None:  # cumulative average, as BatchNorm2d
            seen = float(self.num_batches_tracked)
            factors = [1.0 / (seen + g + 1) for g in range(s)]
        else:
            factors = [float(self.momentum)] * s
        self.num_batches_tracked.add_(s)
        # update g contributes a_g * prod_{j>g} (1 - a_j); the old value prod_g (1 - a_g)
        keep, weights = 1.0, [0.0] * s
        for g in reversed(range(s)):
            weights[g] = factors[g] * keep
            keep *= 1.0 - factors[g]
        w = _fold_weights(tuple(weights), mean.device, mean.dtype)
        for running, group in ((self.running_mean, mean), (self.running_var, var)):
            # (elementwise, not a matmul: autocast would run a matmul in bf16)
            running.mul_(keep).add_((w[:, None] * group.view(s, -1)).sum(0))


_FOLD_CACHE: dict = {}


def _fold_weights(weights: tuple, device, dtype) -> torch.Tensor:
    """The fold weights as a tensor, made once per (weights, device): a fresh host-to-device
    copy at every BatchNorm of every step would stall a GPU's queue."""
    key = (weights, str(device), dtype)
    if key not in _FOLD_CACHE:
        _FOLD_CACHE[key] = torch.tensor(weights, device=device, dtype=dtype)
    return _FOLD_CACHE[key]


def convert_split_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every plain BatchNorm2d in ``module`` by a SplitBatchNorm2d sharing its
    parameters and buffers (in place; state-dict keys and shapes unchanged)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            bn = SplitBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
            bn._parameters, bn._buffers = child._parameters, child._buffers
            bn.train(child.training)
            setattr(module, name, bn)
        else:
            convert_split_batchnorm(child)
    return module


@contextlib.contextmanager
def batchnorm_groups(module: nn.Module, splits: int):
    """Within the block, ``module``'s SplitBatchNorm2d layers normalise ``splits`` groups."""
    layers = [m for m in module.modules() if isinstance(m, SplitBatchNorm2d)]
    for m in layers:
        m.splits = splits
    try:
        yield
    finally:
        for m in layers:
            m.splits = 1


def bn_groups(n: int, bn_splits: int) -> int:
    """How many BatchNorm groups a batch of n forms: at most ``bn_splits``, each of at least
    MIN_BN_SPLIT samples, and equal in size (the batched call needs n divisible by it)."""
    most = max(1, min(bn_splits, n // MIN_BN_SPLIT))
    return next(s for s in range(most, 0, -1) if n % s == 0)


def split_bn_forward(backbone: nn.Module, x: torch.Tensor, bn_splits: int,
                     shuffle: bool) -> torch.Tensor:
    """``backbone(x)`` with BatchNorm statistics per group (``bn_groups``); with ``shuffle``
    the groups are formed after a random permutation, and the output is put back in order."""
    splits = bn_groups(len(x), bn_splits)
    if splits == 1:
        return backbone(x)
    perm = torch.randperm(len(x), device=x.device) if shuffle else None
    with batchnorm_groups(backbone, splits):
        out = backbone(x[perm] if shuffle else x)
    return out[torch.argsort(perm)] if shuffle else out


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
        convert_split_batchnorm(self.backbone)  # before the copy: the key encoder splits too
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
    # All groups go through the backbone as one batch (SplitBatchNorm2d above).
    def _split_forward(self, backbone: nn.Module, head: nn.Module, x: torch.Tensor,
                       shuffle: bool) -> torch.Tensor:
        return head(split_bn_forward(backbone, x, self.hparams.bn_splits, shuffle))

    def make_views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (query, key) views of a normalised batch: two augmentations of one image.
        Subclasses with other positives (moco-tp: two dates of one place) override this."""
        return self.views.pair(x)

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
