"""Probe several encoders on one labelled split, beside the two reference rows.

Every comparison eossl prints carries the same two references (methods.md): the hand-crafted
spectral baseline (per-band mean and std of log reflectance) and a randomly initialised copy of
the same backbone. A pretrained encoder is only worth something if it beats both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..models.encoder import RANDOM_TWIN, Encoder
from .probe import extract_features, knn_probe, linear_probe, results_to_records, spectral_features

SPECTRAL = "spectral baseline"
RANDOM = RANDOM_TWIN


def compare(train, test, encoders: Mapping[str, Encoder], *, class_names: Sequence[str],
            fractions: Sequence[float] = (0.01, 0.1, 1.0), seeds: Sequence[int] = (0, 1, 2),
            spectral: bool = True, knn: bool = True, device: str = "cpu",
            log_flags: Sequence[bool] | None = None) -> list[dict]:
    """Linear (and kNN) probe records for the spectral baseline and each encoder.

    ``train``/``test`` are labelled datasets yielding {"image", "label"}; the split between them
    must already be spatial. Returns flat records (model, kind, fraction, seed, metrics...).
    """
    rows = {}
    y_tr, y_te = np.asarray(train.labels), np.asarray(test.labels)
    if spectral:
        f_tr = spectral_features(train.images(), log=log_flags)
        f_te = spectral_features(test.images(), log=log_flags)
        rows[SPECTRAL] = linear_probe(f_tr, y_tr, f_te, y_te, fractions=fractions, seeds=seeds,
                                      class_names=class_names)
    knn_rows = {}
    for name, enc in encoders.items():
        x_tr, _ = extract_features(enc, train, device=device)
        x_te, _ = extract_features(enc, test, device=device)
        rows[name] = linear_probe(x_tr, y_tr, x_te, y_te, fractions=fractions, seeds=seeds,
                                  class_names=class_names)
        if knn:
            knn_rows[name] = knn_probe(x_tr, y_tr, x_te, y_te, fractions=fractions,
                                       seeds=seeds, class_names=class_names)
    records = results_to_records(rows)
    records += results_to_records(knn_rows)
    return records


def probe_checkpoints(source, checkpoints: Mapping[str, str], *, patch_size: int = 16,
                      fractions: Sequence[float] = (0.01, 0.1, 1.0),
                      seeds: Sequence[int] = (0, 1, 2), random_init: bool = True) -> list[dict]:
    """Load encoders from checkpoints and probe them on the source's spatial patch split.

    The random-init row is the first encoder's random twin: it differs in its weights only.
    """
    from ..checkpoint import load_encoder

    train, test = source.patches("train", patch_size), source.patches("test", patch_size)
    encoders = {name: load_encoder(path) for name, path in checkpoints.items()}
    if random_init and encoders:
        encoders = {RANDOM: next(iter(encoders.values())).random_twin(0), **encoders}
    encoders = {name: enc.for_bands(train.bands) for name, enc in encoders.items()}
    return compare(train, test, encoders, class_names=train.classes, fractions=fractions,
                   seeds=seeds)
