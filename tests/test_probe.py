"""Probes, label fractions, feature extraction, the robust feature scaling and the layer
chosen by cross-validation, on tiny synthetic data."""

import math

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from eossl.errors import ConfigError, DataError
from eossl.evaluate.features import (FeatureScaler, StageFeatures, frozen_features,
                                     spectral_features)
from eossl.evaluate.probe import knn_predict, knn_probe, linear_probe, subsample_fraction
from eossl.models.encoder import Encoder
from eossl.normalization import BandStats


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


class DictDataset(Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 2, 16, 16, generator=g) * 3000
        self.labels = torch.arange(n) % 3

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": int(self.labels[i])}


def make_encoder():
    stats = BandStats(["B04", "B08"], mean=[7.0, 7.5], std=[1.0, 1.2], q02=[0, 0],
                      q98=[3000, 3000])
    return Encoder.random(stats)


def test_frozen_features_every_stage_in_eval_mode_and_mode_restored():
    enc = make_encoder()
    ds = DictDataset(10)
    f = frozen_features(enc, ds, batch_size=4)
    assert [s.shape for s in f.stages] == [(10, c) for c in enc.stage_channels()]
    assert f.labels.tolist() == (np.arange(10) % 3).tolist()
    assert enc.training                                # restored
    enc.eval()
    with torch.no_grad():
        ref = enc(ds.images).numpy()
    # the last stage's pooled features are what the encoder outputs (BatchNorm in eval mode)
    np.testing.assert_allclose(f.layer("last"), ref, rtol=1e-4, atol=1e-5)
    assert f.layer("multiscale").shape == (10, sum(enc.stage_channels()))
    np.testing.assert_array_equal(f.layer("stage0"), f.stages[0])
    with pytest.raises(ConfigError, match="feature layer 'stage9'"):
        f.layer("stage9")
    with pytest.raises(DataError, match="label"):
        frozen_features(enc, [{"image": torch.zeros(2, 2, 16, 16)}])


def test_scaler_keeps_a_near_dead_feature_from_dominating():
    """A ReLU channel that fired on 1 of 764 training patches (std ~3e-8 there) must not turn
    into a 1e5-sigma input on test patches where it fires at an ordinary level."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(764, 6))
    X[:, 5] = 0.0
    X[17, 5] = 8e-7                                    # active on one training sample
    Xt = rng.normal(size=(50, 6))
    Xt[:, 5] = 0.02                                    # ordinary activation on test
    from sklearn.preprocessing import StandardScaler

    assert np.abs(StandardScaler().fit(X).transform(Xt)).max() > 1e5  # the trap
    sc = FeatureScaler().fit(X)
    Z = sc.transform(Xt)
    assert sc.n_dropped_ == 1 and Z.shape == (50, 5) and np.abs(Z).max() <= sc.clip
    np.testing.assert_allclose(Z, np.clip((Xt[:, :5] - X[:, :5].mean(0)) / X[:, :5].std(0),
                                          -10, 10), rtol=1e-5, atol=1e-5)
    # a nearly constant but active feature is floored, not stretched without bound
    Y = rng.normal(size=(200, 4))
    Y[:, 3] = 1.0 + 1e-4 * rng.normal(size=200)  # active, but 1e4 times narrower
    sc = FeatureScaler().fit(Y)
    assert sc.n_dropped_ == 0 and sc.scale_[3] == pytest.approx(0.01 * np.median(Y.std(0)))
    assert sc.scale_[3] > 10 * Y[:, 3].std()  # floored, not its own tiny std
    Y[:, 3] = 1.0  # constant: carries nothing, dropped
    assert FeatureScaler().fit(Y).n_dropped_ == 1


def test_layer_chosen_by_cross_validation_inside_the_training_set():
    """With per-stage features, the linear probe picks the layer by CV on the training
    subsample (never on test) and says which."""
    X, y = blobs(60, 3, 8, sep=6, seed=4)
    Xt, yt = blobs(30, 3, 8, sep=6, seed=4, noise_seed=5)
    rng = np.random.default_rng(0)
    noise, noise_t = rng.normal(size=(180, 16)), rng.normal(size=(90, 16))
    train, test = StageFeatures([X, noise], y), StageFeatures([Xt, noise_t], yt)
    (res,) = linear_probe(train, y, test, yt, fractions=(1.0,), class_names=list("abc"), C=1.0)
    assert res.layer in ("stage0", "multiscale") and res.metrics["accuracy"] > 0.9
    (last,) = linear_probe(noise, y, noise_t, yt, fractions=(1.0,), class_names=list("abc"),
                           C=1.0)
    assert last.metrics["accuracy"] < 0.6 and last.layer is None


def test_probe_reports_last_stage_and_multiscale_side_by_side(tiny_checkpoints, brandenburg):
    """The feature layer decides the verdict (a MoCo encoder's last stage probed 0.60 where
    its stem's pooled features gave 0.65): the probe evaluation shows the last stage and the
    multi-scale features as two tables, and with ``cv`` says which layer each fit chose."""
    from conftest import first_fold_context

    from eossl.checkpoint import load_encoder
    from eossl.evaluate.probe import PatchProbe

    ev = PatchProbe(fractions=(1.0,), layers=("last", "multiscale", "cv"), C=1.0)
    assert ev.tables == ("Linear probe (last stage)", "Linear probe (multi-scale)",
                         "Linear probe (layer by CV)", "kNN probe (k = 20) (last stage)",
                         "kNN probe (k = 20) (multi-scale)", "kNN probe (k = 20) (layer by CV)")
    recs = ev.run(first_fold_context(source=brandenburg),
                  {"moco": load_encoder(tiny_checkpoints["moco"])}, seed=0)
    acc = {r["table"]: r for r in recs if r.get("metric") == "accuracy"}
    assert set(acc) == set(ev.tables)
    assert acc["Linear probe (last stage)"]["value"] != acc["Linear probe (multi-scale)"][
        "value"]
    assert acc["Linear probe (layer by CV)"]["layer"] in ["last", "multiscale"] + [
        f"stage{i}" for i in range(5)]
    assert "feature layer 'deep'" in str(pytest.raises(ConfigError, PatchProbe,
                                                      layers=("deep",)).value)


@pytest.mark.parametrize("noise", [0.5, 2.0, 6.0])
def test_warm_started_C_search_picks_what_grid_search_picks(noise):
    """choose_C walks the C grid with warm starts instead of GridSearchCV's fits from zero;
    on the same inner folds, with the scaler fitted inside each fold, it must pick the same C."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline

    from eossl.evaluate.probe import C_GRID, choose_C

    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 240)
    X = rng.normal(size=(240, 40)) * noise
    X[:, :4] += np.eye(4)[y] * 2.0  # four informative features, the rest noise
    grid = GridSearchCV(
        make_pipeline(FeatureScaler(), LogisticRegression(max_iter=2000, random_state=0)),
        {"logisticregression__C": list(C_GRID)}, scoring="accuracy",
        cv=StratifiedKFold(n_splits=3, shuffle=True, random_state=0)).fit(X, y)
    assert choose_C(X, y, seed=0) == grid.best_params_["logisticregression__C"]
    assert choose_C(X[:10], y[:10], seed=0) == 1.0  # too few to split three ways
