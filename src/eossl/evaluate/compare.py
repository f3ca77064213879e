"""Probe several encoders on one labelled split, beside the two reference rows.

Every comparison eossl prints carries the same two references (methods.md): the hand-crafted
spectral baseline (per-band mean and std of log reflectance) and a randomly initialised copy of
the same backbone. A pretrained encoder is only worth something if it beats both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..bands import band_indices, equivalent_bands
from ..data.stats import BandStats, Normalizer
from ..models.backbones import build_backbone
from ..models.encoder import Encoder
from .probe import extract_features, knn_probe, linear_probe, results_to_records, spectral_features

SPECTRAL = "spectral baseline"
RANDOM = "random init"


def random_encoder(bands: Sequence[str], stats: BandStats | dict, backbone: str = "resnet18",
                   stem_stride: int = 2, seed: int = 0) -> Encoder:
    """The same architecture as a pretrained encoder, with seeded random weights."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        bb = build_backbone(backbone, in_chans=len(bands), stem_stride=stem_stride)
    return Encoder(bb, Normalizer(stats), name=RANDOM)


class BandAdapter(nn.Module):
    """An encoder fed from data that carries other bands: picks, by name, the bands the encoder
    was trained on (or their stand-ins on another sensor, see bands.equivalent_bands).

    Several methods train on a subset (colorization hides R, G, B) or another sensor (SeCo on
    Landsat); the probe data keep all their bands, so the adapter, not the data, adapts.
    """

    def __init__(self, encoder: nn.Module, data_bands: Sequence[str]) -> None:
        super().__init__()
        self.encoder = encoder
        self.data_bands = list(data_bands)
        self.used_bands = equivalent_bands(list(encoder.bands), self.data_bands)
        self.register_buffer("index", torch.as_tensor(band_indices(self.data_bands,
                                                                   self.used_bands)),
                             persistent=False)
        self.name = getattr(encoder, "name", "encoder")

    @property
    def bands(self) -> list[str]:
        return self.data_bands

    @property
    def out_dim(self) -> int:
        return self.encoder.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.index_select(1, self.index))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_features(x.index_select(1, self.index))


def fit_to_bands(encoder: nn.Module, data_bands: Sequence[str]) -> nn.Module:
    """The encoder itself when it takes exactly ``data_bands``; else a BandAdapter (BandError
    when a band the encoder needs has no counterpart in the data)."""
    if list(encoder.bands) == list(data_bands):
        return encoder
    if hasattr(encoder, "for_bands"):  # picks its own bands by name (rsbyol's BandwiseEncoder)
        return encoder.for_bands(data_bands)
    return BandAdapter(encoder, data_bands)


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

    The random-init row copies the architecture and normalisation of the first checkpoint so
    that it differs from the pretrained encoder in its weights only.
    """
    from ..methods.base import load_encoder

    train, test = source.patches("train", patch_size), source.patches("test", patch_size)
    encoders = {name: load_encoder(path) for name, path in checkpoints.items()}
    if random_init and encoders:
        first = next(iter(encoders.values()))
        stats = first.normalizer.stats
        if hasattr(first, "random_like"):  # same wrapper, random weights (rsbyol)
            enc = first.random_like(seed=0)
        elif list(first.bands) == list(train.bands):
            enc = random_encoder(train.bands, stats, first.backbone.name,
                                 getattr(first.backbone, "stem_stride", 2))
        else:  # the same architecture on the same inputs as the first encoder, random weights
            enc = fit_to_bands(random_encoder(first.bands, stats, first.backbone.name,
                                              getattr(first.backbone, "stem_stride", 2)),
                               train.bands)
        encoders = {RANDOM: enc, **encoders}
    encoders = {name: fit_to_bands(enc, train.bands) for name, enc in encoders.items()}
    return compare(train, test, encoders, class_names=train.classes, fractions=fractions,
                   seeds=seeds)
