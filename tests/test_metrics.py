"""classification_metrics against numbers worked out by hand."""

import numpy as np
import pytest

from eossl.errors import DataError
from eossl.evaluate.metrics import classification_metrics

NAMES = ["water", "forest", "urban"]
# true:  0 0 1 1 2 2
# pred:  0 1 1 1 2 0
Y_TRUE = [0, 0, 1, 1, 2, 2]
Y_PRED = [0, 1, 1, 1, 2, 0]


def test_hand_computed_values():
    m = classification_metrics(Y_TRUE, Y_PRED, NAMES)
    # water: predicted at 0 and 5, right once -> P 1/2; true at 0,1, found once -> R 1/2
    # forest: predicted at 1,2,3, right twice -> P 2/3; both true found -> R 1
    # urban: predicted at 4, right -> P 1; true at 4,5, found once -> R 1/2
    p = {"water": 1 / 2, "forest": 2 / 3, "urban": 1.0}
    r = {"water": 1 / 2, "forest": 1.0, "urban": 1 / 2}
    f1 = {c: 2 * p[c] * r[c] / (p[c] + r[c]) for c in NAMES}   # 0.5, 0.8, 2/3
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    for c in NAMES:
        pc = m["per_class"][c]
        assert pc["precision"] == pytest.approx(p[c])
        assert pc["recall"] == pytest.approx(r[c])
        assert pc["f1"] == pytest.approx(f1[c])
        assert pc["support"] == 2
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_class_absent_everywhere_keeps_scores_and_reports_zero_support():
    m = classification_metrics(Y_TRUE, Y_PRED, NAMES + ["snow"])
    ref = classification_metrics(Y_TRUE, Y_PRED, NAMES)
    assert m["per_class"]["snow"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert m[key] == pytest.approx(ref[key])


def test_class_only_in_predictions_counts_against_macro_f1_without_crashing():
    # true: 0 0 1 1; pred: 0 2 1 1 -> class 2 predicted once, never true
    m = classification_metrics([0, 0, 1, 1], [0, 2, 1, 1], NAMES)
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1) / 2)   # over true classes only
    # water P 1 R 1/2 F1 2/3; forest F1 1; urban F1 0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["per_class"]["urban"]["support"] == 0


def test_bad_inputs_are_named():
    with pytest.raises(DataError, match="different lengths"):
        classification_metrics([0, 1], [0], NAMES)
    with pytest.raises(DataError, match="y_pred"):
        classification_metrics([0, 1], [0, 3], NAMES)
    with pytest.raises(DataError, match="empty"):
        classification_metrics(np.array([], int), np.array([], int), NAMES)
