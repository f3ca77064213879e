"""The evaluations a benchmark runs, as small adapters over eossl.evaluate.

Each evaluation says which pretraining runs it applies to (and why not, for the others),
computes the reference rows (random init, spectral baseline) once per seed, and turns one run's
checkpoint into flat records::

    {"table": "Linear probe", "model": "moco", "seed": 0, "column": "10%",
     "metric": "accuracy", "value": 0.61, "order": 0.1}

Records of one table share columns; the report shows mean and spread over seeds beside the
per-seed values. A new evaluation is one ``@register_evaluation`` class here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluate.compare import RANDOM, SPECTRAL

EVALUATIONS: dict[str, type["Evaluation"]] = {}


def register_evaluation(cls):
    EVALUATIONS[cls.name] = cls
    return cls


@dataclass
class RunInfo:
    """One finished pretraining run of the benchmark."""

    method: str
    seed: int
    run_dir: Path
    checkpoint: Path
    summary: dict = field(default_factory=dict)


class Context:
    """What evaluations share: the labelled data, opened once, and the plan's settings."""

    def __init__(self, plan, cache=None, quick: bool = False) -> None:
        self.plan, self.cache, self.quick = plan, cache, quick
        self._source = None
        self._patches: dict[str, Any] = {}

    @property
    def source(self):
        if self._source is None:
            from ..data.sources import brandenburg

            self._source = brandenburg(self.cache)
        return self._source

    def patches(self, split: str, size: int = 16):
        if (split, size) not in self._patches:
            self._patches[(split, size)] = self.source.patches(split, size)
        return self._patches[(split, size)]


class Evaluation:
    """Base class: name, title, the metrics shown, applicability and the two kinds of rows."""

    name = "evaluation"
    title = "Evaluation"
    shown_metrics: tuple[str, ...] = ()
    description = ""

    def applies(self, run: RunInfo) -> str | None:
        """None when this evaluation applies to ``run``; otherwise the reason it does not."""
        return None

    def references(self, ctx: Context, seed: int) -> dict[str, list[dict]]:
        """Reference rows for one seed: {model name: records}."""
        return {}

    def evaluate(self, ctx: Context, run: RunInfo) -> list[dict]:
        raise NotImplementedError


def _probe_records(results_by_model: dict, table_prefix: str, seed: int) -> dict[str, list[dict]]:
    from ..evaluate.probe import results_to_records

    out: dict[str, list[dict]] = {}
    for rec in results_to_records(results_by_model):
        kind = "Linear probe" if rec["kind"] == "linear" else "kNN probe (k = 20)"
        for metric in ("accuracy", "balanced_accuracy", "macro_f1"):
            out.setdefault(rec["model"], []).append({
                "table": f"{table_prefix}{kind}", "model": rec["model"], "seed": seed,
                "column": f"{rec['fraction']:.0%} labels", "order": rec["fraction"],
                "metric": metric, "value": rec[metric], "n_train": rec["n_train"],
                "skipped": rec["skipped"]})
    return out


@register_evaluation
class PatchProbe(Evaluation):
    """Linear and kNN probes of frozen features on the scene's spatial patch split, at the
    plan's label fractions (subsample seed = pretraining seed)."""

    name = "probe"
    title = "Patch classification probes"
    tables = ("Linear probe", "kNN probe (k = 20)")
    shown_metrics = ("accuracy", "balanced_accuracy")
    description = ("Frozen features of 16 px patches of the Brandenburg scene (OSM majority "
                   "class, >= 80%), west 60% train / east 40% test; logistic regression "
                   "(C by 3-fold CV) and cosine kNN, k = 20.")

    def _xy(self, ctx: Context, encoder):
        from ..evaluate.probe import extract_features

        tr, te = ctx.patches("train"), ctx.patches("test")
        x_tr, y_tr = extract_features(encoder, tr)
        x_te, y_te = extract_features(encoder, te)
        return x_tr, y_tr, x_te, y_te, tr.classes

    @staticmethod
    def _embedding(name, seed, x_te, y_te, classes) -> dict:
        """2-D PCA of the test features, kept for the report's scatter plot."""
        from sklearn.decomposition import PCA

        xy = PCA(2, random_state=0).fit_transform(x_te)
        return {"table": "_embedding", "model": name, "seed": seed, "metric": "pca",
                "value": None, "column": "", "xy": np.round(xy, 4).tolist(),
                "labels": [int(v) for v in y_te], "classes": list(classes)}

    def _probe(self, ctx, name, x_tr, y_tr, x_te, y_te, classes, seed, knn=True):
        from ..evaluate.probe import knn_probe, linear_probe

        kw = dict(fractions=ctx.plan.fractions, seeds=[seed], class_names=classes)
        rows = {name: linear_probe(x_tr, y_tr, x_te, y_te, **kw)}
        recs = _probe_records(rows, "", seed)
        if knn:
            k = _probe_records({name: knn_probe(x_tr, y_tr, x_te, y_te, **kw)}, "", seed)
            recs[name] += k[name]
        if seed == ctx.plan.seeds[0]:
            recs[name].append(self._embedding(name, seed, x_te, y_te, classes))
        return recs[name]

    def references(self, ctx: Context, seed: int) -> dict[str, list[dict]]:
        from ..evaluate.compare import random_encoder
        from ..evaluate.probe import spectral_features

        tr, te = ctx.patches("train"), ctx.patches("test")
        stats = ctx.source.stats()
        enc = random_encoder(tr.bands, stats, ctx.plan.backbone, seed=seed)
        out = {RANDOM: self._probe(ctx, RANDOM, *self._xy(ctx, enc), seed)}
        f_tr, f_te = (spectral_features(d.images()) for d in (tr, te))
        out[SPECTRAL] = self._probe(ctx, SPECTRAL, f_tr, np.asarray(tr.labels), f_te,
                                    np.asarray(te.labels), tr.classes, seed, knn=False)
        return out

    def evaluate(self, ctx: Context, run: RunInfo) -> list[dict]:
        from ..evaluate.compare import fit_to_bands
        from ..methods.base import load_encoder

        enc = fit_to_bands(load_encoder(run.checkpoint), ctx.patches("train").bands)
        return self._probe(ctx, run.method, *self._xy(ctx, enc), run.seed)


def available_evaluations() -> list[str]:
    return list(EVALUATIONS)
