"""Frozen features of an encoder, the feature layer a probe reads, the hand-crafted spectral
baseline, and the one standardisation every probe applies before fitting.

Layers: ``last`` (the pooled last stage, what ``Encoder.forward`` gives), ``multiscale`` (the
pooled features of every stage, concatenated: early stages keep the per-pixel spectral detail
that deep stages of a briefly trained encoder may have lost), ``stageK`` (one stage), and
``cv`` (chosen per fit by cross-validation inside the training split, never on test).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from torch.utils.data import DataLoader

from ..errors import ConfigError, DataError

LAYERS = ("last", "multiscale", "cv")


def layer_title(name: str) -> str:
    """How a report names a feature layer."""
    return {"last": "last stage", "multiscale": "multi-scale", "cv": "layer by CV"}.get(
        name, name.replace("stage", "stage "))


# ------------------------------------------------------------------------------ extraction
@dataclass
class StageFeatures:
    """Pooled features of every stage of an encoder (finest first) for one data set."""

    stages: list[np.ndarray]   # (N, C_i) each
    labels: np.ndarray

    def layer(self, name: str) -> np.ndarray:
        """The (N, D) features of layer ``name``: last, multiscale or stageK."""
        if name == "last":
            return self.stages[-1]
        if name == "multiscale":
            return np.concatenate(self.stages, axis=1)
        if name.startswith("stage") and name[5:].isdigit() and int(name[5:]) < len(self.stages):
            return self.stages[int(name[5:])]
        raise ConfigError(f"unknown feature layer {name!r}; expected last, multiscale, cv or "
                          f"stage0..stage{len(self.stages) - 1}")

    def candidates(self) -> list[str]:
        """The layers cross-validation chooses from."""
        return ["last", "multiscale"] + [f"stage{i}" for i in range(len(self.stages) - 1)]


def _batches(data, batch_size: int):
    if isinstance(data, DataLoader):
        return data
    return DataLoader(data, batch_size=batch_size, shuffle=False)


def frozen_features(encoder, data, batch_size: int = 64,
                    device: str | torch.device = "cpu") -> StageFeatures:
    """Embed every sample of ``data`` (dicts with RAW "image" and "label") with the frozen
    encoder: the global average of every stage's map. The encoder's mode and device are
    restored afterwards."""
    was_training = encoder.training
    old = next(encoder.parameters()).device
    encoder.eval().to(device)
    stages: list[list[np.ndarray]] | None = None
    labels = []
    try:
        with torch.inference_mode():
            for i, batch in enumerate(_batches(data, batch_size)):
                if not isinstance(batch, dict) or "image" not in batch or "label" not in batch:
                    raise DataError(f"batch {i} is not a dict with 'image' and 'label'")
                image = torch.as_tensor(batch["image"])
                if image.ndim != 4:
                    raise DataError(f"batch {i}: image has shape {tuple(image.shape)}; "
                                    "expected (N, C, H, W)")
                maps = encoder.stage_features(image.to(device).float())
                pooled = [f.float().mean((2, 3)).cpu().numpy() for f in maps]
                stages = [[p] for p in pooled] if stages is None else [
                    s + [p] for s, p in zip(stages, pooled)]
                labels.append(torch.as_tensor(batch["label"]).cpu().numpy())
    finally:
        encoder.train(was_training).to(old)
    if stages is None:
        raise DataError("the dataset is empty; no features were extracted")
    out = StageFeatures([np.concatenate(s).astype(np.float32) for s in stages],
                        np.concatenate(labels))
    bad = ~np.isfinite(out.stages[-1]).all(axis=1)
    if bad.any():
        raise DataError(f"the encoder produced non-finite embeddings for {int(bad.sum())} of "
                        f"{len(bad)} images (first at index {int(np.argmax(bad))}); NaN/inf "
                        "pixels (nodata) in the input are the usual cause")
    return out


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


# ------------------------------------------------------------------------------ scaling
class FeatureScaler(BaseEstimator, TransformerMixin):
    """Standardisation that survives near-constant features: every probe's first step.

    Plain standardisation divides by each feature's training std. A ReLU channel that fired
    on 1 of 764 training patches has a std of ~3e-8 there, and the same channel at an ordinary
    value on a test patch becomes ~6e5 standard deviations: a linear head then predicts ~20 for
    a target in [0, 1] (a class-share R^2 of -12783). So, fitted on the training set only:

    - features active (different from their median) on fewer than ``min_active`` training
      samples (2% of them, at least 2 and at most 5) are dropped: a weight learnt from one or
      two samples is noise;
    - each std is floored at ``std_floor`` x the median std of the kept features, so no
      feature is stretched more than 1/std_floor times as much as a typical one;
    - standardised values are clipped to +-``clip``, the range beyond which a linear head
      would extrapolate from nothing it saw.
    """

    def __init__(self, std_floor: float = 0.01, clip: float = 10.0,
                 min_active: int | None = None) -> None:
        self.std_floor = std_floor
        self.clip = clip
        self.min_active = min_active

    def fit(self, X, y=None) -> "FeatureScaler":
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or len(X) == 0:
            raise DataError(f"features must be a non-empty (N, D) array, got shape {X.shape}")
        n = len(X)
        need = self.min_active if self.min_active is not None else min(5, max(2, math.ceil(
            0.02 * n)))
        need = min(need, n)
        median = np.median(X, axis=0)
        tol = 1e-6 * (np.abs(median) + 1e-12)
        active = (np.abs(X - median) > tol).sum(axis=0)
        keep = active >= need
        if not keep.any():  # nothing varies: keep everything rather than nothing
            keep = np.ones(X.shape[1], dtype=bool)
        mean, std = X.mean(axis=0), X.std(axis=0)
        typical = float(np.median(std[keep])) if keep.any() else 1.0
        floor = self.std_floor * typical if typical > 0 else 1.0
        self.keep_ = keep
        self.mean_ = mean[keep]
        self.scale_ = np.maximum(std[keep], max(floor, 1e-12))
        self.n_dropped_ = int((~keep).sum())
        return self

    def transform(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)[:, self.keep_]
        return np.clip((X - self.mean_) / self.scale_, -self.clip, self.clip).astype(np.float32)


# ------------------------------------------------------------------------------ layer by CV
def check_layers(layers, allow_cv: bool = True) -> tuple[str, ...]:
    """The layer names of a setting, checked: last, multiscale, stageK (and cv where a probe
    can choose per fit)."""
    layers = tuple(layers)
    allowed = "last, multiscale, stageK" + (", cv" if allow_cv else "")
    for name in layers:
        ok = name in ("last", "multiscale") or (name == "cv" and allow_cv) or (
            name.startswith("stage") and name[5:].isdigit())
        if not ok:
            raise ConfigError(f"feature layer {name!r}: expected one of {allowed}")
    if not layers:
        raise ConfigError(f"give at least one feature layer ({allowed})")
    return layers


def choose_layer(features: StageFeatures, y: np.ndarray, fit_predict, score, seed: int = 0,
                 folds: int = 3) -> str:
    """The layer whose probe scores best by ``folds``-fold cross-validation on the training
    samples (``features``, ``y``) alone; ``fit_predict(X_tr, y_tr, X_va) -> predictions``,
    ``score(y_va, predictions) -> higher is better``. Too few samples to split: ``last``."""
    from sklearn.model_selection import KFold, StratifiedKFold

    y = np.asarray(y)
    if len(y) < 3 * folds:
        return "last"
    if y.ndim == 1 and np.issubdtype(y.dtype, np.integer) and np.bincount(y).max() >= folds:
        split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    else:
        split = KFold(folds, shuffle=True, random_state=seed)
    best, best_score = "last", -np.inf
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        parts = list(split.split(np.zeros(len(y)), y if y.ndim == 1 else None))
    for name in features.candidates():
        X = features.layer(name)
        s = float(np.mean([score(y[va], fit_predict(X[tr], y[tr], X[va])) for tr, va in parts]))
        if s > best_score + 1e-12:
            best, best_score = name, s
    return best
