"""What every pretext method shares: backbone + normaliser, optimiser and a budget-driven
schedule, an online kNN probe, a collapse monitor and self-describing checkpoints.

Subclasses only build their heads and losses and write ``training_step``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightly.utils.benchmarking import knn_predict
from lightning.pytorch.utilities import rank_zero_warn

from .. import __version__
from ..errors import ConfigError, DataError
from ..models.backbones import build_backbone
from ..models.encoder import Encoder
from ..normalization import BandStats, Normalizer

OPTIMIZERS = ("sgd", "adamw")
# The ResNet stem of every recipe for small patches (the -cpu recipes, dense, spectral: none
# sets model.stem_stride itself), the ONE place to change it. 2 = timm's stem without its
# max-pool: a 16 px probe patch keeps a 2x2 map at the last stage where timm's own stem
# (4) leaves 1x1. 4 = timm's standard stem: exports then load as-is in timm, torchgeo and
# terratorch (docs/export.md); with 2 they load through eossl's loaders only.
# benchmarks/stem_stride.py measures what the choice costs in probe accuracy.
DEFAULT_STEM_STRIDE = 2
# The collapse monitor's verdict: the mean per-dimension std of L2-normalised embeddings over
# the last COLLAPSE_WINDOW logged steps, as a share of a healthy spread (1/sqrt(D)), below
# COLLAPSE_RATIO. A MoCo run that collapsed on a small scene sat at 0.06 (std 0.0056 against
# 0.088, mean cosine 0.995); healthy runs stay near 1.
COLLAPSE_RATIO = 0.25
COLLAPSE_WINDOW = 50
COLLAPSE_MIN_STEPS = 10


class PretextMethod(L.LightningModule):
    """Base LightningModule. Batches are dicts ``{"image": RAW (N, C, H, W)}``; the step
    normalises on device. Validation loaders, if any, are [reference, query] for the kNN probe.
    """

    method_name = "pretext"  # set by @register_method

    def __init__(self, bands: list[str], stats: dict | BandStats, backbone: str = "resnet18",
                 stem_stride: int = DEFAULT_STEM_STRIDE, crop_size: int = 32,
                 optimizer: str = "sgd",
                 lr: float = 0.03, weight_decay: float = 1e-4, momentum: float = 0.9,
                 warmup_fraction: float = 0.05, max_steps: int | None = None,
                 max_time_s: float | None = None, knn_k: int = 20,
                 knn_temperature: float = 0.07, backbone_kwargs: dict | None = None) -> None:
        super().__init__()
        if isinstance(stats, dict):
            stats = BandStats.from_dict(stats)
        bands = list(bands)
        if list(stats.bands) != bands:
            stats = stats.subset(bands)  # statistics may cover more bands than we train on
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {optimizer!r}; expected one of: "
                              f"{', '.join(OPTIMIZERS)}")
        if not isinstance(crop_size, int) or crop_size < 1:
            raise ConfigError(f"crop_size must be a positive integer, got {crop_size!r}")
        if not 0 <= warmup_fraction < 1:
            raise ConfigError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
        if max_steps is not None and max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {max_steps}")
        if max_time_s is not None and max_time_s <= 0:
            raise ConfigError(f"max_time_s must be > 0, got {max_time_s}")
        self.save_hyperparameters()
        # Checkpoints are loaded with weights_only=True, so hyperparameters must be plain types.
        self.hparams.bands = bands
        self.hparams.stats = _plain(stats.to_dict())
        self.hparams.backbone_kwargs = dict(backbone_kwargs or {})

        self.normalizer = Normalizer(stats)
        self.backbone = build_backbone(backbone, in_chans=len(bands), stem_stride=stem_stride,
                                       **(backbone_kwargs or {}))
        self._elapsed_before = 0.0  # training seconds in earlier runs (restored on resume)
        self._fit_start: float | None = None
        self._elapsed_synced = 0.0  # same value on every rank, refreshed each batch
        self._knn: dict[int, tuple[list, list]] = {}
        self._collapse_window: list[torch.Tensor] = []  # (std ratio, mean cosine) per step
        self.resumed_from_step = 0  # set when Lightning restores a checkpoint (resume)

    # ---------------------------------------------------------------- data
    @classmethod
    def train_dataset(cls, source, data_cfg: dict):
        """The training dataset this method needs from a data source. Default: random crops
        (``{"image": (C, H, W)}`` samples). Methods that need time series or sensor pairs
        override this and raise ConfigError when the source cannot provide them."""
        return source.crops(int(data_cfg["crop_size"]), int(data_cfg["crops_per_epoch"]))

    # ---------------------------------------------------------------- encoder
    def encoder(self) -> Encoder:
        """The part downstream tasks keep (shares modules with this method, no copy)."""
        return Encoder(self.backbone, self.normalizer, name=self.method_name,
                       metadata=self.eossl_metadata())

    def picture(self, source, path, *, seed: int = 0, **options) -> str | None:
        """Draw what the pretext task learned, where a picture says more than a table (the
        colorization's colours, the dense method's pixel embeddings), into the PNG ``path``
        from data of ``source``; returns its caption, or None for a method that draws none."""
        return None

    # ---------------------------------------------------------------- budget
    def _budget_steps(self) -> int | None:
        if self.hparams.max_steps:
            return int(self.hparams.max_steps)
        trainer = self._trainer
        if trainer is None:
            return None
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        try:
            est = trainer.estimated_stepping_batches
        except Exception:  # no dataloader yet, or an iterable without length
            return None
        return int(est) if math.isfinite(est) and est > 0 else None

    def elapsed_s(self) -> float:
        """Training wall-clock seconds, including earlier runs of a resumed training."""
        now = time.monotonic() - self._fit_start if self._fit_start is not None else 0.0
        return self._elapsed_before + now

    def progress(self) -> float:
        """Fraction of the budget used, in [0, 1]: the larger of steps and wall-clock time, so a
        time budget also gets a complete warmup + cosine schedule."""
        parts = []
        steps = self._budget_steps()
        if steps:
            parts.append(self.global_step / steps)
        if self.hparams.max_time_s:
            parts.append(self._elapsed_synced / self.hparams.max_time_s)
        return min(1.0, max(parts)) if parts else 0.0

    def has_budget(self) -> bool:
        return bool(self._budget_steps() or self.hparams.max_time_s)

    def lr_factor(self) -> float:
        """Linear warmup then cosine to 0, as a function of progress()."""
        if not self.has_budget():
            return 1.0
        p, w = self.progress(), self.hparams.warmup_fraction
        if p < w:
            return p / w
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (p - w) / (1.0 - w))))

    def cosine_momentum(self, start: float) -> float:
        """EMA momentum rising from ``start`` to 1 by a cosine over progress() (BYOL's
        schedule); shared by every method with a momentum (target/key) network."""
        return 1.0 - (1.0 - start) * (math.cos(math.pi * self.progress()) + 1.0) / 2.0

    def on_train_start(self) -> None:
        self._fit_start = time.monotonic()
        if not self.has_budget():
            rank_zero_warn("no step or time budget (max_steps / max_time_s / Trainer max_steps "
                           "or max_epochs): the learning rate stays constant and momentum "
                           "schedules stay at their start value")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        elapsed = self.elapsed_s()
        if self.trainer.world_size > 1:
            # Ranks' clocks differ slightly; every rank must see the same progress, or LR and
            # EMA momentum (hence the weights) would drift apart under DDP.
            t = torch.tensor(elapsed, device=self.device, dtype=torch.float64)
            elapsed = float(self.trainer.strategy.reduce(t, reduce_op="max"))
        self._elapsed_synced = elapsed
        if self.hparams.max_time_s and elapsed >= self.hparams.max_time_s:
            self.trainer.should_stop = True  # the method owns its time budget
            return -1
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        self.log("train/progress", self.progress())
        return None

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]  # excludes EMA copies
        hp = self.hparams
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum,
                                  weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        # A plain closure (not a bound method) keeps the scheduler state_dict plain.
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: self.lr_factor())
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---------------------------------------------------------------- monitors
    @torch.no_grad()
    def log_collapse(self, z: torch.Tensor, prefix: str = "train") -> None:
        """Log the mean per-dimension std of L2-normalised embeddings (collapse -> 0, healthy
        ~ 1/sqrt(D), logged as the reference) and the mean pairwise cosine of the batch."""
        z = F.normalize(z.detach().float(), dim=1)
        n, d = z.shape
        if n < 2:
            return
        cos = z @ z.T
        mean_cos = (cos.sum() - cos.diagonal().sum()) / (n * (n - 1))
        std = z.std(dim=0).mean()
        self.log(f"{prefix}/embed_std", std)
        self.log(f"{prefix}/embed_std_ref", 1.0 / math.sqrt(d))
        self.log(f"{prefix}/embed_cos", mean_cos)
        if prefix == "train":  # kept on the device: no synchronisation per step
            self._collapse_window.append(torch.stack([std * math.sqrt(d), mean_cos]))
            del self._collapse_window[:-COLLAPSE_WINDOW]

    def collapse_status(self) -> dict:
        """The collapse monitor's verdict over the last logged training steps:
        ``{"collapsed": bool | None, "embed_std_ratio", "embed_cos", "steps"}``; ``collapsed``
        is None when too few steps were logged to judge."""
        window = self._collapse_window
        if len(window) < COLLAPSE_MIN_STEPS:
            return {"collapsed": None, "steps": len(window),
                    "reason": f"fewer than {COLLAPSE_MIN_STEPS} logged steps"}
        ratio, cos = (float(v) for v in torch.stack(window).float().mean(0))
        return {"collapsed": ratio < COLLAPSE_RATIO, "embed_std_ratio": round(ratio, 4),
                "embed_cos": round(cos, 4), "steps": len(window), "threshold": COLLAPSE_RATIO}

    def collapse_warning(self) -> str | None:
        """The warning a tripped collapse monitor gives (console and summary.json), or None."""
        status = self.collapse_status()
        if not status["collapsed"]:
            return None
        return (f"{self.method_name}: the embeddings COLLAPSED (collapse monitor: spread "
                f"{status['embed_std_ratio']:.2f} of a healthy one over the last "
                f"{status['steps']} steps, below {COLLAPSE_RATIO}; mean cosine "
                f"{status['embed_cos']:.3f}); evaluations of this encoder measure little more "
                "than its architecture. Try a lower learning rate, a larger batch or more data.")

    def on_fit_end(self) -> None:
        warning = self.collapse_warning()
        if warning:
            rank_zero_warn(warning)

    # ---------------------------------------------------------------- kNN probe
    def on_validation_epoch_start(self) -> None:
        self._knn = {}

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx > 1:
            raise DataError("kNN probe expects two validation loaders [reference, query], got "
                            f"a loader with index {dataloader_idx}")
        with torch.no_grad():
            f = F.normalize(self.backbone(self.normalizer(batch["image"])).float(), dim=1)
        feats, labels = self._knn.setdefault(dataloader_idx, ([], []))
        feats.append(f)
        labels.append(batch["label"])

    def on_validation_epoch_end(self) -> None:
        knn, self._knn = self._knn, {}
        if set(knn) != {0, 1}:
            rank_zero_warn("kNN probe skipped: give two validation loaders [reference, query]")
            return
        bank, bank_y = (self._gather(torch.cat(t)) for t in knn[0])
        query, query_y = (self._gather(torch.cat(t)) for t in knn[1])
        if bank_y.ndim != 1 or query_y.ndim != 1:
            rank_zero_warn("kNN probe skipped: labels must be class indices (N,), not "
                           f"{tuple(bank_y.shape)}")
            return
        bank_y, query_y = bank_y.long(), query_y.long()
        n_classes = int(max(bank_y.max(), query_y.max())) + 1
        k = min(self.hparams.knn_k, len(bank))
        correct = torch.zeros((), device=query.device)
        for q, y in zip(query.split(1024), query_y.split(1024)):  # bounds the (B, N) matrix
            pred = knn_predict(q, bank.T, bank_y, n_classes, k, self.hparams.knn_temperature)
            correct += (pred[:, 0] == y).sum()
        # Identical on every rank (gathered data); sync_dist only silences Lightning's warning.
        self.log("val/knn_acc", correct / len(query), prog_bar=True, sync_dist=True)

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        if self.trainer.world_size == 1:
            return t
        g = self.all_gather(t)  # (world, N, ...); DistributedSampler pads ranks to equal N
        return g.reshape(-1, *t.shape[1:])

    # ---------------------------------------------------------------- checkpoints
    def eossl_metadata(self) -> dict:
        hp = self.hparams
        return {
            "method": self.method_name,
            "bands": list(self.normalizer.bands),
            "stats": _plain(self.normalizer.stats.to_dict()),
            "backbone": hp.backbone,
            "stem_stride": hp.stem_stride,
            "backbone_kwargs": _plain(dict(hp.backbone_kwargs or {})),
            "crop_size": hp.crop_size,
            "eossl_version": __version__,
            "elapsed_s": self.elapsed_s(),
            "collapse": self.collapse_status(),
            # {"data", "labels", "sensor", "split", "excluded_test_areas"} (train.py sets it),
            # so an evaluation can tell whether pretraining saw its test areas
            "pretrain_data": _plain(getattr(self, "pretrain_data", None)),
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["eossl"] = self.eossl_metadata()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._elapsed_before = float(checkpoint.get("eossl", {}).get("elapsed_s", 0.0))
        self.resumed_from_step = int(checkpoint.get("global_step", 0))


def float32_loss(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with autocast off and every floating tensor in ``args`` (also
    inside lists and tuples) cast to float32; gradients flow through the casts.

    For the parts of a loss that mixed precision must not touch: InfoNCE logits are cosines
    divided by a temperature of 0.07-0.2, and bf16's 8-bit mantissa would round them by up to
    ~0.4 % before the softmax (and a queue of float32 keys would be read at bf16). The
    networks before it still run in bf16 under ``--precision bf16-mixed``; the loss is a
    sliver of the step's work.
    """
    device = _first_device(args)
    with torch.autocast(device.type if device is not None else "cpu", enabled=False):
        return fn(*(_float32(a) for a in args), **kwargs)


def _float32(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.float() if obj.is_floating_point() else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_float32(o) for o in obj)
    return obj


def _first_device(obj: Any) -> torch.device | None:
    if isinstance(obj, torch.Tensor):
        return obj.device
    if isinstance(obj, (list, tuple)):
        for o in obj:
            d = _first_device(o)
            if d is not None:
                return d
    return None


def _plain(obj: Any) -> Any:
    """Numpy scalars -> Python numbers, recursively, so weights_only loading accepts them."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and not isinstance(obj, torch.Tensor):
        return obj.item()
    return obj
