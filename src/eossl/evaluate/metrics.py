"""The metrics of every evaluation, in one place, so all tables report the same numbers:
classification (accuracy, balanced accuracy, F1), multi-label (mAP, F1, F2), regression
(RMSE, R^2), segmentation (IoU) and change detection (precision, recall, F1 of change).

Thin wrappers over scikit-learn and torchmetrics that tolerate the small, unbalanced
evaluation sets of remote sensing (a class missing from the test split or never predicted must
not crash a benchmark).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from ..errors import DataError


def _as_labels(y, name: str, num_classes: int) -> np.ndarray:
    """Integer class indices in [0, num_classes), or a DataError naming ``name``."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise DataError(f"{name} must be a 1-D array of class indices, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) \
                and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise DataError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise DataError(f"{name} holds class index {int(arr.min() if arr.min() < 0 else arr.max())}"
                        f" outside [0, {num_classes}) for {num_classes} class names")
    return arr.astype(np.int64)


def classification_metrics(y_true, y_pred, class_names: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy, macro F1 and per-class scores for single-label predictions.

    ``y_true``/``y_pred`` are class indices into ``class_names``. Per-class entries cover every
    name (support 0 for absent classes); macro F1 averages over the classes present in either
    ``y_true`` or ``y_pred`` (scikit-learn's default), so a class absent from the test split does
    not drag the mean down while a spuriously predicted one still counts as F1 = 0.
    """
    names = [str(c) for c in class_names]
    if not names:
        raise DataError("class_names is empty; expected one name per class index")
    if len(set(names)) != len(names):
        raise DataError(f"class_names has duplicates: {names}")
    k = len(names)
    yt = _as_labels(y_true, "y_true", k)
    yp = _as_labels(y_pred, "y_pred", k)
    if len(yt) != len(yp):
        raise DataError(f"y_true and y_pred have different lengths ({len(yt)} vs {len(yp)})")
    if len(yt) == 0:
        raise DataError("y_true is empty; cannot score an empty evaluation set")

    labels = np.arange(k)
    prec, rec, f1, support = precision_recall_fscore_support(
        yt, yp, labels=labels, zero_division=0)
    present_true = np.unique(yt)
    present_any = np.union1d(yt, yp)
    # Same as sklearn's balanced_accuracy_score (mean recall over classes in y_true), computed
    # from the per-class recalls so it does not warn about classes only present in y_pred.
    balanced = float(rec[present_true].mean())
    macro_f1 = float(f1[present_any].mean())
    per_class = {
        name: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
               "support": int(support[i])}
        for i, name in enumerate(names)
    }
    return {
        "accuracy": float(accuracy_score(yt, yp)),
        "balanced_accuracy": balanced,
        "macro_f1": macro_f1,
        "per_class": per_class,
        # rows = true class, columns = predicted class, in class_names order
        "confusion_matrix": confusion_matrix(yt, yp, labels=labels).tolist(),
        "class_names": names,
    }


# --------------------------------------------------------------------------------------------
# Multi-label

MULTILABEL_THRESHOLD = 0.5


def _check(y_true, scores, class_names):
    yt = np.asarray(y_true)
    ys = np.asarray(scores, dtype=np.float64)
    if yt.ndim != 2 or yt.shape != ys.shape:
        raise DataError(f"y_true {yt.shape} and scores {ys.shape} must both be (N, classes)")
    if class_names is not None and yt.shape[1] != len(class_names):
        raise DataError(f"{yt.shape[1]} label columns but {len(class_names)} class names")
    if len(yt) == 0:
        raise DataError("cannot score an empty evaluation set")
    if not np.isin(yt, (0, 1)).all():
        raise DataError("y_true must be multi-hot (0/1) labels")
    if not np.isfinite(ys).all():
        raise DataError("scores hold NaN/inf")
    return yt.astype(np.int64), ys


def multilabel_metrics(y_true, scores, class_names: Sequence[str] | None = None,
                       threshold: float = MULTILABEL_THRESHOLD) -> dict:
    """Micro/macro average precision (mAP) from scores, micro/macro F1 and F2 at ``threshold``.

    - micro mAP: AP of all (patch, class) decisions pooled.
    - macro mAP: mean AP over classes with at least one positive in ``y_true`` (AP is
      undefined without positives; BigEarthNet test sets lack some classes).
    - micro F1/F2: from the pooled TP, FP, FN counts.
    - macro F1/F2: mean over classes present in ``y_true`` or predicted (a class never seen
      and never predicted carries no information; a spuriously predicted one counts as 0).
    Scores are probabilities (or any monotone score for AP; F at ``threshold`` needs
    probabilities).
    """
    from sklearn.metrics import average_precision_score

    yt, ys = _check(y_true, scores, class_names)
    names = list(class_names) if class_names is not None else [str(i) for i in
                                                                 range(yt.shape[1])]
    pred = ys >= threshold
    tp = (pred & (yt == 1)).sum(0).astype(float)
    fp = (pred & (yt == 0)).sum(0).astype(float)
    fn = (~pred & (yt == 1)).sum(0).astype(float)

    def fbeta(tp, fp, fn, beta):
        b2 = beta * beta
        den = (1 + b2) * tp + b2 * fn + fp
        return np.where(den > 0, (1 + b2) * tp / np.where(den > 0, den, 1), 0.0)

    pos = yt.sum(0) > 0
    used = pos | pred.any(0)
    ap = np.full(yt.shape[1], np.nan)
    for k in np.flatnonzero(pos):
        ap[k] = average_precision_score(yt[:, k], ys[:, k])
    out = {
        "micro_map": float(average_precision_score(yt.ravel(), ys.ravel()))
        if yt.any() else None,
        "macro_map": float(np.nanmean(ap)) if pos.any() else None,
        "micro_f1": float(fbeta(tp.sum(), fp.sum(), fn.sum(), 1.0)),
        "micro_f2": float(fbeta(tp.sum(), fp.sum(), fn.sum(), 2.0)),
        "macro_f1": float(fbeta(tp, fp, fn, 1.0)[used].mean()) if used.any() else 0.0,
        "macro_f2": float(fbeta(tp, fp, fn, 2.0)[used].mean()) if used.any() else 0.0,
        "classes_scored": int(pos.sum()),
        "per_class": {n: {"ap": None if np.isnan(a) else float(a), "f1": float(f),
                          "support": int(s)}
                      for n, a, f, s in zip(names, ap, fbeta(tp, fp, fn, 1.0), yt.sum(0))},
    }
    return out


# --------------------------------------------------------------------------------------------
# Heads


# --------------------------------------------------------------------------------------------
# Regression


def regression_metrics(y_true, y_pred, target_names: Sequence[str],
                       train_std: Sequence[float] | None = None,
                       min_variance_share: float = 0.05) -> dict:
    """RMSE and R^2 per target plus their means.

    R^2 divides by the test set's variance of a target, so it is left undefined (None, and
    out of the mean R^2) where that variance is zero, or, given the training set's
    ``train_std``, below ``min_variance_share`` of the training variance: a target the test
    area hardly holds (a class present in two test patches) would otherwise turn a small error
    into an R^2 of -30. ``r2_undefined`` names those targets.
    """
    from sklearn.metrics import mean_squared_error, r2_score

    yt, yp = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    if yt.ndim == 1:
        yt, yp = yt[:, None], yp[:, None]
    if yt.shape != yp.shape or yt.shape[1] != len(target_names):
        raise DataError(f"y_true {yt.shape} and y_pred {yp.shape} must both be (N, "
                        f"{len(target_names)})")
    if len(yt) == 0:
        raise DataError("cannot score an empty evaluation set")
    rmse = np.sqrt(mean_squared_error(yt, yp, multioutput="raw_values"))
    r2 = r2_score(yt, yp, multioutput="raw_values")
    var = yt.var(axis=0)
    undefined = var == 0
    if train_std is not None:
        undefined |= var < min_variance_share * np.asarray(train_std, np.float64) ** 2
    r2_list = [None if k else float(v) for v, k in zip(r2, undefined)]
    defined = [v for v in r2_list if v is not None]
    return {"rmse": {n: float(v) for n, v in zip(target_names, rmse)},
            "r2": dict(zip(map(str, target_names), r2_list)),
            "r2_undefined": [str(n) for n, k in zip(target_names, undefined) if k],
            "mean_rmse": float(rmse.mean()),
            "mean_r2": float(np.mean(defined)) if defined else None}


# --------------------------------------------------------------------------------------------
# Segmentation and change


def iou_scores(confusion: torch.Tensor, class_names: Sequence[str]) -> dict:
    """Per-class IoU and mIoU from a (K, K) confusion matrix (rows = truth).

    mIoU averages the classes present in the test truth: a class the test block does not hold
    has no defined IoU, and torchmetrics' JaccardIndex would count it as 0 or 1 depending on
    predictions, which rewards or punishes a model for something the data cannot show.
    """
    cm = torch.as_tensor(confusion).double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    support = cm.sum(1)
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    present = support > 0
    per_class = {n: (None if not present[i] else float(iou[i]))
                 for i, n in enumerate(class_names)}
    miou = float(iou[present].mean()) if present.any() else float("nan")
    acc = float(tp.sum() / cm.sum().clamp(min=1))
    return {"miou": miou, "pixel_accuracy": acc, "per_class_iou": per_class}


def change_metrics(prob: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5) -> dict:
    """Precision, recall and F1 of the change class over all pixels (mask 1 = change)."""
    from torchmetrics.functional.classification import (binary_f1_score, binary_precision,
                                                        binary_recall)

    p, m = prob.flatten(), mask.flatten().long()
    return {"precision": float(binary_precision(p, m, threshold)),
            "recall": float(binary_recall(p, m, threshold)),
            "f1": float(binary_f1_score(p, m, threshold)),
            "change_share": float(m.float().mean()) if len(m) else 0.0}
