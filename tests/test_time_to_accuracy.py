"""benchmarks/time_to_accuracy.py's tables, goal check and plot, on synthetic probe records (the
pretraining and probing are eossl's own, tested elsewhere)."""

import pytest
from conftest import benchmark_script


@pytest.fixture(scope="module")
def tta():
    return benchmark_script("time_to_accuracy")


def _records(values: dict) -> list[dict]:
    """Records as probe_all writes them: {(method, variant, minutes): f(seed, fold)}, two
    seeds x three folds, balanced accuracy v and accuracy v + 0.2."""
    out = []
    for (method, variant, minutes), f in values.items():
        for seed in (0, 1):
            for fold in range(3):
                for metric, add in (("balanced_accuracy", 0.0), ("accuracy", 0.2)):
                    out.append({"evaluation": "probe", "table": "Linear probe (last stage)",
                                "model": method, "seed": seed, "fold": fold,
                                "column": "100% labels", "order": 1.0, "metric": metric,
                                "value": f(seed, fold) + add, "method": method,
                                "variant": variant, "minutes": minutes,
                                "steps": int(minutes * 30)})
    return out


def test_tables_goal_and_plot(tta, tmp_path):
    recs = _records({
        ("spectral baseline", "", 0.0): lambda s, f: 0.5 + 0.01 * f,
        ("random init", "", 0.0): lambda s, f: 0.3,
        ("moco", "fp32", 1.0): lambda s, f: 0.4,
        ("moco", "fp32", 10.0): lambda s, f: 0.6 + 0.01 * s,      # above the baseline on all
        ("simclr", "bf16", 10.0): lambda s, f: 0.5 + 0.01 * f + (0.01 if s == 0 else -0.01),
    })
    lines = "\n".join(tta.markdown(recs, [1.0]))
    assert "### Linear probe (last stage): balanced accuracy, 100% labels" in lines
    assert "| row | 1 min | 10 min |" in lines
    moco = next(ln for ln in lines.splitlines() if ln.startswith("| moco (fp32) |")
                and "0.400" in ln)
    assert "0.400 ± 0.000 (n 6; 30 steps)" in moco and "0.605 ± " in moco and "300 steps" in moco
    assert "| simclr (bf16) | – |" in lines  # no 1-minute run: an empty cell
    # reference rows repeat their budget-free value in every column, listed last
    rows = [ln.split("|")[1].strip() for ln in lines.splitlines()[:9] if ln.startswith("| ")]
    assert rows[-2:] == ["random init", "spectral baseline"]

    goal = tta.goal_lines(recs)
    assert any(g.startswith("- moco (fp32), 10 min: beats the spectral baseline on balanced "
                            "accuracy on 6 of 6 units") and "0.805" in g for g in goal)
    assert any("simclr (bf16), 10 min" in g and "on 3 of 6 units" in g and "0.710" in g
               for g in goal)  # seed 0 above the baseline on its three folds, seed 1 below

    for r in recs:  # the twin names the rows it is the random twin of, as probe_all writes it
        if r["method"] == "random init":
            r["twin_of"] = ["moco (fp32)"]
    paired = "\n".join(tta.paired_lines(recs))
    # moco 0.6 + 0.01 seed against the baseline's 0.5 + 0.01 fold and the twin's 0.3
    assert "| moco (fp32) | 10 | 6 | +0.095 (6/6) | +0.305 (6/6) |" in paired
    assert "| moco (fp32) | 1 | 6 | -0.110 (0/6) | +0.100 (6/6) |" in paired
    simclr = next(ln for ln in paired.splitlines() if ln.startswith("| simclr (bf16) | 10 | 6 |"))
    assert simclr.endswith("0.000 (3/6) | – |")  # ahead on seed 0 only; no twin of its own

    png = tta.plot(recs, 1.0, tmp_path / "tta.png")
    assert png.is_file() and png.stat().st_size > 5000


def test_bad_options_are_refused(tta):
    with pytest.raises(SystemExit):
        tta.parse_args(["--variants", "fp16", "--methods", "moco"])
    with pytest.raises(SystemExit):
        tta.parse_args(["--minutes", "0,5", "--methods", "moco"])
    with pytest.raises(SystemExit):
        tta.parse_args(["--methods", "mocoo"])
    a = tta.parse_args(["--minutes", "1,2.5", "--seeds", "3", "--methods", "moco,byol"])
    assert a.minutes == [1.0, 2.5] and a.seeds == [3] and a.methods == ["moco", "byol"]
    assert set(tta.scene_methods()) >= {"moco", "simclr", "byol"}
    assert not {"seco", "moco-tp", "rsbyol"} & set(tta.scene_methods())
