"""eossl benchmark: plan checks, resumability, failure isolation, and the report (Markdown and
a self-contained HTML page opened in headless Chromium)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from eossl.bench.plan import BenchmarkFolder, Budget, Plan
from eossl.cli import main
from eossl.errors import ConfigError, OutputExistsError


def test_budget_parsing():
    assert Budget.parse("10m") == Budget(seconds=600)
    assert Budget.parse("90s").seconds == 90
    assert Budget.parse("500-steps") == Budget(steps=500)
    assert Budget.parse("20 steps") == Budget(steps=20)
    for bad, msg in (("0s", "more than zero"), ("0-steps", ">= 1 step"),
                     ("soon", "expected a duration")):
        with pytest.raises(ConfigError, match=msg):
            Budget.parse(bad)


def test_plan_and_folder_refusals(tmp_path):
    with pytest.raises(ConfigError, match="repeated"):
        Plan(methods=["moco"], seeds=[0, 0], budget="1m")
    with pytest.raises(ConfigError, match="more than zero"):
        Plan(methods=["moco"], seeds=[0], budget="0m")
    folder = BenchmarkFolder(tmp_path / "b")
    assert folder.open(Plan(methods=["moco"], seeds=[0], budget="1m")) is False
    assert folder.open(Plan(methods=["moco"], seeds=[0], budget="1m")) is True  # resume
    with pytest.raises(OutputExistsError, match="another benchmark.*seeds"):
        folder.open(Plan(methods=["moco"], seeds=[0, 1], budget="1m"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not a benchmark folder"):
        BenchmarkFolder(tmp_path / "other").open(Plan(methods=["moco"], seeds=[0], budget="1m"))


def test_cli_bad_input(tmp_path, capsys):
    assert main(["benchmark", "--methods", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["benchmark", "--budget", "0s", "--out", str(tmp_path / "x")]) == 2
    assert "more than zero" in capsys.readouterr().err
    assert main(["benchmark", "--evaluations", "astrology", "--out", str(tmp_path / "x")]) == 2
    assert "unknown evaluation 'astrology'" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "not a benchmark folder" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.fixture
def failing_method():
    """A registered method whose training step raises, to check failure isolation."""
    from eossl.methods import _METHODS, register_method
    from eossl.methods.moco import MoCoV2

    @register_method("broken-test")
    class Broken(MoCoV2):
        """Always fails (test only)."""

        def training_step(self, batch, batch_idx):
            raise RuntimeError("deliberate failure in training_step")

    yield "broken-test"
    _METHODS.pop("broken-test", None)


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory, sample_cache):
    return tmp_path_factory.mktemp("bench") / "b"


def test_benchmark_runs_resumes_and_isolates_failures(bench_dir, sample_cache, failing_method,
                                                      capsys):
    args = ["--cache", str(sample_cache), "benchmark", "--methods", f"moco,{failing_method}",
            "--budget", "3-steps", "--seeds", "0,1", "--fractions", "0.5,1",
            "--out", str(bench_dir), "--no-progress"]
    assert main(args) == 0
    st = json.loads((bench_dir / "status.json").read_text())
    assert st["runs"]["moco/seed0"]["state"] == "done"
    assert st["runs"]["moco/seed0"]["steps"] == 3
    assert st["runs"][f"{failing_method}/seed1"]["state"] == "failed"
    assert "deliberate failure" in st["runs"][f"{failing_method}/seed1"]["error"]
    md = (bench_dir / "report.md").read_text()
    for row in ("| spectral baseline |", "| random init |", "| moco |"):
        assert row in md
    assert "deliberate failure" in md  # the failure is reported, not hidden
    # per-seed numbers stand beside the claims
    assert re.search(r"best method \*\*moco\*\* .*seeds 0, 1: [0-9.]+ / [0-9.]+ vs", md)

    # Same command again: finished runs and evaluations are kept, not recomputed.
    ckpt = bench_dir / "runs" / "moco" / "seed0" / "checkpoints" / "last.ckpt"
    evals = sorted((bench_dir / "evals").rglob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in [ckpt, *evals]}
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "moco/seed0: finished earlier, kept" in out
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_report_rerenders_without_recomputing(bench_dir):
    if not (bench_dir / "plan.json").exists():
        pytest.skip("needs the benchmark run of the previous test")
    (bench_dir / "report.md").unlink()
    (bench_dir / "report.html").unlink()
    evals_before = sorted(p.stat().st_mtime_ns for p in (bench_dir / "evals").rglob("*.json"))
    assert main(["report", str(bench_dir)]) == 0
    assert (bench_dir / "report.md").exists() and (bench_dir / "report.html").exists()
    assert sorted(p.stat().st_mtime_ns for p in (bench_dir / "evals").rglob("*.json")) == \
        evals_before


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_html_report_renders_in_chromium(bench_dir):
    if not (bench_dir / "report.html").exists():
        pytest.skip("needs the benchmark run of the previous tests")
    exe = _chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; `make test` installs Debian's chromium")
        pytest.skip("chromium not installed (apt-get install chromium)")
    html_path = bench_dir / "report.html"
    text = html_path.read_text()
    assert "src=\"figures/" not in text and "data:image/png;base64," in text  # self-contained
    n_tables = text.count("<table>")
    n_images = text.count("<img ")
    assert n_tables >= 4 and n_images >= 2
    dom = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={bench_dir / 'chromium-profile'}", "--virtual-time-budget=5000",
         "--dump-dom", html_path.as_uri()], capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'data-images="(\d+)" data-images-ok="(\d+)"', dom)
    assert m, "the page's load script did not run"
    assert int(m.group(1)) == n_images and int(m.group(2)) == n_images  # every image decoded
    assert dom.count("<table>") == n_tables
    # a rendered table row carries the reference rows and numbers
    assert re.search(r"<td>spectral baseline</td><td>(<b>)?0\.\d{3}", dom)
