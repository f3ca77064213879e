"""Report tables and plots from saved records."""

import json

import pytest

from eossl.report import load_results, markdown_table, summarise, write_report


def _rec(model, kind, fraction, seed, acc, skipped=False):
    return {"model": model, "kind": kind, "fraction": fraction, "seed": seed, "n_train": 10,
            "accuracy": None if skipped else acc, "balanced_accuracy": None if skipped else acc,
            "macro_f1": None if skipped else acc, "skipped": skipped, "reason": ""}


RECORDS = [
    _rec("random init", "linear", 0.1, 0, 0.5), _rec("random init", "linear", 0.1, 1, 0.7),
    _rec("random init", "linear", 1.0, 0, 0.8), _rec("random init", "knn", 1.0, 0, 0.6),
    _rec("MoCo v2", "linear", 0.1, 0, 0.9), _rec("MoCo v2", "linear", 0.1, 1, 0.0, skipped=True),
    _rec("MoCo v2", "linear", 1.0, 0, 0.75),
]


def test_summary_mean_std_and_skipped_fits_left_out():
    s = summarise(RECORDS, "accuracy").set_index(["model", "kind", "fraction"])
    assert s.loc[("random init", "linear", 0.1), "mean"] == pytest.approx(0.6)
    assert s.loc[("random init", "linear", 0.1), "std"] == pytest.approx(0.1414, abs=1e-3)
    assert s.loc[("MoCo v2", "linear", 0.1), "count"] == 1  # the skipped seed does not count


def test_markdown_table_marks_best_per_column():
    md = markdown_table(RECORDS, metrics=("accuracy",)).splitlines()
    assert md[0] == "| model | accuracy @10% | accuracy @100% |"
    assert md[2] == "| random init | 0.600 ± 0.141 | **0.800** |"
    assert md[3] == "| MoCo v2 | **0.900** | 0.750 |"
    knn = markdown_table(RECORDS, metrics=("accuracy",), kind="knn").splitlines()
    assert knn[2] == "| random init | **0.600** |" and len(knn) == 3


def test_write_report_roundtrip(tmp_path):
    path = write_report(tmp_path / "r", RECORDS, title="t", header={"seeds": "0, 1"})
    text = path.read_text()
    assert "| MoCo v2 |" in text and "![probe scores](probe_scores.png)" in text
    assert (tmp_path / "r" / "probe_scores.png").stat().st_size > 1000
    header, records = load_results(tmp_path / "r")
    assert header == {"seeds": "0, 1"} and records == json.loads(json.dumps(RECORDS))


def test_atomic_writes_get_shared_permissions_and_figures_close(tmp_path):
    """mkstemp's 0600 must not leak into results people share; a saved figure is closed."""
    import os
    import stat

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eossl.report import atomic_write_text, save_figure

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "summary.json", "{}")
        fig, ax = plt.subplots(figsize=(2, 1))
        ax.plot([0, 1])
        png = save_figure(fig, tmp_path / "plot.png", dpi=50)
    finally:
        os.umask(old)
    for p in (tmp_path / "summary.json", png):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png", "summary.json"]
