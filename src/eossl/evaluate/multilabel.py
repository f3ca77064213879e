"""Multi-label downstream (BigEarthNet style): linear probe and fine-tuning with micro / macro
mAP and F1 / F2 at a 0.5 threshold.

Encoders pretrained on the Sentinel-2 L1C scene take 13 bands; BigEarthNet v2 is L2A with 12
(no B10, the cirrus band, which L2A processing drops). Bands are matched by NAME
(``Encoder.for_bands``); a band the encoder needs but the data lack is fed as the constant that
the encoder's normaliser maps to 0 (its training mean), i.e. "no information", and every result
says which bands were filled.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DataError

THRESHOLD = 0.5


# --------------------------------------------------------------------------------------------
# Metrics


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
                       threshold: float = THRESHOLD) -> dict:
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


def linear_multilabel_probe(train_X, train_Y, test_X, *, seed: int = 0, weight_decay: float = 1e-3,
                            steps: int = 300, lr: float = 0.05) -> np.ndarray:
    """One logistic regression per class on standardised frozen features, fitted jointly
    (a linear layer + BCE, full batch, Adam). Returns test probabilities (N, K).

    Written with torch rather than sklearn's OneVsRest: on tiny samples many classes have no
    positive (or no negative) training example, which sklearn's per-class fits refuse or
    special-case; a shared BCE fit just drives those logits to the empty side.
    """
    X = torch.as_tensor(np.asarray(train_X), dtype=torch.float32)
    Xt = torch.as_tensor(np.asarray(test_X), dtype=torch.float32)
    Y = torch.as_tensor(np.asarray(train_Y), dtype=torch.float32)
    if X.ndim != 2 or Xt.ndim != 2 or X.shape[1] != Xt.shape[1] or len(X) != len(Y):
        raise DataError(f"train features {tuple(X.shape)}, labels {tuple(Y.shape)} and test "
                        f"features {tuple(Xt.shape)} do not fit together")
    mu, sd = X.mean(0), X.std(0).clamp_min(1e-6) if len(X) > 1 else torch.ones(X.shape[1])
    X, Xt = (X - mu) / sd, (Xt - mu) / sd
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
    return np.stack([np.asarray(ds[i]["label"]) for i in range(len(ds))])


def compare_multilabel(train, test, encoders: Mapping[str, nn.Module], *,
                       class_names: Sequence[str], seeds: Sequence[int] = (0, 1, 2),
                       spectral: bool = True, finetune: bool = True, epochs: int = 20,
                       lr: float = 1e-3, batch_size: int = 8) -> list[dict]:
    """Records (model, head, seed, metrics) for the spectral baseline, each encoder's linear
    probe and each encoder fine-tuned. ``encoders`` must take the data's bands
    (``Encoder.for_bands``)."""
    from ..normalization import default_log_flags
    from .probe import extract_features, spectral_features
    from .regress import finetune_head

    if not seeds:
        raise ConfigError("give at least one seed")
    y_tr, y_te = _labels(train), _labels(test)
    records = []

    def add(model, head, seed, scores):
        m = multilabel_metrics(y_te, scores, class_names)
        records.append({"model": model, "head": head, "seed": seed, "n_train": len(y_tr),
                        "n_test": len(y_te), **{k: v for k, v in m.items()
                                                if k != "per_class"}})

    if spectral:
        from .compare import SPECTRAL

        bands = list(getattr(train, "band_names", None) or getattr(train.datasets[0],
                                                                    "band_names"))
        imgs = lambda ds: np.stack([np.asarray(ds[i]["image"]) for i in range(len(ds))])  # noqa
        f_tr = spectral_features(imgs(train), default_log_flags(bands))
        f_te = spectral_features(imgs(test), default_log_flags(bands))
        for seed in seeds:
            add(SPECTRAL, "linear", int(seed), linear_multilabel_probe(f_tr, y_tr, f_te,
                                                                      seed=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for name, enc in encoders.items():
            x_tr, _ = extract_features(enc, train, batch_size=16)
            x_te, _ = extract_features(enc, test, batch_size=16)
            for seed in seeds:
                add(name, "linear", int(seed), linear_multilabel_probe(x_tr, y_tr, x_te,
                                                                      seed=seed))
            if finetune:
                for seed in seeds:
                    probs, _ = finetune_head(enc, train, test, epochs=epochs, lr=lr,
                                             batch_size=batch_size, seed=seed, loss="bce")
                    add(name, "finetune", int(seed), probs)
    return records


METRICS = ("micro_map", "macro_map", "micro_f1", "macro_f1", "micro_f2", "macro_f2")


def multilabel_table(records: Sequence[dict]) -> str:
    """Markdown: one row per (model, head), each metric as mean ± std over seeds."""
    if not records:
        return "_no multi-label results_\n"
    groups: dict[tuple, list] = {}
    for r in records:
        groups.setdefault((r["model"], r["head"]), []).append(r)
    lines = ["| model | head | seeds | " + " | ".join(m.replace("_", " ") for m in METRICS)
             + " |", "|---" * (3 + len(METRICS)) + "|"]
    for (model, head), rs in groups.items():
        cells = []
        for m in METRICS:
            v = [r[m] for r in rs if r[m] is not None]
            cells.append("–" if not v else f"{np.mean(v):.3f}"
                         + (f" ± {np.std(v, ddof=1):.3f}" if len(v) > 1 else ""))
        lines.append(f"| {model} | {head} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
