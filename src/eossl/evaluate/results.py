"""One record format for every evaluation, and the statistics a table cell and a finding rest on.

A record is one number::

    {"evaluation": "probe", "table": "Linear probe (last stage)", "model": "moco",
     "seed": 0, "fold": 0, "column": "10% labels", "order": 0.1,
     "metric": "accuracy", "value": 0.61, "n_train": 80, "min_per_class": 3}

``seed`` (the pretraining and evaluation seed) and ``fold`` (the spatial fold) make the unit a
cell is averaged over. Tables whose name starts with ``_`` are not tables: ``_model`` describes
a row (architecture and inputs, its random twin, the collapse monitor's verdict), ``_figure`` a
picture, ``_embedding`` the points of an embedding scatter plot.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

SPECTRAL = "spectral baseline"
FEW_LABELS = 5  # fewer labelled examples per class than this in a cell's training set: say so


def record(evaluation: str, table: str, model: str, seed: int, fold: int, column: str,
           order: float, metric: str, value, **extra) -> dict:
    value = None if value is None or not np.isfinite(value) else float(value)
    return {"evaluation": evaluation, "table": table, "model": model, "seed": int(seed),
            "fold": int(fold), "column": column, "order": float(order), "metric": metric,
            "value": value, **extra}


def records(evaluation: str, table: str, model: str, seed: int, fold: int, column: str,
            order: float, scores: dict, metrics: Iterable[str], **extra) -> list[dict]:
    """One record per metric of one (model, seed, fold, column) cell."""
    return [record(evaluation, table, model, seed, fold, column, order, m, scores.get(m),
                   **extra) for m in metrics]


def hidden(rec: dict) -> bool:
    return str(rec.get("table", "")).startswith("_")


def min_per_class(labels) -> int | None:
    """The smallest number of training examples of a class present (single-label only)."""
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) == 0 or not np.issubdtype(y.dtype, np.integer):
        return None
    counts = np.bincount(y)
    return int(counts[counts > 0].min())


# ------------------------------------------------------------------------------ statistics
def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float | None]:
    """Mean and the half-width of its Student-t confidence interval (None for one value)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), None
    if len(v) == 1:
        return float(v[0]), None
    from scipy import stats

    half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean()), float(half)


def paired_diffs(a: dict, b: dict) -> dict:
    """``a - b`` on the units both measured (keys such as (seed, fold); None skipped), in unit
    order: the per-unit differences every "ahead on k of n units" in eossl's tables counts."""
    return {u: a[u] - b[u] for u in sorted(a)
            if u in b and a[u] is not None and b[u] is not None}


def paired_t_p(diffs: Sequence[float]) -> float | None:
    """Two-sided p of a paired t-test on per-unit differences (None below two units or when
    every difference is the same: the test is undefined there)."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2 or np.allclose(d, d[0]):
        return None
    from scipy import stats

    return float(stats.ttest_1samp(d, 0.0).pvalue)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (None stays None)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    order = sorted(idx, key=lambda i: pvalues[i])
    out: list[float | None] = [None] * len(pvalues)
    running, m = 0.0, len(order)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out
