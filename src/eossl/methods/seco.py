"""Seasonal Contrast (SeCo, Manas et al. 2021) and its baseline MoCo v2 with temporal positives.

SeCo learns from one place seen at three dates t0, t1, t2. The query is a crop of t0; three
keys each differ from it in a known way: k0 = crop(augment(t1)) (season + synthetic change),
k1 = crop(t2) (season only), k2 = crop(augment(t0)) (synthetic change only). Three projection
heads map the shared backbone feature into three subspaces; subspace i is trained to match
the query with key k_i. Subspace 0 takes negatives from its queue only, so it becomes
invariant to both kinds of change; subspaces 1 and 2 also take the batch's other two keys as
negatives, so Z1 stays sensitive to synthetic change and Z2 to season. Downstream tasks keep
the backbone feature, which holds all three.

Built from lightly parts: MoCo projection heads, ``update_momentum`` for the key encoder and
key heads, ``MemoryBankModule`` (a FIFO ring buffer) for each queue. The three-subspace InfoNCE
itself is written here: lightly's NTXentLoss takes one queue and in-batch negatives of the
same pair only, not "its queue plus the other keys projected into this subspace".
"""

from __future__ import annotations

import copy

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from lightly.models.modules.memory_bank import MemoryBankModule
from lightly.models.utils import concat_all_gather, deactivate_requires_grad, update_momentum
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from ..errors import ConfigError, DataError
from ..models.heads import moco_projection_head
from ..views import BandGrayscale, BandJitter, _blur_kernel
from . import register_method
from .base import PretextMethod, float32_loss
from .moco import MoCoV2, convert_split_batchnorm, split_bn_forward

EMA_SCHEDULES = ("constant", "cosine")


def _multi_date_dataset(method: str, n_dates: int, source, data_cfg: dict):
    """Co-located crops at ``n_dates`` dates; ConfigError for a source without dates."""
    if not callable(getattr(source, "multi_date", None)):
        raise ConfigError(
            f"method {method!r} needs a multi-date source (the same place at several dates: "
            f"--data landsat, timeseries, seco or ssl4eo-s12); data source "
            f"{getattr(source, 'name', source)!r} has no dates")
    kw = {}
    if data_cfg.get("max_cloud") is not None:
        kw["max_cloud"] = float(data_cfg["max_cloud"])
    return source.multi_date(n_dates, int(data_cfg["crop_size"]),
                             int(data_cfg["crops_per_epoch"]), **kw)


def _check_dates(x: torch.Tensor, n: int, method: str) -> None:
    if x.ndim != 5 or x.shape[1] < n:
        raise DataError(f"{method}: batches must be multi-date images (N, T>={n}, C, H, W), got "
                        f"{tuple(x.shape)}; train on a multi-date source")


class SeasonalViews(nn.Module):
    """SeCo's two operations on normalised (N, C, H, W) batches, any band count.

    ``crop``: random resized crop (scale 0.2-1), applied to every view. ``augment``: per-band
    brightness/contrast jitter (p 0.8; the multispectral stand-in for colour jitter),
    band-mean grayscale (p 0.2), Gaussian blur (p 0.5), horizontal flip. Jitter and
    grayscale are eossl.views' band-agnostic versions; crop, blur and flip are kornia's.
    """

    def __init__(self, size: int, scale: tuple[float, float] = (0.2, 1.0),
                 jitter_p: float = 0.8, brightness: float = 0.4, contrast: float = 0.4,
                 gray_p: float = 0.2, blur_p: float = 0.5,
                 blur_sigma: tuple[float, float] = (0.1, 2.0), flip_p: float = 0.5) -> None:
        super().__init__()
        if not isinstance(size, int) or size < 1:
            raise ConfigError(f"seco views: size must be a positive integer, got {size!r}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ConfigError(f"seco views: crop scale must satisfy 0 < min <= max <= 1, got "
                              f"{scale}")
        self.crop = K.RandomResizedCrop((size, size), scale=tuple(scale))
        self.augment = nn.Sequential(
            BandJitter(brightness, contrast, p=jitter_p),
            BandGrayscale(p=gray_p),
            K.RandomGaussianBlur(_blur_kernel(size), sigma=tuple(blur_sigma), p=blur_p),
            K.RandomHorizontalFlip(p=flip_p),
        )

    def forward(self, t0: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor):
        """(q, k0, k1, k2) = crop(t0), crop(augment(t1)), crop(t2), crop(augment(t0))."""
        return (self.crop(t0), self.crop(self.augment(t1)), self.crop(t2),
                self.crop(self.augment(t0)))


def seco_logits(queries: list[torch.Tensor], keys: list[list[torch.Tensor]],
                queues: list[torch.Tensor], temperature: float,
                batch_keys: list[list[torch.Tensor]] | None = None) -> list[torch.Tensor]:
    """The three subspaces' InfoNCE logits; the positive is column 0 of each.

    ``queries[i]``: (N, D) L2-normalised h_i(q). ``keys[i][j]``: (N, D) L2-normalised key
    projection h'_i(k_j) of this rank. ``queues[i]``: (K, D) earlier positive keys of subspace
    i. ``batch_keys`` (default ``keys``): the same projections gathered from every rank, the
    in-batch negatives. Subspace 0: [pos | queue] (N x (1 + K)). Subspace i in {1, 2}:
    [pos | queue | h'_i(k_j) for the batch, j != i] (N x (1 + K + 2N)).
    """
    batch_keys = keys if batch_keys is None else batch_keys
    out = []
    for i, q in enumerate(queries):
        pos = (q * keys[i][i]).sum(dim=1, keepdim=True)
        parts = [pos, q @ queues[i].T]
        if i > 0:
            others = torch.cat([batch_keys[i][j] for j in range(3) if j != i])
            parts.append(q @ others.T)
        out.append(torch.cat(parts, dim=1) / temperature)
    return out


@register_method("seco")
class SeasonalContrast(PretextMethod):
    """SeCo: query crop(t0) against three keys in three subspaces, one queue each; loss is the
    sum of the three InfoNCE losses. Paper defaults: queue 16384, EMA momentum 0.999 (fixed),
    temperature 0.07, heads Linear(d, d)-ReLU-Linear(d, 128).

    ``ema_schedule="cosine"`` instead raises the momentum from ``ema_momentum`` to 1 over the
    budget (eossl's BYOL-style schedule, useful for short runs). ``bn_splits``: keys run as
    shuffled BatchNorm groups, queries as ordered ones (MoCo's shuffle-BN on one device, see
    methods/moco.py).
    """

    n_dates = 3

    def __init__(self, bands: list[str], stats: dict, *, queue_size: int = 16384,
                 temperature: float = 0.07, ema_momentum: float = 0.999,
                 ema_schedule: str = "constant", proj_dim: int = 128,
                 proj_hidden_dim: int | None = None, bn_splits: int = 4,
                 gather_distributed: bool = True, views: dict | None = None,
                 **kwargs) -> None:
        super().__init__(bands, stats, **kwargs)
        if (queue_size < 1 or not 0 <= ema_momentum <= 1 or temperature <= 0 or bn_splits < 1
                or proj_dim < 1):
            raise ConfigError(f"seco: need queue_size >= 1, 0 <= ema_momentum <= 1, "
                              f"temperature > 0, bn_splits >= 1, proj_dim >= 1; got "
                              f"{queue_size}, {ema_momentum}, {temperature}, {bn_splits}, "
                              f"{proj_dim}")
        if ema_schedule not in EMA_SCHEDULES:
            raise ConfigError(f"seco: ema_schedule {ema_schedule!r}; expected one of "
                              f"{', '.join(EMA_SCHEDULES)}")
        d = self.backbone.out_dim
        self.heads = nn.ModuleList(moco_projection_head(d, proj_hidden_dim, proj_dim)
                                   for _ in range(3))
        convert_split_batchnorm(self.backbone)  # before the copy: the key encoder splits too
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.heads_momentum = copy.deepcopy(self.heads)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.heads_momentum)
        # One FIFO queue of L2-normalised positive keys per subspace. gather_distributed: all
        # ranks' keys are enqueued, so k processes keep the queue of one with the global batch.
        self.queues = nn.ModuleList(
            MemoryBankModule((queue_size, proj_dim), gather_distributed=gather_distributed,
                             feature_dim_first=False) for _ in range(3))
        self.views = SeasonalViews(self.hparams.crop_size, **(views or {}))

    @classmethod
    def train_dataset(cls, source, data_cfg: dict):
        return _multi_date_dataset(cls.method_name, cls.n_dates, source, data_cfg)

    def current_ema_momentum(self) -> float:
        if self.hparams.ema_schedule == "cosine":
            return self.cosine_momentum(self.hparams.ema_momentum)
        return float(self.hparams.ema_momentum)

    def on_train_start(self) -> None:
        super().on_train_start()
        trainer = self._trainer
        n = trainer.world_size if trainer is not None else 1
        loader = getattr(trainer, "train_dataloader", None) if trainer is not None else None
        bs = getattr(loader, "batch_size", None)
        if bs and self.hparams.queue_size % (bs * n):
            rank_zero_warn(f"seco: queue_size {self.hparams.queue_size} is not a multiple of the "
                           f"global batch {bs * n}; the keys that do not fit at the end of the "
                           "ring are dropped each lap (lightly's MemoryBankModule)")

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        if self.hparams.gather_distributed and self._trainer is not None \
                and self.trainer.world_size > 1:
            return concat_all_gather(t.contiguous())
        return t

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        raw = batch["image"]
        _check_dates(raw, self.n_dates, self.method_name)
        x = self.normalizer(raw)  # broadcasts over (N, T, C, H, W)
        q, k0, k1, k2 = self.views(x[:, 0], x[:, 1], x[:, 2])
        m = self.current_ema_momentum()
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.heads, self.heads_momentum, m)
        n = len(q)
        with torch.no_grad():
            fk = split_bn_forward(self.backbone_momentum, torch.cat([k0, k1, k2]),
                                  self.hparams.bn_splits, shuffle=True)
            keys = [[F.normalize(z, dim=1) for z in head(fk).split(n)]
                    for head in self.heads_momentum]
            batch_keys = [[self._gather(k) for k in row] for row in keys]
        fq = split_bn_forward(self.backbone, q, self.hparams.bn_splits, shuffle=False)
        queries = [F.normalize(head(fq), dim=1) for head in self.heads]
        # The queue read happens before this batch's positives are enqueued (update=True
        # returns the bank as it was). Keys enter the float32 queue as float32.
        banks = [bank(keys[i][i].float(), update=True)[1] for i, bank in enumerate(self.queues)]
        target = torch.zeros(n, dtype=torch.long, device=q.device)

        def infonce(queries, keys, banks, batch_keys):
            logits = seco_logits(queries, keys, banks, self.hparams.temperature, batch_keys)
            return [F.cross_entropy(lg, target) for lg in logits]

        # float32, outside autocast: logits / temperature (0.07) against float32 queues
        losses = float32_loss(infonce, queries, keys, banks, batch_keys)
        loss = sum(losses)
        self.log("train/loss", loss, prog_bar=True)
        for i, li in enumerate(losses):
            self.log(f"train/loss_z{i}", li)
        self.log("train/ema_momentum", m)
        self.log_collapse(queries[0])
        return loss


@register_method("moco-tp")
class MoCoTemporal(MoCoV2):
    """MoCo v2 with temporal positives (SeCo's baseline): query and key are MoCo v2
    augmentations of the same place at two different dates, so the seasonal change is
    something the representation must ignore. Everything else is MoCoV2."""

    n_dates = 2

    @classmethod
    def train_dataset(cls, source, data_cfg: dict):
        return _multi_date_dataset(cls.method_name, cls.n_dates, source, data_cfg)

    def make_views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_dates(x, self.n_dates, self.method_name)
        return self.views(x[:, 0]), self.views(x[:, 1])


__all__ = ["SeasonalContrast", "MoCoTemporal", "SeasonalViews", "seco_logits"]
