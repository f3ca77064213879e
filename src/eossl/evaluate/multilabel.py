"""Multi-label downstream (BigEarthNet style): linear probe and fine-tuning with micro / macro
mAP and F1 / F2 at a 0.5 threshold.

The data are BigEarthNet v2 patches (Sentinel-2 L2A, and Sentinel-1 VV, VH whenever an encoder
reads radar: RS-BYOL's pool does). Bands are matched by NAME (``Encoder.for_bands``): an encoder
pretrained on the L1C scene takes 13 bands, L2A has 12 (no B10, the cirrus band), and a band the
encoder needs but the data lack is fed as its training mean ("no information"); the protocol
says which bands were filled.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from ..bands import SENTINEL1
from ..errors import ConfigError, DataError, EosslError
from ..normalization import default_log_flags
from . import results as R
from .base import Context, Evaluation, register_evaluation
from .features import FeatureScaler, frozen_features, layer_title, spectral_features
from .finetune import PatchNet, epochs_to_steps, fit, predict
from .metrics import multilabel_metrics

METRICS = ("micro_map", "macro_map", "micro_f1", "macro_f1")


def linear_multilabel_probe(train_X, train_Y, test_X, *, seed: int = 0,
                            weight_decay: float = 1e-3, steps: int = 300,
                            lr: float = 0.05) -> np.ndarray:
    """One logistic regression per class on standardised frozen features (FeatureScaler),
    fitted jointly (a linear layer + BCE, full batch, Adam). Returns test probabilities (N, K).

    Written with torch rather than sklearn's OneVsRest: on tiny samples many classes have no
    positive (or no negative) training example, which sklearn's per-class fits refuse or
    special-case; a shared BCE fit just drives those logits to the empty side.
    """
    X, Xt = np.asarray(train_X), np.asarray(test_X)
    Y = torch.as_tensor(np.asarray(train_Y), dtype=torch.float32)
    if X.ndim != 2 or Xt.ndim != 2 or X.shape[1] != Xt.shape[1] or len(X) != len(Y):
        raise DataError(f"train features {X.shape}, labels {tuple(Y.shape)} and test "
                        f"features {Xt.shape} do not fit together")
    scaler = FeatureScaler().fit(X)
    X = torch.as_tensor(scaler.transform(X))
    Xt = torch.as_tensor(scaler.transform(Xt))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layer = nn.Linear(X.shape[1], Y.shape[1])
    opt = torch.optim.Adam(layer.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(layer(X), Y).backward()
        opt.step()
    with torch.no_grad():
        return torch.sigmoid(layer(Xt)).numpy()


def _labels(ds) -> np.ndarray:
    return np.asarray(ds.labels)


@register_evaluation("multilabel", position=60)
class MultiLabel(Evaluation):
    """BigEarthNet v2 multi-label linear probe (per layer) and fine-tuning."""

    title = "Multi-label (BigEarthNet v2)"
    shown_metrics = ("micro_map", "macro_map", "micro_f1")
    settings = dict(layers=("last", "multiscale"), epochs=3, lr=1e-3, backbone_lr_scale=0.1,
                    batch_size=8, finetune=True)
    default_data = "bigearthnet"
    quick = {"epochs": 1}
    description = ("Multi-label chips (by default the BigEarthNet v2 sample: S2 L2A, plus S1 "
                   "VV, VH for encoders that read radar; 19 classes; its own split: train and "
                   "validation train, test scores; 8 test patches, so a smoke test of the path, "
                   "not a ranking). Linear probe: one logistic regression per class on frozen "
                   "features standardised on the training patches, for the layers {layers}; "
                   "{finetuned}. "
                   "Spectral baseline: the same linear probe on per-band mean and std of the "
                   "optical bands. Micro mAP first.")

    def protocol(self) -> str:
        finetuned = ("fine-tuned: encoder + linear head, BCE, about {epochs} epochs of batch "
                     "{batch_size}, lr {lr} (a pretrained encoder at {backbone_lr_scale} x "
                     "lr)".format(**self.params()) if self.finetune else "no fine-tuning")
        return self.description.format(**{**self.params(), "layers": ", ".join(
            layer_title(x) for x in self.layers)}, finetuned=finetuned)

    def _folds(self, ctx: Context, sar: bool) -> list:
        """The folds of the data's split (BigEarthNet: its own, one fold), with Sentinel-1
        bands added when an encoder reads radar and the data offer them."""
        src = ctx.source
        if src.task != "multilabel":
            raise ConfigError(f"evaluate multilabel: the data ({src.name}) are not multi-label "
                              f"(task {src.task}); give BigEarthNet, a chip table with several "
                              "0/1 label columns, or torchgeo:BigEarthNet")
        if sar and not any(b in SENTINEL1.band_names for b in src.bands):
            try:
                src = ctx.open(sensor="sentinel2-l2a,sentinel1")
            except EosslError:  # these data have no radar: the encoder reads what there is
                pass
        return src.folds()

    def _score(self, name: str, seed: int, fold: int, column: str, order: float,
               y_test: np.ndarray, probs: np.ndarray, y_train: np.ndarray) -> list[dict]:
        """The records of one cell; ``min_per_class``: the fewest training positives of a
        class that has any (a cell trained on a handful says so)."""
        m = multilabel_metrics(y_test, probs)
        pos = np.asarray(y_train).sum(axis=0)
        return self.rec(self.tables[0], name, seed, fold, column, order, m, METRICS,
                        n_train=len(y_train), n_test=len(y_test),
                        classes_scored=m["classes_scored"],
                        min_per_class=int(pos[pos > 0].min()) if (pos > 0).any() else 0)

    def baseline(self, ctx: Context, seed: int) -> list[dict]:
        out = []
        for fold in ctx.track(self._folds(ctx, sar=False)):
            train, test = fold.train, fold.test
            flags = default_log_flags(test.bands)
            f_tr = spectral_features(train.images(), flags)
            f_te = spectral_features(test.images(), flags)
            y_tr, y_te = _labels(train), _labels(test)
            probs = linear_multilabel_probe(f_tr, y_tr, f_te, seed=seed)
            out += [r for i, layer in enumerate(self.layers) for r in self._score(
                R.SPECTRAL, seed, fold.index, f"linear, {layer_title(layer)}", i, y_te, probs,
                y_tr)]
        return out

    def run(self, ctx: Context, encoders: Mapping, seed: int) -> list[dict]:
        from .classify import _accelerator

        out = []
        for name, enc in encoders.items():
            sar = any(b in SENTINEL1.band_names for b in enc.wanted_bands)
            for fold in ctx.track(self._folds(ctx, sar)):
                train, test = fold.train, fold.test
                fed = self.fed(name, enc, test.bands)
                y_tr, y_te = _labels(train), _labels(test)
                f_tr = frozen_features(fed, train, batch_size=16, device=ctx.device)
                f_te = frozen_features(fed, test, batch_size=16, device=ctx.device)
                for i, layer in enumerate(self.layers):
                    probs = linear_multilabel_probe(f_tr.layer(layer), y_tr,
                                                    f_te.layer(layer), seed=seed)
                    out += self._score(name, seed, fold.index, f"linear, {layer_title(layer)}",
                                       i, y_te, probs, y_tr)
                if not self.finetune:
                    continue
                net = PatchNet(copy.deepcopy(fed), y_tr.shape[1])
                fit(net, train, "bce", steps=epochs_to_steps(self.epochs, len(y_tr),
                                                             self.batch_size),
                    batch_size=self.batch_size, lr=self.lr, seed=seed,
                    backbone_lr_scale=1.0 if enc.is_random_twin else self.backbone_lr_scale,
                    accelerator=_accelerator(ctx))
                logits, _ = predict(net, test, batch_size=16)
                out += self._score(name, seed, fold.index, "fine-tuned", len(self.layers),
                                   y_te, torch.sigmoid(torch.cat(logits)).numpy(), y_tr)
        return out
