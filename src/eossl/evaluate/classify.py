"""Patch classification by fine-tuning: the encoder and a new linear head trained end to end
on the labelled training patches (the probes freeze the encoder; here the labels may change
it), scored on the test patches of every fold."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import torch

from .base import Context, Evaluation, register_evaluation
from .finetune import PatchNet, epochs_to_steps, fit, predict
from .metrics import classification_metrics
from .probe import CLASS_METRICS
from .results import min_per_class


@register_evaluation("finetune", position=20)
class FineTuneClassification(Evaluation):
    title = "Fine-tuned classifier"
    settings = dict(epochs=6, lr=1e-3, backbone_lr_scale=0.1, batch_size=32, patch_size=16,
                    balanced=False)
    quick = {"epochs": 2}
    description = ("The encoder and a new linear head trained end to end on all training "
                   "patches of {patch_size} px (AdamW, lr {lr} for the head and {backbone_lr_scale}"
                   " x that for a pretrained encoder, the whole network at lr for a random "
                   "twin, which has nothing to keep; warmup and cosine decay; about {epochs} "
                   "epochs of batch {batch_size}; flips and 90-degree rotations; "
                   "cross-entropy{balanced_text}); scored on the test patches.")

    def protocol(self) -> str:
        return self.description.format(**self.params(), balanced_text=(
            " weighted by inverse class frequency" if self.balanced else ""))

    def run(self, ctx: Context, encoders: Mapping, seed: int) -> list[dict]:
        folds = ctx.patch_folds(self.patch_size)
        out = []
        for fold in ctx.track(folds):
            tr, te = fold.train, fold.test
            k = len(tr.classes)
            for name, enc in encoders.items():
                enc = self.fed(name, copy.deepcopy(enc), tr.bands)
                net = PatchNet(enc, k)
                weights = None
                if self.balanced:
                    counts = np.bincount(np.asarray(tr.labels), minlength=k).astype(float)
                    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1)
                                 / (counts > 0).sum(), 0.0)
                    weights = torch.tensor(w, dtype=torch.float32)
                fit(net, tr, "cross_entropy",
                    steps=epochs_to_steps(self.epochs, len(tr), self.batch_size),
                    batch_size=self.batch_size, lr=self.lr, class_weights=weights, seed=seed,
                    backbone_lr_scale=1.0 if enc.is_random_twin else self.backbone_lr_scale,
                    accelerator=_accelerator(ctx))
                logits, batches = predict(net, te)
                pred = torch.cat(logits).argmax(1).numpy()
                scores = classification_metrics(np.asarray(te.labels), pred, list(tr.classes))
                out += self.rec(self.tables[0], name, seed, fold.index, "100% labels", 1.0,
                                scores, CLASS_METRICS, n_train=len(tr), n_test=len(te),
                                min_per_class=min_per_class(tr.labels))
        return out


def _accelerator(ctx: Context) -> str:
    return "cpu" if str(ctx.device) == "cpu" else "auto"
