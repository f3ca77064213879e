"""benchmarks/readme_table.py: the README's tables from a results.json (synthetic records of the
shape the benchmark writes; the real folder is checked by test_benchmark's committed report)."""

from __future__ import annotations

import gzip
import json

import pytest
from conftest import benchmark_script


@pytest.fixture(scope="module")
def readme_table():
    return benchmark_script("readme_table")


def _rec(model, seed, fold, value, table="Linear probe (last stage): accuracy"):
    return {"evaluation": "probe", "table": table, "model": model, "seed": seed, "fold": fold,
            "metric": "balanced_accuracy", "column": "100% labels", "value": value}


def _records():
    out = [{"evaluation": "probe", "table": "_model", "model": "moco", "seed": s, "fold": 0,
            "metric": "", "column": "", "value": None, "twin": "random init (moco)",
            "collapsed": s == 1} for s in (0, 1)]
    out.append({"evaluation": "probe", "table": "_model", "model": "random init (moco)",
                "seed": 0, "fold": 0, "metric": "", "column": "", "value": None,
                "role": "twin"})
    for seed in (0, 1):
        for fold in (0, 1):
            out.append(_rec("moco", seed, fold, 0.6 - 0.1 * seed + 0.01 * fold))
            out.append(_rec("random init (moco)", seed, fold, 0.55 if fold == 0 else 0.62))
    return out


def test_means_differences_and_units_ahead(readme_table, tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps({"records": _records()}))
    cell = "probe|Linear probe (last stage)|100% labels|balanced_accuracy|lin"
    assert readme_table.main([str(tmp_path), "--cell", cell]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    moco = [ln for ln in lines if ln.startswith("| moco")]
    # flagged once (a collapsed seed), mean 0.555 with a CI over 4 seed x fold units
    assert moco[0].count("collapsed") == 1
    assert moco[0].split("|")[2].strip().startswith("0.555 ± ")
    # against its twin: +0.05, -0.01 (seed 0), -0.05, -0.11 (seed 1): mean -0.030, ahead on
    # 1 of 4 units and on 1 of 2 seeds (seed 0's mean over folds is +0.02, seed 1's -0.08)
    assert moco[1].split("|")[2].strip() == "-0.030 (1/4; 1/2)"
    assert [ln.split("|")[1].strip() for ln in lines if ln.startswith("| random")] == \
        ["random init (moco)"]  # the twin is a row of the first table only


def test_a_folder_without_results_says_what_to_run(readme_table, tmp_path):
    with pytest.raises(SystemExit, match="no such file .*eossl benchmark or eossl report"):
        readme_table.main([str(tmp_path)])


def test_a_gzipped_results_file_gives_the_same_tables(readme_table, tmp_path, capsys):
    """docs/benchmark commits results.json.gz (a full run's records are several MB)."""
    cell = "probe|Linear probe (last stage)|100% labels|balanced_accuracy|lin"
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    plain.mkdir()
    packed.mkdir()
    doc = json.dumps({"records": _records()})
    (plain / "results.json").write_text(doc)
    with gzip.open(packed / "results.json.gz", "wt") as f:
        f.write(doc)
    assert readme_table.main([str(plain), "--cell", cell]) == 0
    want = capsys.readouterr().out
    assert readme_table.main([str(packed), "--cell", cell]) == 0
    assert capsys.readouterr().out == want and "| moco" in want
    (packed / "results.json.gz").write_bytes(b"not gzip")
    with pytest.raises(SystemExit, match="results.json.gz: not a readable benchmark results"):
        readme_table.main([str(packed), "--cell", cell])
