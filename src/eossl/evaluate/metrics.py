"""Classification metrics shared by every probe, so all tables report the same numbers.

Thin wrappers over scikit-learn that tolerate the small, unbalanced evaluation sets of remote
sensing (a class missing from the test split or never predicted must not crash a benchmark).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
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
