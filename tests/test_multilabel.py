"""Multi-label metrics against hand-computed values, band filling, and the real BigEarthNet sample."""

import numpy as np
import pytest
import torch

from eossl.errors import DataError
from eossl.evaluate.multilabel import (compare_multilabel,
                                       linear_multilabel_probe, multilabel_metrics,
                                       multilabel_table)

Y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
S = np.array([[0.9, 0.2, 0.4], [0.6, 0.7, 0.1], [0.8, 0.3, 0.2], [0.1, 0.6, 0.3]])


def test_metrics_match_hand_computed_values():
    m = multilabel_metrics(Y, S, ["a", "b", "c"])
    # predictions at 0.5: a: tp 2 fp 1 fn 0; b: tp 1 fp 1 fn 1; c: tp 0 fp 0 fn 1
    assert m["micro_f1"] == pytest.approx(6 / 10)          # 2*3 / (2*3 + 2 + 2)
    assert m["micro_f2"] == pytest.approx(15 / 25)         # 5*3 / (5*3 + 4*2 + 2)
    assert m["macro_f1"] == pytest.approx((4 / 5 + 1 / 2 + 0) / 3)
    assert m["macro_f2"] == pytest.approx((10 / 11 + 1 / 2 + 0) / 3)
    # AP: a ranks both positives first (1); b: hits at ranks 1 and 3 -> (1 + 2/3)/2; c: 1
    assert m["per_class"]["b"]["ap"] == pytest.approx(5 / 6)
    assert m["macro_map"] == pytest.approx((1 + 5 / 6 + 1) / 3)
    # pooled: precision 1,1,1 at recall .2,.4,.6; 4/6 at .8; 5/8 at 1.0 (ties at 0.6/0.3)
    assert m["micro_map"] == pytest.approx(0.6 + 0.2 * 4 / 6 + 0.2 * 5 / 8)


def test_class_without_positives():
    y = np.c_[Y, np.zeros(4, int)]
    unused = multilabel_metrics(y, np.c_[S, np.full(4, 0.1)])
    ref = multilabel_metrics(Y, S)
    # never true and never predicted: left out of every macro mean, and AP is undefined
    for k in ("macro_map", "macro_f1", "macro_f2", "micro_f1"):
        assert unused[k] == pytest.approx(ref[k])
    assert unused["per_class"]["3"]["ap"] is None and unused["classes_scored"] == 3
    # predicted but never true: a false positive class scores F1 = 0 in the macro mean
    spurious = multilabel_metrics(y, np.c_[S, np.full(4, 0.9)])
    assert spurious["macro_f1"] == pytest.approx(ref["macro_f1"] * 3 / 4)
    with pytest.raises(DataError, match="multi-hot"):
        multilabel_metrics(Y * 2, S)


def test_linear_probe_learns_a_separable_problem():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    Yb = np.c_[X[:, 0] > 0, X[:, 1] > 0.5].astype(int)
    p = linear_multilabel_probe(X[:40], Yb[:40], X[40:], seed=0)
    assert p.shape == (20, 2) and ((p >= 0.5) == Yb[40:]).mean() > 0.85


def test_real_bigearthnet_probe_and_finetune(ben_dir, brandenburg):
    from torch.utils.data import ConcatDataset

    from eossl.data.bigearthnet import BigEarthNetV2
    from eossl.models.encoder import Encoder

    train = ConcatDataset([BigEarthNetV2(ben_dir, split=s, size=32) for s in
                           ("train", "validation")])
    test = BigEarthNetV2(ben_dir, split="test", size=32)
    enc = Encoder.random(brandenburg.stats()).eval().for_bands(test.band_names)
    recs = compare_multilabel(train, test, {"random init": enc}, class_names=test.classes,
                              seeds=(0,), epochs=1)
    assert {(r["model"], r["head"]) for r in recs} == {
        ("spectral baseline", "linear"), ("random init", "linear"), ("random init", "finetune")}
    for r in recs:
        assert 0 <= r["micro_map"] <= 1 and 0 <= r["macro_f2"] <= 1
        assert r["n_test"] == len(test)
    assert "micro map" in multilabel_table(recs)
