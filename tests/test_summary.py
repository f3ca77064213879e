"""What a report says about records: cells with confidence intervals, findings that name
accuracy AND balanced accuracy and hold seed by seed and fold by fold, picks among many said
to be picks, p-values corrected for the number of comparisons, collapsed encoders and scarce
labels flagged wherever they appear."""

import re

import pytest

from eossl.evaluate import results as R
from eossl.evaluate.base import Evaluation
from eossl.evaluate.summary import (COLLAPSED, FEW, metric_tables, report_blocks, row_infos)
from eossl.report import to_html, to_markdown

TWIN = "random init"


class Toy(Evaluation):
    name = "toy"
    title = "Toy probe"
    tables = ("Toy table",)
    shown_metrics = ("accuracy", "balanced_accuracy")
    description = "A toy protocol."


def _records(values: dict, min_per_class=20, units=((0, 0), (1, 0), (2, 0)), table="Toy table",
             column="100% labels", collapsed=()):
    """values: {model: {metric: [per-unit values]}} -> records, with _model rows."""
    recs = []
    for model, metrics in values.items():
        for metric, vals in metrics.items():
            for (seed, fold), v in zip(units, vals):
                recs.append(R.record("toy", table, model, seed, fold, column, 1.0, metric, v,
                                     min_per_class=min_per_class))
        role = "twin" if model == TWIN else "encoder"
        if model != R.SPECTRAL:
            recs.append({"evaluation": "toy", "table": "_model", "model": model, "seed": 0,
                         "fold": 0, "metric": "model", "value": None, "column": "",
                         "order": 0.0, "role": role, "architecture": f"{model} net",
                         "inputs": f"{model} on 13 bands", "signature": "s",
                         "twin": TWIN if role == "encoder" else None,
                         "twin_of": ["a", "b"] if role == "twin" else None,
                         "collapsed": model in collapsed,
                         "collapse": {"embed_std_ratio": 0.06, "embed_cos": 0.995}})
    return recs


def _text(recs):
    blocks = report_blocks([Toy()], recs, title="t", header=["h"], splits={Toy.name: "one fold"})
    return to_markdown(blocks, root=__import__("pathlib").Path(".")), blocks


def test_a_finding_holds_in_accuracy_and_balanced_accuracy_on_every_unit():
    recs = _records({
        TWIN: {"accuracy": [0.50, 0.52, 0.51], "balanced_accuracy": [0.30, 0.31, 0.32]},
        # a: better on every seed in both metrics
        "a": {"accuracy": [0.60, 0.63, 0.61], "balanced_accuracy": [0.40, 0.41, 0.42]},
        # b: better accuracy on every seed, but its balanced accuracy is below on one seed
        "b": {"accuracy": [0.60, 0.61, 0.62], "balanced_accuracy": [0.35, 0.29, 0.40]},
    })
    md, _ = _text(recs)
    line = next(x for x in md.splitlines() if "against its random twin" in x)
    beats = line.split("beat its random twin")[1].split(";")[0]
    assert "on every seed and fold (n = 3) in accuracy and balanced accuracy" in beats
    assert "a (" in beats and "b (" not in beats
    assert re.search(r"no consistent difference \(wins per metric b accuracy 3/3, "
                     r"balanced accuracy 2/3\)", line)
    # the highest mean is said to be a pick among the methods, not a tested claim
    assert re.search(r"highest mean accuracy is (a|b)'s \(0\.61\d\), picked among 2 methods "
                     r"by its mean: a description, not a tested claim", md)
    # p-values: a paired test, Holm-adjusted over every comparison of the report
    assert "Holm p = " in line and "Holm-adjusted over all 2 comparisons" in md
    # the protocol names every row's architecture and inputs, twins included
    assert "**a**: a on 13 bands; reference row: random init" in md
    assert "**random init**: the random twin of a, b" in md


def test_cells_give_mean_and_confidence_interval_and_mark_the_best():
    recs = _records({TWIN: {"accuracy": [0.5, 0.6, 0.7]}, "a": {"accuracy": [0.8, 0.8, 0.8]}})
    infos = row_infos(recs)
    summary, units, few = metric_tables([r for r in recs if not R.hidden(r)], "accuracy",
                                        [TWIN, "a"], infos)
    mean, half = R.mean_ci([0.5, 0.6, 0.7])
    assert summary[1] == [TWIN, f"{mean:.3f} ± {half:.3f}"]
    assert half == pytest.approx(4.303 * 0.1 / 3 ** 0.5, rel=1e-3)  # t(0.975, 2) x sd / sqrt n
    assert summary[2] == ["a", "**0.800 ± 0.000**"] and units[2] == ["a", "0.800 / 0.800 / 0.800"]
    assert not few
    # an error metric marks its lowest mean
    low, _, _ = metric_tables([r for r in recs if not R.hidden(r)], "accuracy", [TWIN, "a"],
                              infos, lower=True)
    assert low[1][1].startswith("**") and not low[2][1].startswith("**")


def test_collapsed_encoders_and_scarce_labels_are_flagged_everywhere():
    recs = _records({TWIN: {"accuracy": [0.5, 0.5, 0.5], "balanced_accuracy": [0.3] * 3},
                     "a": {"accuracy": [0.6, 0.6, 0.6], "balanced_accuracy": [0.4] * 3},
                     "b": {"accuracy": [0.7, 0.7, 0.7], "balanced_accuracy": [0.5] * 3}},
                    min_per_class=2, collapsed=("b",))
    md, blocks = _text(recs)
    assert f"| b {COLLAPSED} |" in md                      # in the table
    assert re.search(rf"b {COLLAPSED} \(Δ accuracy", md)   # in the findings
    assert "the collapse monitor tripped in pretraining" in md  # in the protocol
    assert f"{FEW} fewer than 5 labelled" in md and f"0.700 ± 0.000** {FEW}" in md
    html = to_html(blocks)
    assert COLLAPSED in html and "<table>" in html


def test_spectral_baseline_comparisons_and_holm():
    assert R.holm([0.01, 0.04, None, 0.03]) == [0.03, 0.06, None, 0.06]
    recs = _records({R.SPECTRAL: {"accuracy": [0.7, 0.7, 0.7], "balanced_accuracy": [0.5] * 3},
                     TWIN: {"accuracy": [0.5, 0.5, 0.5], "balanced_accuracy": [0.3] * 3},
                     "a": {"accuracy": [0.6, 0.61, 0.62], "balanced_accuracy": [0.4] * 3}})
    md, _ = _text(recs)
    assert re.search(r"against the spectral baseline: rows that lose to the spectral baseline on every "
                     r"seed and fold in accuracy and balanced accuracy: a \(", md)


def test_paired_differences_use_only_units_both_rows_measured():
    a = {(1, 0): 0.6, (0, 1): 0.5, (0, 0): 0.4, (2, 0): None}
    b = {(0, 0): 0.5, (0, 1): 0.3, (1, 0): None, (3, 0): 0.1}
    d = R.paired_diffs(a, b)
    assert list(d) == [(0, 0), (0, 1)]  # unit order; a None on either side is skipped
    assert d[(0, 0)] == pytest.approx(-0.1) and d[(0, 1)] == pytest.approx(0.2)
    assert R.paired_diffs(a, {}) == {}
