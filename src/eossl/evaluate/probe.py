"""Frozen-feature probes (linear and kNN) over label fractions: the standard way to compare
pretrained encoders (the usual SSL evaluation protocol).

Features are extracted once with the encoder frozen (evaluate/features.py), standardised with
:class:`~eossl.evaluate.features.FeatureScaler`, then cheap classifiers are fitted on 1%, 10%
and 100% of the labels. The hand-crafted spectral baseline goes through the same probes.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..normalization import default_log_flags
from . import results as R
from .base import Context, Evaluation, register_evaluation
from .features import (FeatureScaler, choose_layer, frozen_features, layer_title,
                       spectral_features)
from .metrics import classification_metrics

__all__ = ["ProbeResult", "subsample_fraction", "linear_probe", "knn_predict", "knn_probe",
           "PatchProbe", "CLASS_METRICS", "single_blas_thread"]

CLASS_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


@dataclass
class ProbeResult:
    """One probe fit: which probe, on which label fraction and seed, and how it scored."""

    kind: str                  # "linear" or "knn"
    fraction: float
    seed: int
    n_train: int               # labelled examples the probe actually saw
    metrics: dict = field(default_factory=dict)   # classification_metrics(); empty if skipped
    skipped: bool = False
    reason: str = ""
    min_per_class: int | None = None   # fewest training examples of a class in the fit
    layer: str | None = None           # the layer cross-validation chose, if it chose


# --------------------------------------------------------------------------------------------
# Label fractions


def subsample_fraction(y, fraction: float, seed: int) -> np.ndarray:
    """Seeded, stratified indices of ``fraction`` of the labelled set, without replacement.

    Per-class quotas follow largest-remainder rounding of ``fraction * n_class`` so the total is
    ``round(fraction * N)``, then every class present keeps at least one example (1% of a rare
    class would otherwise vanish). ``fraction = 1.0`` returns every index. Sorted output.
    """
    try:
        fraction = float(fraction)
    except (TypeError, ValueError):
        raise ConfigError(f"fraction must be a number in (0, 1], got {fraction!r}") from None
    if not (0.0 < fraction <= 1.0):
        raise ConfigError(f"fraction must be in (0, 1] (e.g. 0.01 for 1% of the labels), "
                          f"got {fraction}")
    y = np.asarray(y)
    n = len(y)
    if n == 0:
        raise DataError("cannot subsample an empty label array")
    if fraction == 1.0:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if y.ndim != 1:
        # multi-label targets: no single class to stratify by, so plain random sampling
        m = max(1, round(fraction * n))
        return np.sort(rng.choice(n, size=m, replace=False))
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    quota = fraction * counts
    take = np.floor(quota).astype(np.int64)
    leftover = int(round(fraction * n)) - int(take.sum())
    if leftover > 0:
        # stable sort so ties go to the earlier class, deterministically
        order = np.argsort(-(quota - take), kind="stable")
        take[order[:leftover]] += 1
    take = np.clip(take, 1, counts)
    picked = [rng.choice(np.flatnonzero(inverse == ci), size=int(take[ci]), replace=False)
              for ci in range(len(classes))]
    return np.sort(np.concatenate(picked))


# --------------------------------------------------------------------------------------------
# Probes on feature arrays


def _check_set(X, y, set_name: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2:
        raise DataError(f"{set_name}_X must be a 2-D (N, D) feature array, got shape {X.shape}")
    if y.ndim != 1:
        raise DataError(f"{set_name}_y must be 1-D class indices, got shape {y.shape} "
                        "(multi-label targets need a multi-label probe)")
    if len(X) != len(y):
        raise DataError(f"{set_name}_X and {set_name}_y have different lengths "
                        f"({len(X)} vs {len(y)})")
    if len(X) == 0:
        raise DataError(f"{set_name}_X is empty")
    if not np.issubdtype(X.dtype, np.number):
        raise DataError(f"{set_name}_X must be numeric, got dtype {X.dtype}")
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise DataError(f"{set_name}_X has NaN/inf in {int(bad.sum())} of {len(X)} rows (first "
                        f"at row {int(np.argmax(bad))}); drop or fill those samples first")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise DataError(f"{set_name}_y must hold integer class indices, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= num_classes:
        raise DataError(f"{set_name}_y holds class indices in [{y.min()}, {y.max()}] but there "
                        f"are {num_classes} class_names; expected indices in [0, {num_classes})")
    return X, y.astype(np.int64)


def _check_pair(train_X, train_y, test_X, test_y, class_names, fractions, seeds):
    if class_names is None or len(class_names) == 0:
        raise ConfigError("class_names is required: one name per class index")
    k = len(class_names)
    train_X, train_y = _check_set(train_X, train_y, "train", k)
    test_X, test_y = _check_set(test_X, test_y, "test", k)
    if train_X.shape[1] != test_X.shape[1]:
        raise DataError(f"train_X has {train_X.shape[1]} features but test_X has "
                        f"{test_X.shape[1]}; were they extracted with the same encoder?")
    if len(fractions) == 0 or len(seeds) == 0:
        raise ConfigError("fractions and seeds must each hold at least one value")
    for f in fractions:
        subsample_fraction(train_y[:1], f, 0)  # validates the fraction up front
    return train_X, train_y, test_X, test_y


def _run_probe(kind, fit_predict, train_y, test_y, fractions, seeds, class_names):
    results: list[ProbeResult] = []
    for fraction in fractions:
        full_fit: ProbeResult | None = None
        for seed in seeds:
            idx = subsample_fraction(train_y, fraction, seed)
            present = np.unique(train_y[idx])
            few = R.min_per_class(train_y[idx])
            if len(present) < 2:
                results.append(ProbeResult(
                    kind, float(fraction), int(seed), len(idx), skipped=True,
                    reason=f"the {fraction:g} subsample holds a single class "
                           f"({class_names[int(present[0])]}); a classifier needs two",
                    min_per_class=few))
                continue
            if full_fit is not None:
                # fraction 1.0 uses every label whatever the seed and both probes are
                # deterministic, so refitting would only repeat the same numbers
                results.append(ProbeResult(kind, float(fraction), int(seed), full_fit.n_train,
                                           full_fit.metrics, min_per_class=few,
                                           layer=full_fit.layer))
                continue
            pred, layer = fit_predict(idx, seed)
            res = ProbeResult(kind, float(fraction), int(seed), len(idx),
                              classification_metrics(test_y, pred, class_names),
                              min_per_class=few, layer=layer)
            if float(fraction) == 1.0:
                full_fit = res
            results.append(res)
    return results


C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
MIN_FOR_CV = 15  # fewer labelled examples than this cannot be split three ways usefully


def single_blas_thread():
    """A context with scikit-learn's BLAS pool limited to one thread.

    Probes alternate torch (OpenMP threads that spin for a while after each op) with
    scikit-learn (OpenBLAS threads); with both pools on the same few cores a logistic
    regression on 254 x 512 features took 16.6 s instead of 0.25 s on a 2-core machine. The
    fits here are small, so one BLAS thread loses nothing.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


@contextlib.contextmanager
def _quiet_fit():
    """One BLAS thread, and silence for the warnings a probe's fits expect: rare classes with
    fewer members than the inner folds at small fractions, lbfgs stopping at max_iter."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        warnings.filterwarnings("ignore", category=UserWarning)
        with single_blas_thread():
            yield


def _c_path_accuracy(X, y, train, val, seed: int, max_iter: int) -> list[float]:
    """Validation accuracy at each C of ``C_GRID`` (ascending) on one inner fold, the scaler
    fitted on that fold's training part only.

    Written by hand rather than with GridSearchCV because GridSearchCV clones the estimator for
    every C, so each fit starts from zero; here each C starts from the previous, more
    regularised solution (warm start), which takes about 1.4x less time for the same choice
    (measured on the benchmark's probe fits; the chosen C agrees on all but ~0.1% of test
    predictions). LogisticRegressionCV warm-starts too but cannot standardise inside each fold.
    """
    from sklearn.linear_model import LogisticRegression

    scaler = FeatureScaler().fit(X[train])
    a, b = scaler.transform(X[train]), scaler.transform(X[val])
    clf = LogisticRegression(solver="lbfgs", max_iter=max_iter, random_state=seed,
                             warm_start=True)
    scores = []
    for c in sorted(C_GRID):
        clf.set_params(C=c)
        clf.fit(a, y[train])
        scores.append(float(np.mean(clf.predict(b) == y[val])))
    return scores


def choose_C(X, y, seed: int, max_iter: int = 2000) -> float:
    """The C of ``C_GRID`` with the best mean accuracy over a stratified 3-fold split of the
    training set (never the test set); C = 1 where the set is too small to split."""
    from sklearn.model_selection import StratifiedKFold

    if len(y) < MIN_FOR_CV:
        return 1.0
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    with _quiet_fit():
        scores = [_c_path_accuracy(X, y, tr, va, seed, max_iter)
                  for tr, va in folds.split(X, y)]
    return sorted(C_GRID)[int(np.argmax(np.mean(scores, axis=0)))]


def _fit_logistic(X, y, Xt, C, seed, max_iter=2000) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    if C == "cv":
        C = choose_C(X, y, seed, max_iter)
    clf = make_pipeline(FeatureScaler(), LogisticRegression(
        C=C, solver="lbfgs", max_iter=max_iter, random_state=seed))
    with _quiet_fit():
        clf.fit(X, y)
    return clf.predict(Xt)


def _layered(train_X, test_X, train_y, fit, score, cv_fit) -> callable:
    """fit_predict(idx, seed) for one feature array, or for a StageFeatures pair whose layer
    is chosen by cross-validation on each training subsample."""
    from .features import StageFeatures

    if not isinstance(train_X, StageFeatures):
        return lambda idx, seed: (fit(train_X[idx], train_y[idx], test_X, seed), None)

    def fit_predict(idx, seed):
        sub = StageFeatures([s[idx] for s in train_X.stages], train_y[idx])
        layer = choose_layer(sub, train_y[idx], lambda a, b, c: cv_fit(a, b, c, seed), score,
                             seed=seed)
        return fit(train_X.layer(layer)[idx], train_y[idx], test_X.layer(layer), seed), layer

    return fit_predict


def _arrays(X):
    from .features import StageFeatures

    return X.layer("last") if isinstance(X, StageFeatures) else X


def linear_probe(train_X, train_y, test_X, test_y, *, fractions: Sequence[float] = (0.01, 0.1, 1.0),
                 seeds: Sequence[int] = (0,), class_names: Sequence[str],
                 C: float | str = "cv", max_iter: int = 2000) -> list[ProbeResult]:
    """Logistic-regression probe on standardised frozen features, per (fraction, seed).

    Standardising first (FeatureScaler) puts encoders whose feature scales differ by orders of
    magnitude on one footing. ``C="cv"`` picks the regularisation from ``C_GRID`` by 3-fold
    cross-validation on the probe's own training subsample (never the test block); subsamples
    too small to split fall back to C = 1. ``train_X`` / ``test_X`` may be
    :class:`~eossl.evaluate.features.StageFeatures`: the layer is then chosen per fit by
    cross-validation inside the training subsample (ProbeResult.layer says which).
    """
    if C != "cv" and (not isinstance(C, (int, float)) or C <= 0):
        raise ConfigError(f"C (inverse regularisation strength) must be > 0 or 'cv', got {C!r}")
    _, train_y, _, test_y = _check_pair(_arrays(train_X), train_y, _arrays(test_X), test_y,
                                        class_names, fractions, seeds)
    fit = lambda X, y, Xt, seed: _fit_logistic(X, y, Xt, C, seed, max_iter)  # noqa: E731
    cv_fit = lambda X, y, Xt, seed: _fit_logistic(X, y, Xt, 1.0, seed, 500)  # noqa: E731
    score = lambda y, p: float(np.mean(y == p))  # noqa: E731
    fp = _layered(train_X, test_X, train_y, fit, score, cv_fit)
    return _run_probe("linear", fp, train_y, test_y, fractions, seeds, list(class_names))


def knn_predict(train_feats, train_labels, query_feats, k: int = 20,
                num_classes: int | None = None, temperature: float = 0.07,
                chunk_size: int = 1024):
    """Weighted kNN on cosine similarity (InstDisc): votes ``exp(sim / temperature)`` of the k
    nearest training features; returns predicted class indices for each query.

    Queries are processed in chunks, so memory is ``chunk x N_train`` rather than N x N; tensors
    in give a tensor out on the query's device (for an online probe on GPU), arrays give arrays.
    """
    as_numpy = not isinstance(query_feats, torch.Tensor)
    query = torch.as_tensor(np.asarray(query_feats) if as_numpy else query_feats).float()
    train = torch.as_tensor(train_feats).to(query.device).float()
    labels = torch.as_tensor(train_labels).to(query.device).long()
    if train.ndim != 2 or query.ndim != 2 or train.shape[1] != query.shape[1]:
        raise DataError(f"train_feats {tuple(train.shape)} and query_feats {tuple(query.shape)} "
                        "must be (N, D) arrays with the same D")
    if labels.shape != (len(train),):
        raise DataError(f"train_labels has shape {tuple(labels.shape)}; expected "
                        f"({len(train)},), one class index per training feature")
    if len(train) == 0:
        raise DataError("train_feats is empty; kNN needs at least one labelled feature")
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"train_labels must lie in [0, {num_classes}), got "
                        f"[{int(labels.min())}, {int(labels.max())}]")
    from lightly.utils.benchmarking import knn_predict as lightly_knn

    k = min(k, len(train))
    bank = F.normalize(train, dim=1).T.contiguous()
    # lightly's weighted vote (InstDisc) does the work; chunking keeps the similarity block
    # near 2**25 floats (128 MiB) whatever the bank size, which lightly leaves to the caller.
    step = max(1, min(chunk_size, 2 ** 25 // len(train)))
    preds = []
    for start in range(0, len(query), step):
        q = F.normalize(query[start:start + step], dim=1)
        preds.append(lightly_knn(q, bank, labels, num_classes, k, temperature)[:, 0])
    out = torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device=query.device)
    return out.cpu().numpy() if as_numpy else out


def knn_probe(train_X, train_y, test_X, test_y, *, k: int = 20, temperature: float = 0.07,
              fractions: Sequence[float] = (0.01, 0.1, 1.0), seeds: Sequence[int] = (0,),
              class_names: Sequence[str]) -> list[ProbeResult]:
    """kNN probe (k = 20, cosine, temperature-weighted votes) per (fraction, seed), on features
    standardised like the linear probe's (so no stage of a multi-scale feature dominates the
    cosine by its scale). Needs no fitting, so it is the cheap check of whether features
    cluster by class."""
    _, train_y, _, test_y = _check_pair(_arrays(train_X), train_y, _arrays(test_X), test_y,
                                        class_names, fractions, seeds)
    num_classes = len(class_names)

    def fit(X, y, Xt, seed):
        scaler = FeatureScaler().fit(X)
        return knn_predict(scaler.transform(X), y, scaler.transform(Xt), k=k,
                           num_classes=num_classes, temperature=temperature)

    score = lambda y, p: float(np.mean(y == p))  # noqa: E731
    fp = _layered(train_X, test_X, train_y, fit, score, fit)
    return _run_probe("knn", fp, train_y, test_y, fractions, seeds, list(class_names))


# --------------------------------------------------------------------------------------------
# The evaluation


@register_evaluation("probe", position=10)
class PatchProbe(Evaluation):
    """Linear and kNN probes of frozen features on labelled patches, at label fractions, with
    the last stage and the multi-scale features side by side."""

    title = "Patch classification probes"
    fraction_tables = True
    settings = dict(fractions=(0.01, 0.1, 1.0), layers=("last", "multiscale"), C="cv", knn_k=20,
                    patch_size=16)
    quick = {"fractions": (0.1, 1.0)}
    description = ("Frozen features of {patch_size} px patches (OSM majority class, >= 80%), "
                   "standardised on the training patches (features active on too few of them "
                   "dropped, a variance floor), at label fractions {fractions} (seeded, "
                   "stratified subsamples); logistic regression ({C_text}) and cosine kNN, "
                   "k = {knn_k}. Feature layer: {layers_text}. The spectral baseline: per-band "
                   "mean and std of log reflectance of each patch, same linear probe.")

    layer_cv = True

    def check(self) -> None:
        super().check()
        for f in self.fractions:
            subsample_fraction([0], f, 0)  # ConfigError for a fraction outside (0, 1]

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(f"{kind} ({layer_title(layer)})" for kind in ("Linear probe",
                                                                   f"kNN probe (k = {self.knn_k})")
                     for layer in self.layers)

    def protocol(self) -> str:
        p = {k: ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else v
             for k, v in self.params().items()}
        p["fractions"] = ", ".join(f"{f:.0%}" for f in self.fractions)
        p["C_text"] = "C by 3-fold CV on the training subsample" if self.C == "cv" else \
            f"C = {self.C:g}"
        p["layers_text"] = "; ".join({
            "last": "the last stage's pooled features (what the encoder outputs)",
            "multiscale": "multi-scale, the pooled features of every stage concatenated",
            "cv": "chosen per fit by 3-fold CV inside the training subsample among the last "
                  "stage, multi-scale and each earlier stage"}.get(x, f"the pooled {x}")
            for x in self.layers)
        return self.description.format(**p)

    def _folds(self, ctx: Context):
        return ctx.patch_folds(self.patch_size)

    def _records(self, name, results, table, seed, fold) -> list[dict]:
        out = []
        for r in results:
            extra = {"n_train": r.n_train, "min_per_class": r.min_per_class,
                     **({"layer": r.layer} if r.layer else {})}
            out += self.rec(table, name, seed, fold, f"{r.fraction:.0%} labels", r.fraction,
                            {} if r.skipped else r.metrics, CLASS_METRICS, **extra,
                            **({"skipped": r.reason} if r.skipped else {}))
        return out

    def baseline(self, ctx: Context, seed: int) -> list[dict]:
        out = []
        for fold in ctx.track(self._folds(ctx)):
            tr, te = fold.train, fold.test
            log = default_log_flags(tr.bands)
            f_tr, f_te = spectral_features(tr.images(), log), spectral_features(te.images(), log)
            res = linear_probe(f_tr, tr.labels, f_te, te.labels, fractions=self.fractions,
                               seeds=[seed], class_names=list(tr.classes), C=self.C)
            for layer in self.layers:
                out += self._records(R.SPECTRAL, res, f"Linear probe ({layer_title(layer)})",
                                     seed, fold.index)
        return out

    def run(self, ctx: Context, encoders: Mapping, seed: int) -> list[dict]:
        out = []
        for fold in ctx.track(self._folds(ctx)):
            tr, te = fold.train, fold.test
            for name, enc in encoders.items():
                enc = self.fed(name, enc, tr.bands)
                f_tr = frozen_features(enc, tr, device=ctx.device)
                f_te = frozen_features(enc, te, device=ctx.device)
                kw = dict(fractions=self.fractions, seeds=[seed], class_names=list(tr.classes))
                for layer in self.layers:
                    X_tr = f_tr if layer == "cv" else f_tr.layer(layer)
                    X_te = f_te if layer == "cv" else f_te.layer(layer)
                    title = layer_title(layer)
                    out += self._records(name, linear_probe(X_tr, f_tr.labels, X_te,
                                                            f_te.labels, C=self.C, **kw),
                                         f"Linear probe ({title})", seed, fold.index)
                    out += self._records(name, knn_probe(X_tr, f_tr.labels, X_te, f_te.labels,
                                                         k=self.knn_k, **kw),
                                         f"kNN probe (k = {self.knn_k}) ({title})", seed,
                                         fold.index)
                if seed == ctx.options.get("first_seed", seed) and fold.index == 0:
                    out.append(_embedding(self.name, name, seed, f_te.layer("last"),
                                          f_te.labels, tr.classes))
        return out


def _embedding(evaluation, name, seed, x_te, y_te, classes) -> dict:
    """2-D PCA of the test features, kept for the report's scatter plot."""
    from sklearn.decomposition import PCA

    xy = PCA(2, random_state=0).fit_transform(FeatureScaler().fit_transform(x_te))
    return {"evaluation": evaluation, "table": "_embedding", "model": name, "seed": int(seed),
            "fold": 0, "metric": "pca", "value": None, "column": "", "order": 0.0,
            "xy": np.round(xy, 4).tolist(), "labels": [int(v) for v in y_te],
            "classes": list(classes)}
