"""Probes, label fractions, feature extraction and result tables on tiny synthetic data."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from eossl.normalization import BandStats, Normalizer
from eossl.errors import ConfigError, DataError
from eossl.evaluate.probe import (
    ProbeResult, extract_features, knn_predict, knn_probe, linear_probe,
    results_to_records, spectral_features, subsample_fraction,
)
from eossl.models.encoder import Encoder


def blobs(n_per_class, n_classes, dim, sep, seed, noise_seed=None):
    """Gaussian blobs; the same ``seed`` gives the same centres, ``noise_seed`` new samples."""
    centres = np.random.default_rng(seed).normal(size=(n_classes, dim)) * sep
    y = np.repeat(np.arange(n_classes), n_per_class)
    rng = np.random.default_rng(seed if noise_seed is None else noise_seed)
    X = centres[y] + rng.normal(size=(len(y), dim))
    return X.astype(np.float32), y


# ---------------------------------------------------------------- subsample_fraction

def test_subsample_is_stratified_seeded_and_keeps_every_class():
    y = np.array([0] * 500 + [1] * 300 + [2] * 5)    # class 2 is rare
    idx = subsample_fraction(y, 0.1, seed=0)
    assert len(np.unique(idx)) == len(idx)          # without replacement
    counts = np.bincount(y[idx], minlength=3)
    assert counts[0] == 50 and counts[1] == 30
    assert counts[2] >= 1                            # 10% of 5 rounds away, but kept
    assert np.array_equal(idx, subsample_fraction(y, 0.1, seed=0))
    assert not np.array_equal(idx, subsample_fraction(y, 0.1, seed=1))
    tiny = subsample_fraction(y, 0.001, seed=3)      # below one per class -> one each
    assert sorted(y[tiny].tolist()) == [0, 1, 2]
    assert np.array_equal(subsample_fraction(y, 1.0, seed=5), np.arange(len(y)))


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan")])
def test_subsample_rejects_bad_fraction(bad):
    with pytest.raises(ConfigError, match="fraction"):
        subsample_fraction(np.arange(10), bad, 0)


# ---------------------------------------------------------------- probes

def test_linear_probe_separable_blobs_and_random_labels():
    X, y = blobs(100, 2, 8, sep=10, seed=0)
    Xt, yt = blobs(50, 2, 8, sep=10, seed=0, noise_seed=99)   # same centres, fresh samples
    res = linear_probe(X, y, Xt, yt, fractions=(0.1, 1.0), seeds=(0, 1), class_names=["a", "b"])
    assert [(r.kind, r.fraction, r.seed) for r in res] == [
        ("linear", 0.1, 0), ("linear", 0.1, 1), ("linear", 1.0, 0), ("linear", 1.0, 1)]
    assert [r.n_train for r in res] == [20, 20, 200, 200]
    assert all(r.metrics["accuracy"] == 1.0 for r in res)

    rng = np.random.default_rng(1)
    Xr, Xrt = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    yr, yrt = rng.integers(0, 4, 400), rng.integers(0, 4, 400)
    (r,) = linear_probe(Xr, yr, Xrt, yrt, fractions=(1.0,), class_names=list("abcd"))
    assert 0.15 < r.metrics["accuracy"] < 0.35     # chance is 0.25


def test_knn_probe_separable_and_random():
    X, y = blobs(60, 3, 16, sep=5, seed=2)
    Xt, yt = blobs(30, 3, 16, sep=5, seed=2, noise_seed=7)
    res = knn_probe(X, y, Xt, yt, k=5, fractions=(0.1, 1.0), class_names=list("abc"))
    assert [r.kind for r in res] == ["knn", "knn"]
    assert all(r.metrics["accuracy"] == 1.0 for r in res)

    rng = np.random.default_rng(3)
    Xr, Xrt = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    yr, yrt = rng.integers(0, 4, 400), rng.integers(0, 4, 400)
    (r,) = knn_probe(Xr, yr, Xrt, yrt, fractions=(1.0,), class_names=list("abcd"))
    assert 0.15 < r.metrics["accuracy"] < 0.35


def test_knn_predict_weighted_votes_chunks_and_tensors():
    train = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 2])
    query = np.array([[2, 0.1], [0.1, 3], [-5, 0]], dtype=np.float32)
    expected = [0, 1, 2]
    # k=1: the nearest neighbour decides; chunk_size=1 exercises the chunked loop
    assert knn_predict(train, labels, query, k=1, num_classes=3, chunk_size=1).tolist() == expected
    out = knn_predict(torch.tensor(train), torch.tensor(labels), torch.tensor(query), k=1)
    assert isinstance(out, torch.Tensor) and out.tolist() == expected
    # k larger than the bank: clipped, and the temperature weighting lets the two close
    # class-0 neighbours beat the three others
    assert knn_predict(train, labels, query[:1], k=50, num_classes=3).tolist() == [0]


def test_single_class_subsample_is_skipped_with_reason():
    X = np.random.default_rng(0).normal(size=(10, 3))
    res = linear_probe(X, np.zeros(10, int), X, np.zeros(10, int), fractions=(0.5,),
                       class_names=["a", "b"])
    assert res[0].skipped and "single class" in res[0].reason and res[0].metrics == {}


def test_probe_input_errors_name_the_set():
    X = np.zeros((4, 2))
    y = np.array([0, 1, 0, 1])
    with pytest.raises(DataError, match="train_X and train_y"):
        linear_probe(X, y[:3], X, y, class_names=["a", "b"])
    bad = X.copy()
    bad[2, 1] = np.nan
    with pytest.raises(DataError, match="test_X has NaN"):
        knn_probe(X, y, bad, y, class_names=["a", "b"])
    with pytest.raises(DataError, match="train_y"):
        linear_probe(X, y + 5, X, y, class_names=["a", "b"])
    with pytest.raises(DataError, match="features"):
        linear_probe(X, y, np.zeros((4, 3)), y, class_names=["a", "b"])
    with pytest.raises(ConfigError, match="fraction"):
        linear_probe(X, y, X, y, fractions=(0.0,), class_names=["a", "b"])


# ---------------------------------------------------------------- features

def test_spectral_features_match_hand_computation():
    # one 2-band 2x2 image; band 0 optical (log1p), band 1 SAR dB (linear)
    img = np.array([[[[0, np.e - 1], [np.e ** 2 - 1, np.e ** 3 - 1]],   # log1p -> 0,1,2,3
                     [[-10, -12], [-14, -16]]]])
    f = spectral_features(img, log=[True, False])
    assert f.shape == (1, 4) and f.dtype == np.float32
    # means: 1.5 and -13; population std: sqrt(1.25) for both (spacing 1 vs 2 -> x2)
    np.testing.assert_allclose(f[0], [1.5, -13.0, math.sqrt(1.25), 2 * math.sqrt(1.25)],
                               rtol=1e-6)
    np.testing.assert_allclose(spectral_features(torch.tensor(img), log=[True, False]), f)
    with pytest.raises(ConfigError, match="log"):
        spectral_features(img, log=[True])


class TinyBackbone(nn.Module):
    out_dim = 4

    def __init__(self, in_ch):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, self.out_dim, 1)
        self.drop = nn.Dropout(0.5)   # makes train vs eval mode observable

    def forward(self, x):
        return self.drop(self.conv(x)).mean(dim=(2, 3))


class DictDataset(Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 2, 8, 8, generator=g) * 3000
        self.labels = torch.arange(n) % 3

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": int(self.labels[i])}


def make_encoder():
    torch.manual_seed(0)
    stats = BandStats(["B04", "B08"], mean=[7.0, 7.5], std=[1.0, 1.2], q02=[0, 0],
                      q98=[3000, 3000])
    return Encoder(TinyBackbone(2), Normalizer(stats))


def test_extract_features_shapes_eval_mode_and_restores_mode():
    enc = make_encoder()
    ds = DictDataset(10)
    X, y = extract_features(enc, ds, batch_size=4)
    assert X.shape == (10, 4) and X.dtype == np.float32
    assert y.tolist() == (np.arange(10) % 3).tolist()
    assert enc.training                                # restored
    enc.eval()
    with torch.no_grad():
        ref = enc(ds.images).numpy()
    np.testing.assert_allclose(X, ref, rtol=1e-5, atol=1e-6)   # no dropout: ran in eval mode
    X2, _ = extract_features(enc, DataLoader(ds, batch_size=3))
    np.testing.assert_allclose(X2, X, rtol=1e-5, atol=1e-6)
    assert not enc.training                            # eval stays eval


def test_extract_features_names_missing_key():
    with pytest.raises(DataError, match="label"):
        extract_features(make_encoder(), [{"image": torch.zeros(2, 4, 4)}])


# ---------------------------------------------------------------- tables

def _res(kind, fraction, seed, acc, skipped=False):
    m = {} if skipped else {"accuracy": acc, "balanced_accuracy": acc, "macro_f1": acc - 0.1}
    return ProbeResult(kind, fraction, seed, 10, m, skipped=skipped)


def test_results_to_records():
    rows = {
        "random": [_res("linear", 0.1, 0, 0.5), _res("linear", 0.1, 1, 0.7),
                   _res("linear", 1.0, 0, 0.8), _res("knn", 1.0, 0, 0.6)],
        "seco": [_res("linear", 0.1, 0, 0.9), _res("linear", 0.1, 1, 0.9, skipped=True),
                 _res("linear", 1.0, 0, 0.95)],
    }
    recs = results_to_records(rows)
    assert len(recs) == 7
    assert recs[0] == {"model": "random", "kind": "linear", "fraction": 0.1, "seed": 0,
                       "n_train": 10, "accuracy": 0.5, "balanced_accuracy": 0.5,
                       "macro_f1": 0.4, "per_class_f1": None, "skipped": False,
                       "reason": ""}
    assert recs[5]["accuracy"] is None
    json.dumps(recs)
