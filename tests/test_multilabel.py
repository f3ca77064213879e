"""Multi-label metrics against hand-computed values, band filling, and the real BigEarthNet
sample with optical and radar encoders."""

import json

import numpy as np
import pytest

from eossl.errors import DataError
from eossl.evaluate.metrics import multilabel_metrics
from eossl.evaluate.multilabel import linear_multilabel_probe

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


def test_bandwise_radar_encoder_on_bigearthnet_reads_sentinel1(tiny_checkpoints, sample_cache,
                                                              tmp_path, capsys,
                                                              small_evaluations):
    """`eossl evaluate multilabel` on an RS-BYOL checkpoint (its pool holds S2 bands and S1 VV,
    VH): the data are loaded with their Sentinel-1 bands and the band-wise encoder (and its
    band-wise random twin) reads them; once it failed with an internal error."""
    from eossl.cli import main

    out = tmp_path / "ml"
    rc = main(["--cache", str(sample_cache), "evaluate", "multilabel", "--checkpoint",
               f"rsbyol={tiny_checkpoints['rsbyol']}", "--seeds", "0", "--epochs", "1",
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    records = json.loads((out / "results.json").read_text())["records"]
    rows = {r["model"]: r for r in records if r["table"] == "_model"}
    assert rows["rsbyol"]["inputs"].startswith("band-wise") and "VV, VH" in rows["rsbyol"][
        "inputs"] and "absent" not in rows["rsbyol"]["inputs"]
    assert rows["random init"]["signature"] == rows["rsbyol"]["signature"]
    cells = {(r["model"], r["column"]) for r in records
             if r["metric"] == "micro_map" and r["value"] is not None}
    for model in ("rsbyol", "random init"):
        for col in ("linear, last stage", "linear, multi-scale", "fine-tuned"):
            assert (model, col) in cells
    assert ("spectral baseline", "linear, last stage") in cells
    for r in records:
        if r["metric"] in ("micro_map", "macro_map", "micro_f1") and r["value"] is not None:
            assert 0 <= r["value"] <= 1


def test_l1c_encoder_on_l2a_fills_the_cirrus_band(tiny_checkpoints, sample_cache, small_evaluations):
    from eossl.checkpoint import load_encoder
    from eossl.evaluate.base import Context
    from eossl.evaluate.multilabel import MultiLabel

    ev = MultiLabel(epochs=1, layers=("last",))
    recs = ev.run(Context("bigearthnet", cache=sample_cache), {"moco": load_encoder(tiny_checkpoints["moco"])},
                  seed=0)
    assert "filled with its training mean: B10" in ev.inputs["moco"]
    assert {r["column"] for r in recs} == {"linear, last stage", "fine-tuned"}
