"""Frozen-feature probes (linear and kNN) over label fractions, and their result tables.

The standard way to compare pretrained encoders (methods.md, "Evaluation protocols"): extract
features once with the backbone frozen, then fit cheap classifiers on 1%, 10% and 100% of the
labels over several seeds. The hand-crafted spectral baseline goes through the same probes.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, DataError
from .metrics import classification_metrics

__all__ = [
    "ProbeResult", "extract_features", "spectral_features", "subsample_fraction",
    "linear_probe", "knn_predict", "knn_probe", "results_to_records",
]


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


# --------------------------------------------------------------------------------------------
# Features


def _device_of(module: nn.Module) -> torch.device | None:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return None


def _batches(data, batch_size: int):
    """A DataLoader is used as is; a Dataset or sequence of sample dicts is batched in order."""
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    return data  # any other iterable is taken to yield batches already


def extract_features(encoder: nn.Module, dataset_or_loader, batch_size: int = 256,
                     device: str | torch.device = "cpu",
                     progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Embed every sample with the frozen encoder: returns float32 (N, D) features and labels.

    Items/batches are torchgeo-style dicts with "image" (raw values, C x H x W) and "label";
    (image, label) tuples are accepted too. The encoder's train/eval mode and device are
    restored afterwards, so this is safe to call in the middle of training.
    """
    was_training = encoder.training
    old_device = _device_of(encoder)
    device = torch.device(device)
    batches = _batches(dataset_or_loader, batch_size)
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(batches, desc="extracting features", unit="batch")
    feats: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    encoder.eval()
    try:
        encoder.to(device)
        with torch.inference_mode():
            for i, batch in enumerate(batches):
                if isinstance(batch, Mapping):
                    missing = [key for key in ("image", "label") if key not in batch]
                    if missing:
                        raise DataError(f"batch {i} has no {missing} key(s); found "
                                        f"{sorted(batch)}; expected 'image' and 'label'")
                    image, label = batch["image"], batch["label"]
                elif isinstance(batch, (tuple, list)) and len(batch) == 2:
                    image, label = batch
                else:
                    raise DataError(f"batch {i} is a {type(batch).__name__}; expected a dict "
                                    "with 'image' and 'label' (or an (image, label) pair)")
                image = torch.as_tensor(image)
                if image.ndim != 4:
                    raise DataError(f"batch {i}: image has shape {tuple(image.shape)}; expected "
                                    "(N, C, H, W)")
                out = encoder(image.to(device))
                if out.ndim != 2:
                    raise DataError(f"encoder returned shape {tuple(out.shape)}; expected "
                                    "(N, D) embeddings")
                feats.append(out.float().cpu().numpy())
                labels.append(torch.as_tensor(label).cpu().numpy())
    finally:
        encoder.train(was_training)
        if old_device is not None and old_device != device:
            encoder.to(old_device)
    if not feats:
        raise DataError("the dataset is empty; no features were extracted")
    X = np.concatenate(feats).astype(np.float32, copy=False)
    y = np.concatenate(labels)
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise DataError(f"the encoder produced non-finite embeddings for {int(bad.sum())} of "
                        f"{len(X)} images (first at index {int(np.argmax(bad))}); NaN/inf pixels "
                        "(nodata) in the input are the usual cause")
    return X, y


def spectral_features(images, log: Sequence[bool] | None = None,
                      chunk: int = 512) -> np.ndarray:
    """The hand-crafted spectral baseline: per-band mean and std of each patch, (N, 2C).

    Columns are ``[mean_0..mean_{C-1}, std_0..std_{C-1}]`` of log1p(reflectance) (negative
    values clamped to 0, as the Normalizer does); bands with ``log[c] = False`` (SAR dB, see
    ``default_log_flags``) stay linear. NaN pixels (nodata) are ignored; std is population std.
    Computed in float64 chunks of ``chunk`` images so large corpora do not blow memory.
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.ndim != 4:
        raise DataError(f"images must have shape (N, C, H, W), got {images.shape}")
    n, c = images.shape[:2]
    flags = np.ones(c, dtype=bool) if log is None else np.asarray(log, dtype=bool)
    if flags.shape != (c,):
        raise ConfigError(f"log has {flags.size} flags for {c} bands; expected one per band")
    out = np.empty((n, 2 * c), dtype=np.float32)
    for start in range(0, n, max(1, chunk)):
        x = images[start:start + chunk].astype(np.float64).reshape(-1, c, images.shape[2]
                                                                    * images.shape[3])
        x = np.where(flags[None, :, None], np.log1p(np.clip(x, 0, None)), x)
        with warnings.catch_warnings():
            # an all-nodata band yields NaN here; the probes then say which set holds it
            warnings.simplefilter("ignore", RuntimeWarning)
            out[start:start + chunk, :c] = np.nanmean(x, axis=2)
            out[start:start + chunk, c:] = np.nanstd(x, axis=2)
    return out


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
# Probes


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


def _run_probe(kind, fit_predict, train_X, train_y, test_y, fractions, seeds, class_names):
    results: list[ProbeResult] = []
    for fraction in fractions:
        full_fit: ProbeResult | None = None
        for seed in seeds:
            idx = subsample_fraction(train_y, fraction, seed)
            present = np.unique(train_y[idx])
            if len(present) < 2:
                results.append(ProbeResult(
                    kind, float(fraction), int(seed), len(idx), skipped=True,
                    reason=f"the {fraction:g} subsample holds a single class "
                           f"({class_names[int(present[0])]}); a classifier needs two"))
                continue
            if full_fit is not None:
                # fraction 1.0 uses every label whatever the seed and both probes are
                # deterministic, so refitting would only repeat the same numbers
                results.append(ProbeResult(kind, float(fraction), int(seed), full_fit.n_train,
                                           full_fit.metrics))
                continue
            pred = fit_predict(train_X[idx], train_y[idx], seed)
            res = ProbeResult(kind, float(fraction), int(seed), len(idx),
                              classification_metrics(test_y, pred, class_names))
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


def linear_probe(train_X, train_y, test_X, test_y, *, fractions: Sequence[float] = (0.01, 0.1, 1.0),
                 seeds: Sequence[int] = (0,), class_names: Sequence[str],
                 C: float | str = "cv", max_iter: int = 2000) -> list[ProbeResult]:
    """Logistic-regression probe on standardised frozen features, per (fraction, seed).

    Standardising first puts encoders whose feature scales differ by orders of magnitude on
    one footing. ``C="cv"`` picks the regularisation from ``C_GRID`` by 3-fold cross-validation
    on the probe's own training subsample (never the test block), because the right strength
    differs between a 26-feature spectral baseline and a 512-feature encoder; subsamples too
    small to split fall back to C = 1.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if C != "cv" and (not isinstance(C, (int, float)) or C <= 0):
        raise ConfigError(f"C (inverse regularisation strength) must be > 0 or 'cv', got {C!r}")
    train_X, train_y, test_X, test_y = _check_pair(train_X, train_y, test_X, test_y,
                                                   class_names, fractions, seeds)

    def fit_predict(X, y, seed):
        clf = make_pipeline(StandardScaler(),
                            LogisticRegression(C=1.0 if C == "cv" else C, solver="lbfgs",
                                               max_iter=max_iter, random_state=seed))
        if C == "cv" and len(y) >= MIN_FOR_CV:
            folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
            clf = GridSearchCV(clf, {"logisticregression__C": list(C_GRID)}, cv=folds,
                               scoring="accuracy")
        with warnings.catch_warnings():
            # rare classes with fewer members than folds are expected at small fractions
            warnings.filterwarnings("ignore", message=".*least populated class.*")
            warnings.filterwarnings("ignore", category=UserWarning)
            with single_blas_thread():
                clf.fit(X, y)
        return clf.predict(test_X)

    return _run_probe("linear", fit_predict, train_X, train_y, test_y, fractions, seeds,
                      list(class_names))


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
              class_names: Sequence[str], device: str | torch.device = "cpu") -> list[ProbeResult]:
    """kNN probe (k = 20, cosine, temperature-weighted votes) per (fraction, seed).

    Needs no fitting, so it is the cheap check of whether features cluster by class.
    """
    train_X, train_y, test_X, test_y = _check_pair(train_X, train_y, test_X, test_y,
                                                   class_names, fractions, seeds)
    num_classes = len(class_names)
    query = torch.as_tensor(test_X, dtype=torch.float32, device=device)

    def fit_predict(X, y, seed):
        bank = torch.as_tensor(X, dtype=torch.float32, device=device)
        return knn_predict(bank, torch.as_tensor(y), query, k=k, num_classes=num_classes,
                           temperature=temperature).cpu().numpy()

    return _run_probe("knn", fit_predict, train_X, train_y, test_y, fractions, seeds,
                      list(class_names))


# --------------------------------------------------------------------------------------------
# Tables


def results_to_records(rows: Mapping[str, Sequence[ProbeResult]]) -> list[dict]:
    """Flat records (one per fit) for JSON/CSV; metrics are None for skipped fits."""
    records = []
    for model, results in rows.items():
        for r in results:
            rec = {"model": model, "kind": r.kind, "fraction": r.fraction, "seed": r.seed,
                   "n_train": r.n_train}
            for m in ("accuracy", "balanced_accuracy", "macro_f1"):
                rec[m] = None if r.skipped else r.metrics.get(m)
            per_class = r.metrics.get("per_class") or {}
            rec["per_class_f1"] = None if r.skipped or not per_class else {
                name: round(float(v["f1"]), 4) for name, v in per_class.items()}
            rec["skipped"] = r.skipped
            rec["reason"] = r.reason
            records.append(rec)
    return records
