"""eossl benchmark: plan checks, resumability, failure isolation, every evaluation on real data
at a tiny budget, and the report (Markdown and a self-contained HTML page opened in headless
Chromium)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eossl.bench.plan import BenchmarkFolder, Budget, Plan
from eossl.cli import main
from eossl.errors import ConfigError, OutputExistsError



def committed_copy(bench: Path, kept: Path) -> Path:
    """What a committed report keeps of a benchmark folder (plan.json, results.json or its
    gzipped copy, figures/): enough for `eossl report` to re-render it."""
    kept.mkdir()
    for name in ("plan.json", "results.json", "results.json.gz"):
        if (bench / name).exists():
            shutil.copy(bench / name, kept / name)
    shutil.copytree(bench / "figures", kept / "figures")
    return kept

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
    # a plan.json of an older eossl (no encoders, accelerator, devices) is the same plan, and
    # where it runs may change on a resume
    old = {k: v for k, v in Plan(methods=["moco"], seeds=[0], budget="1m").to_dict().items()
           if k not in ("encoders", "accelerator", "devices")}
    folder.plan_path.write_text(json.dumps(old))
    assert folder.open(Plan(methods=["moco"], seeds=[0], budget="1m", accelerator="cpu"))
    assert json.loads(folder.plan_path.read_text())["accelerator"] == "cpu"
    # encoders from elsewhere: alone, or beside methods under names of their own
    assert Plan(methods=[], seeds=[0], budget="1m", encoders={"ssl4eo": "w.pth"}).encoders
    with pytest.raises(ConfigError, match="no method to benchmark"):
        Plan(methods=[], seeds=[0], budget="1m")
    for name, msg in (("moco", "also a benchmarked method"), ("random init", "reference row"),
                      ("_baseline", "reference row")):
        with pytest.raises(ConfigError, match=msg):
            Plan(methods=["moco"], seeds=[0], budget="1m", encoders={name: "w.pth"})
    from eossl.bench.plan import resolve_methods

    assert resolve_methods("none") == [] and resolve_methods("") == []
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not a benchmark folder"):
        BenchmarkFolder(tmp_path / "other").open(Plan(methods=["moco"], seeds=[0], budget="1m"))


def test_budget_of_both_limits_reads_back():
    b = Budget.parse("90s,500-steps")
    assert b == Budget(seconds=90, steps=500) and Budget.parse(b.spec()) == b
    assert str(b) == "500 steps or 90 s wall clock, whichever ends first"
    with pytest.raises(ConfigError, match="two step budgets"):
        Budget.parse("5-steps,6-steps")


def test_cli_bad_input(tmp_path, capsys):
    assert main(["benchmark", "--methods", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["benchmark", "--budget", "0s", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--budget is now --max-time" in err and "--budget '0s'" in err and "more than zero" in err
    assert main(["benchmark", "--max-time", "soon", "--out", str(tmp_path / "x")]) == 2
    assert "--max-time 'soon': expected a duration" in capsys.readouterr().err
    assert main(["benchmark", "--max-steps", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--max-steps 0: expected at least 1 step" in capsys.readouterr().err
    assert main(["benchmark", "--budget", "1m", "--max-steps", "3"]) == 2
    assert "give the budget once" in capsys.readouterr().err
    # only encoders from elsewhere: --methods none needs --checkpoint
    assert main(["benchmark", "--methods", "none", "--out", str(tmp_path / "x")]) == 2
    assert "give --checkpoint NAME=PATH" in capsys.readouterr().err
    assert main(["benchmark", "--methods", "none", "--checkpoint",
                 f"ssl4eo={tmp_path / 'missing.pth'}", "--out", str(tmp_path / "x")]) == 2
    assert "missing.pth (ssl4eo) does not exist" in capsys.readouterr().err
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"not weights")
    assert main(["benchmark", "--methods", "moco", "--checkpoint", f"moco={weights}",
                 "--out", str(tmp_path / "x")]) == 2
    assert "w.pth" in capsys.readouterr().err  # unreadable: refused before any pretraining
    assert not (tmp_path / "x").exists()
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


# The cheapest settings that still run each evaluation end to end on the real data (a test-only
# override of the class attributes; a real benchmark uses the defaults or --quick).
TINY = {
    "probe": {"C": 1.0, "layers": ("last",)},
    "finetune": {"epochs": 1, "batch_size": 64},
    "pixel-probe": {"per_class": 10, "test_per_class": 10, "patch_size": 32},
    "segment": {"steps": 2, "batch_size": 4, "probe_steps": 2},
    "regress": {"epochs": 1, "min_labelled": 0.5, "layers": ("last",)},
    "multilabel": {"epochs": 1, "layers": ("last",)},
    "ensemble": {"epochs": 1, "saliency_patches": 2},
    "per-band": {"probe_bands": ("B04", "B11")},
    "pictures": {"patches": 2, "map_side": 128},
}


@pytest.fixture
def tiny(monkeypatch):
    from eossl.evaluate.base import get_evaluation

    for name, settings in TINY.items():
        for key, value in settings.items():
            monkeypatch.setitem(get_evaluation(name).settings, key, value)


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory, sample_cache):
    return tmp_path_factory.mktemp("bench") / "b"


@pytest.fixture(scope="module")
def full_dir(tmp_path_factory, sample_cache):
    return tmp_path_factory.mktemp("bench") / "full"


@pytest.fixture(scope="module")
def band_dir(tmp_path_factory, sample_cache):
    return tmp_path_factory.mktemp("bench") / "bandwise"


def test_benchmark_runs_resumes_and_isolates_failures(bench_dir, sample_cache, failing_method,
                                                      tiny, small_evaluations, capsys):
    args = ["--cache", str(sample_cache), "benchmark", "--methods", f"moco,{failing_method}",
            "--max-steps", "3", "--seeds", "0,1", "--fractions", "0.5,1",
            "--evaluations", "probe,ensemble,per-band,pictures", "--split", "west-east",
            "--out", str(bench_dir), "--no-progress"]  # one fold (west/east): a test's time
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
    (session,) = st["sessions"]  # the command and its wall clock are on record
    assert "benchmark" in session["command"] and session["seconds"] > 0
    assert "over 1 session(s)" in md
    # evaluations that do not apply to moco say so, with the reason, for each seed
    for ev, why in (("ensemble", "sees none of the visible bands"),
                    ("per-band", "not a band-wise"), ("pictures", "no picture")):
        for seed in (0, 1):
            assert st["evals"][f"{ev}/moco/seed{seed}"]["state"] == "not applicable"
            assert why in st["evals"][f"{ev}/moco/seed{seed}"]["reason"]
        assert re.search(rf"- {ev}: not applicable to moco \(seeds 0, 1\) \(.*{why}", md)
    # findings compare moco with its random twin and the spectral baseline unit by unit
    assert re.search(r"Linear probe \(last stage\), 100% labels( \([^)]*\))?, against its random "
                     r"twin: ", md)
    assert "per unit accuracy (s0/f0, s1/f0: seed s, fold f)" in md

    # The same command again is refused: the folder holds a benchmark and --resume was not asked.
    ckpt = bench_dir / "runs" / "moco" / "seed0" / "checkpoints" / "last.ckpt"
    evals = sorted((bench_dir / "evals").rglob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in [ckpt, *evals]}
    capsys.readouterr()
    assert main(args) == 2
    assert "already holds a benchmark; pass --resume" in capsys.readouterr().err
    # With --resume (and only --out: the stored plan is used), finished runs and evaluations
    # are kept, not recomputed.
    assert main(["--cache", str(sample_cache), "benchmark", "--out", str(bench_dir),
                 "--resume", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "moco/seed0: finished earlier, kept" in out
    saved = len(list((bench_dir / "evals").glob("*/*.json")))
    assert f"so far: 2 of 4 pretraining runs finished, {saved} evaluation steps saved" in out
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert len(json.loads((bench_dir / "status.json").read_text())["sessions"]) == 2
    assert "over 2 session(s)" in (bench_dir / "report.md").read_text()
    assert main(["benchmark", "--out", str(bench_dir.parent / "nothing"), "--resume"]) == 2
    assert "holds no benchmark to continue" in capsys.readouterr().err


def test_evaluation_workers_share_the_steps_and_run_each_once(bench_dir, sample_cache, tiny,
                                                              small_evaluations, monkeypatch,
                                                              capsys):
    """--eval-workers 2: a second evaluation process takes the steps the first has not
    claimed; every step runs once and the report is whole. (The second process runs here as a
    thread through the same CLI entry, so it sees this test's small settings.)"""
    import subprocess
    import threading

    probe_dir = bench_dir / "evals" / "probe"
    kept = sorted(p.name for p in probe_dir.glob("*.json"))
    assert len(kept) >= 4
    for p in probe_dir.glob("*.json"):  # redo the probe steps
        p.unlink()

    started = []

    class ThreadPopen:
        def __init__(self, cmd):
            started.append(cmd)
            assert cmd[1:3] == ["-m", "eossl.cli"]
            self.code = None
            self.thread = threading.Thread(target=self._run, args=(cmd[3:],))
            self.thread.start()

        def _run(self, args):
            self.code = main(args)

        def wait(self):
            self.thread.join()
            return self.code

    import torch

    monkeypatch.setattr(subprocess, "Popen", ThreadPopen)
    threads = torch.get_num_threads()  # the two "processes" share this one's thread count
    capsys.readouterr()
    try:
        assert main(["--cache", str(sample_cache), "benchmark", "--out", str(bench_dir),
                     "--resume", "--no-progress", "--eval-workers", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    (cmd,) = started
    assert cmd[cmd.index("--eval-worker") + 1] == "2/2" and str(bench_dir) in cmd
    assert sorted(p.name for p in probe_dir.glob("*.json")) == kept
    assert not list(probe_dir.glob("*.claim"))  # every claim released
    ran = [line.split("] ")[-1].strip() for line in out.splitlines()
           if line.strip().startswith(("probe:", "[worker 2/2] probe:"))]
    assert len(ran) == len(kept) and len(set(ran)) == len(ran)  # each step once
    assert "evaluating with 2 worker processes" in out
    assert (bench_dir / "report.md").exists()
    assert main(["benchmark", "--out", str(bench_dir), "--resume", "--eval-workers", "0"]) == 2


def test_a_claimed_step_is_left_to_its_worker_and_a_dead_workers_is_taken(tmp_path):
    from eossl.bench.plan import BenchmarkFolder

    folder = BenchmarkFolder(tmp_path)
    claim = folder.eval_path("probe", "moco", 0).with_suffix(".claim")
    with folder.claim("probe", "moco", 0) as mine:
        assert mine and claim.exists()
        with folder.claim("probe", "moco", 0) as again:  # the same step, from this thread
            assert not again
    assert not claim.exists()
    claim.write_text(f"{os.getppid()} 1")  # a live process holds it
    with folder.claim("probe", "moco", 0) as mine:
        assert not mine
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    claim.write_text(f"{dead.pid} 1")  # a worker that died: its step is taken over
    with folder.claim("probe", "moco", 0) as mine:
        assert mine
    assert not claim.exists()
    claim.write_text("")  # created but not yet written: someone else's, for a while
    with folder.claim("probe", "moco", 0) as mine:
        assert not mine
    os.utime(claim, (0, 0))  # ... but not forever: left by a process that died long ago
    with folder.claim("probe", "moco", 0) as mine:
        assert mine
    # a worker whose benchmark was stopped takes no further step
    from eossl.bench.runner import _step

    ran = []
    _step(folder, "probe", "moco", 0, lambda: ran.append(1) or [], stop=lambda: True)
    assert not ran and folder.load_eval("probe", "moco", 0) is None
    _step(folder, "probe", "moco", 0, lambda: ran.append(1) or [], stop=lambda: False)
    assert ran == [1] and folder.load_eval("probe", "moco", 0) == []


# torchgeo's file name of ResNet18_Weights.SENTINEL2_ALL_MOCO, by which eossl knows the file
TORCHGEO_FILE = "resnet18_sentinel2_all_moco-59bfdff9.pth"


def test_encoders_pretrained_elsewhere_are_rows_beside_the_methods(tmp_path, sample_cache,
                                                                   tiny, small_evaluations,
                                                                   capsys):
    """A weight file in torchgeo's format (timm keys, torchgeo's file name: SSL4EO-S12 MoCo
    ResNet-18, weights drawn here) is a row of every evaluation beside a method the benchmark
    pretrains, with its own random twin; plan.json keeps it for --resume and re-rendering, and
    the report says what it is and that the benchmark did not pretrain it."""
    import timm
    import torch

    torch.manual_seed(7)
    weights = tmp_path / TORCHGEO_FILE
    torch.save(timm.create_model("resnet18", in_chans=13, num_classes=0).state_dict(), weights)
    out = tmp_path / "bench"
    args = ["--cache", str(sample_cache), "benchmark", "--methods", "moco", "--checkpoint",
            f"ssl4eo={weights}", "--max-steps", "2", "--seeds", "0,", "--fractions", "1",
            "--evaluations", "probe", "--split", "west-east", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["methods"] == ["moco"] and plan["encoders"] == {"ssl4eo": str(weights)}
    assert plan["budget"] == "2-steps"
    st = json.loads((out / "status.json").read_text())
    assert st["runs"]["moco/seed0"]["steps"] == 2
    assert st["external"]["ssl4eo"]["pretrained_on"] == "SSL4EO-S12"
    assert st["evals"]["probe/ssl4eo/seed0"]["state"] == "done"
    records = json.loads((out / "results.json").read_text())["records"]
    rows = {r["model"]: r for r in records if r["table"] == "_model"}
    # each encoder has its own twin: same architecture and inputs, other weights
    assert rows["ssl4eo"]["twin"] == "random init (ssl4eo)"
    assert rows["moco"]["twin"] == "random init (moco)"
    assert rows["random init (ssl4eo)"]["signature"] == rows["ssl4eo"]["signature"]
    assert rows["random init (ssl4eo)"]["signature"] != rows["moco"]["signature"]
    assert "not pretrained by this benchmark" in rows["ssl4eo"]["origin"]
    assert "origin" not in rows["moco"]
    acc = {r["model"] for r in records if r["metric"] == "accuracy" and r["value"] is not None}
    assert {"ssl4eo", "random init (ssl4eo)", "moco", "random init (moco)",
            "spectral baseline"} <= acc
    md = (out / "report.md").read_text()
    assert "## Encoders pretrained elsewhere" in md
    assert re.search(r"^\| ssl4eo \| weights pretrained elsewhere: " + re.escape(TORCHGEO_FILE),
                     md, re.M)
    assert re.search(r"\*\*ssl4eo\*\*: resnet18 .*on 13 bands.*not pretrained by this "
                     r"benchmark; pretrained on other data \(SSL4EO-S12\)", md)
    assert "| ssl4eo | " in md.split("## Patch classification probes")[1]  # a table row

    # --resume keeps every finished step, the external rows' included
    evals = sorted((out / "evals").rglob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in evals}
    assert main(["--cache", str(sample_cache), "benchmark", "--out", str(out), "--resume",
                 "--no-progress"]) == 0
    assert "methods and encoders moco, ssl4eo" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in evals} == before
    # and a committed report (plan.json, results.json, figures) re-renders with them
    kept = committed_copy(out, tmp_path / "committed")
    assert main(["report", str(kept)]) == 0
    again = (kept / "report.md").read_text()
    assert "## Encoders pretrained elsewhere" in again and "random init (ssl4eo)" in again


def test_a_report_of_an_unfinished_benchmark_says_what_has_not_run(bench_dir, tmp_path,
                                                                   capsys):
    if not (bench_dir / "plan.json").exists():
        pytest.skip("needs the benchmark run of the first test")
    part = tmp_path / "part"
    shutil.copytree(bench_dir, part)
    (part / "evals" / "probe" / "moco__seed1.json").unlink()
    assert main(["report", str(part)]) == 0
    md = (part / "report.md").read_text()
    assert "**incomplete**: 1 pretraining run(s) or evaluation step(s)" in md
    assert "## Not run yet" in md and "- probe: moco (seed 1)" in md
    assert "incomplete" not in (bench_dir / "report.md").read_text()  # the whole one
    # a committed copy (plan, results, figures; no evals/) is whole, not "incomplete"
    kept = committed_copy(bench_dir, tmp_path / "committed")
    assert main(["report", str(kept)]) == 0
    assert "incomplete" not in (kept / "report.md").read_text()
    # before any evaluation has finished there is nothing to report yet, and it says what to do
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(bench_dir / "plan.json", fresh / "plan.json")
    capsys.readouterr()
    assert main(["report", str(fresh)]) == 2
    assert "no evaluation of this benchmark has finished yet" in capsys.readouterr().err


def test_report_rerenders_without_recomputing(bench_dir, tmp_path):
    if not (bench_dir / "plan.json").exists():
        pytest.skip("needs the benchmark run of the previous test")
    (bench_dir / "report.md").unlink()
    (bench_dir / "report.html").unlink()
    evals_before = sorted(p.stat().st_mtime_ns for p in (bench_dir / "evals").rglob("*.json"))
    assert main(["report", str(bench_dir)]) == 0
    assert (bench_dir / "report.md").exists() and (bench_dir / "report.html").exists()
    assert sorted(p.stat().st_mtime_ns for p in (bench_dir / "evals").rglob("*.json")) == \
        evals_before
    # a committed report keeps plan.json, results.json and its figures: that is enough to
    # re-render it with every figure and the same captions
    kept = committed_copy(bench_dir, tmp_path / "committed")
    assert main(["report", str(kept)]) == 0
    md = (kept / "report.md").read_text()
    assert "| moco |" in md and "## Findings" in md

    def figures(text):
        return re.findall(r"!\[([^\]]*)\]\(([^)]+)\)", text)

    original = figures((bench_dir / "report.md").read_text())
    assert len(original) >= 2 and figures(md) == original  # every figure, the same captions
    for caption, path in original:
        assert (kept / path).is_file(), path
        words = caption.replace(":", " ").split()
        assert all(a != b for a, b in zip(words, words[1:])), caption  # "colorization colorization"


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _render_in_chromium(folder, min_images: int = 2) -> str:
    """The DOM of the folder's report.html after headless Chromium loaded it; asserts the
    page is self-contained and every image decoded."""
    exe = _chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; `make test` installs Debian's chromium")
        pytest.skip("chromium not installed (apt-get install chromium)")
    html_path = folder / "report.html"
    text = html_path.read_text()
    assert "src=\"figures/" not in text and "data:image/png;base64," in text  # self-contained
    n_tables = text.count("<table>")
    n_images = text.count("<img ")
    assert n_tables >= 4 and n_images >= min_images
    dom = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={folder / 'chromium-profile'}", "--virtual-time-budget=5000",
         "--dump-dom", html_path.as_uri()], capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'data-images="(\d+)" data-images-ok="(\d+)"', dom)
    assert m, "the page's load script did not run"
    assert int(m.group(1)) == n_images and int(m.group(2)) == n_images  # every image decoded
    assert dom.count("<table>") == n_tables
    # a rendered table row carries the reference rows and numbers
    assert re.search(r"<td>spectral baseline</td><td>(<b>)?0\.\d{3}", dom)
    return dom


def test_html_report_renders_in_chromium(bench_dir):
    """The page opens in a browser with its table of contents (a link to every section, each
    link's target present) and every figure of the Markdown report decoded."""
    if not (bench_dir / "report.html").exists():
        pytest.skip("needs the benchmark run of the previous tests")
    md = (bench_dir / "report.md").read_text()
    n_figures = len(re.findall(r"!\[[^\]]*\]\(figures/", md))
    dom = _render_in_chromium(bench_dir, min_images=n_figures)
    toc = re.search(r'<nav id="contents">(.*?)</nav>', dom, re.S)
    assert toc, "no table of contents"
    targets = re.findall(r'<a href="#([^"]+)">', toc.group(1))
    sections = re.findall(r"^## (.+)$", md, re.M)
    assert len(targets) >= len(sections) - 1 >= 4  # every h2 after the contents (and h3s)
    for t in targets:
        assert f'id="{t}"' in dom, t
    for title in ("Findings", "Pretraining", "Linear probe"):
        assert any(title in a for a in re.findall(r'<a href="#[^"]+">(.*?)</a>', toc.group(1)))
    assert dom.count("<img ") == n_figures  # each figure of the Markdown report is on the page
    assert dom.find("How to read this report") < dom.find('<nav id="contents">')


def test_the_committed_benchmark_report_re_renders_as_committed(tmp_path):
    """docs/benchmark (plan.json, results.json.gz, figures/ and the report the README quotes) is
    what the current code renders from its results: `eossl report` on a copy writes the same
    Markdown, every figure it shows is there, and the HTML page opens in Chromium."""
    committed = Path(__file__).resolve().parents[1] / "docs" / "benchmark"
    kept = committed_copy(committed, tmp_path / "committed")
    assert main(["report", str(kept)]) == 0
    md = (kept / "report.md").read_text()
    assert md == (committed / "report.md").read_text()
    shown = re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", md)
    assert "figures/training.png" in shown and "figures/embeddings.png" in shown
    for path in shown:
        assert (kept / path).is_file(), path
    _render_in_chromium(kept, min_images=len(shown))


# ------------------------------------------------------------------ every evaluation
UNIT_RANGE = {"accuracy", "balanced_accuracy", "macro_f1", "miou", "pixel_accuracy",
              "micro_map", "macro_map", "micro_f1"}


def _cells(records, table, metric):
    """{model: {column: value}} of one table and metric (one seed)."""
    out = {}
    for r in records:
        if r["table"] == table and r["metric"] == metric:
            out.setdefault(r["model"], {})[r["column"]] = r["value"]
    return out


def _check_records(records):
    """Every score finite and in its metric's range."""
    for r in records:
        if r["value"] is None:
            continue
        assert math.isfinite(r["value"]), r
        if r["metric"] in UNIT_RANGE:
            assert 0.0 <= r["value"] <= 1.0, r
        elif r["metric"] == "mean_r2":
            assert -1.0 <= r["value"] <= 1.0, r
        elif r["metric"] == "mean_rmse":
            assert r["value"] >= 0.0, r


def _check_cells(records, expect):
    """expect: {table: (metric, {model: columns that must hold a finite value})}."""
    for table, (metric, models) in expect.items():
        cells = _cells(records, table, metric)
        for model, cols in models.items():
            for col in cols:
                v = cells.get(model, {}).get(col)
                assert v is not None and math.isfinite(v), (table, model, col, cells)


def _check_picture(folder, md, name):
    """The PNG exists under figures/evaluations, is small, and the report shows it."""
    from PIL import Image

    path = folder / "figures" / "evaluations" / name
    assert path.is_file()
    assert f"](figures/evaluations/{name})" in md
    with Image.open(path) as im:
        assert im.info["dpi"][0] <= 100.5 and im.width < 1500


def test_benchmark_runs_every_evaluation(full_dir, sample_cache, tiny, small_evaluations):
    """Colorization through every evaluation on the real scene and the real BigEarthNet
    sample: each applies where it should, gives finite scores in range next to its reference
    rows (the random twin of the same 10-band encoder, the spectral baseline), and its
    pictures land in the report."""
    args = ["--cache", str(sample_cache), "benchmark", "--methods", "colorization",
            "--max-steps", "2", "--seeds", "0,", "--fractions", "0.5,1",
            "--split", "west-east", "--out", str(full_dir), "--no-progress"]
    assert main(args) == 0
    st = json.loads((full_dir / "status.json").read_text())
    failed = {k: v["error"] for k, v in st["evals"].items() if v["state"] == "failed"}
    assert not failed
    done = {k for k, v in st["evals"].items() if v["state"] == "done"}
    for ev in ("probe", "finetune", "pixel-probe", "segment", "regress", "multilabel",
               "ensemble", "pictures"):
        assert f"{ev}/colorization/seed0" in done
    assert st["evals"]["per-band/colorization/seed0"]["state"] == "not applicable"
    assert "not a band-wise" in st["evals"]["per-band/colorization/seed0"]["reason"]
    assert "change" not in {k.split("/")[0] for k in st["evals"]}  # no change labels here
    assert st["runs"]["colorization/seed0"]["collapse"]["collapsed"] is None  # 2 steps

    records = json.loads((full_dir / "results.json").read_text())["records"]
    _check_records(records)
    both = ("random init", "colorization")
    _check_cells(records, {
        "Fine-tuned classifier": ("accuracy", {m: {"100% labels"} for m in both}),
        "Pixel probe": ("balanced_accuracy", {m: {"labelled pixels"}
                                              for m in ("spectral baseline", *both)}),
        "Segmentation: fine-tuned U-Net": ("miou", {m: {"50% labels", "100% labels"}
                                                    for m in both}),
        "Segmentation: frozen encoder, linear probe": ("miou", {
            m: {"50% labels", "100% labels"} for m in both}),
        "Regression": ("mean_r2", {"spectral baseline": {"ridge, last stage"},
                                   **{m: {"ridge, last stage", "fine-tuned"} for m in both}}),
        "Multi-label (BigEarthNet v2)": ("micro_map", {
            "spectral baseline": {"linear, last stage"},
            **{m: {"linear, last stage", "fine-tuned"} for m in both}}),
        "RGB + spectral ensemble": ("accuracy", {m: {"rgb", "spectral", "ensemble"}
                                                 for m in both}),
    })
    # a label budget buys whole tiles: half the labels is fewer tiles than all of them
    seg = [r for r in records if r["table"] == "Segmentation: fine-tuned U-Net"
           and r["model"] == "colorization" and r["metric"] == "miou"]
    tiles = {r["column"]: r["tiles"] for r in seg}
    assert 0 < tiles["50% labels"] < tiles["100% labels"]
    # every reference row is the encoder's random twin: same architecture and inputs
    rows = [r for r in records if r["table"] == "_model"]
    sig = {(r["evaluation"], r["model"]): r["signature"] for r in rows}
    for (ev, model), s in sig.items():
        if model == "random init":
            assert s == sig[(ev, "colorization")], ev
    # multi-label data are L2A: the cirrus band the L1C-trained encoder takes is filled
    ml = next(r for r in rows if r["evaluation"] == "multilabel" and r["model"] ==
              "colorization")
    assert "filled with its training mean: B10" in ml["inputs"]

    md = (full_dir / "report.md").read_text()
    _check_picture(full_dir, md, "ensemble-saliency-colorization.png")
    _check_picture(full_dir, md, "colorization-colorization.png")
    # the held-out colour picture replaces the run's picture of training crops
    assert "runs/colorization/seed0/colorization.png" not in md
    # the protocol that ran (the tiny settings) is printed with each evaluation, and every
    # row's architecture and inputs
    assert "2 AdamW steps of batch 4" in md and "about 1 epochs of batch 64" in md
    assert ">= 50% labelled pixels" in md
    assert "**random init**: the random twin of colorization" in md
    assert "on 10 bands (B01, B05, B06, B07, B08, B8A, B09, B10, B11, B12)" in md
    # the ensemble claim is checked unit by unit against each member, in both metrics
    assert re.search(r"in the \*\*colorization\*\* row, ensemble (beats|does not beat) rgb", md)
    assert re.search(r"Regression, ridge, last stage, against its random twin: ", md)
    assert re.search(r"- per-band: not applicable to colorization \(seed 0\) \(not a band", md)
    assert "## Evaluation cost" in md
    dom = _render_in_chromium(full_dir)
    assert "RGB + spectral ensemble" in dom and "Regression" in dom


def test_benchmark_per_band_table_of_a_bandwise_encoder(band_dir, sample_cache, tiny,
                                                        small_evaluations):
    """RS-BYOL (its recipe's S1/S2 pairs, not the plan's scene) gets the per-band table and
    heat map and a U-Net on its band-wise encoder; the ensemble does not apply (its pool holds
    the visible bands) and says why."""
    args = ["--cache", str(sample_cache), "benchmark", "--methods", "rsbyol",
            "--max-steps", "2", "--seeds", "0,", "--evaluations",
            "per-band,segment,ensemble", "--split", "west-east", "--out", str(band_dir),
            "--no-progress"]
    assert main(args) == 0
    st = json.loads((band_dir / "status.json").read_text())
    assert st["runs"]["rsbyol/seed0"]["data"] == "bigearthnet-pairs"
    assert st["evals"]["per-band/rsbyol/seed0"]["state"] == "done"
    assert st["evals"]["segment/rsbyol/seed0"]["state"] == "done"
    key = "ensemble/rsbyol/seed0"
    assert st["evals"][key]["state"] == "not applicable"
    assert "sees none of the visible bands" in st["evals"][key]["reason"]
    # nothing applied, so no reference rows were computed for it
    assert not any(k.startswith("ensemble/_") for k in st["evals"])
    records = json.loads((band_dir / "results.json").read_text())["records"]
    _check_records(records)
    cols = {"B04", "B11", "all used bands"}
    _check_cells(records, {"Per-band linear probe": ("accuracy", {
        "spectral baseline": {"B04", "B11"}, "random init": cols, "rsbyol": cols})})
    md = (band_dir / "report.md").read_text()
    assert re.search(r"\| model \| B04 \| B11 \| all used bands \|", md)  # also a table
    _check_picture(band_dir, md, "per-band-heatmap.png")
    assert "Bands probed: B04, B11." in md
    assert re.search(r"ensemble: not applicable to rsbyol \(seed 0\) \(needs an encoder", md)
    dom = _render_in_chromium(band_dir, min_images=1)
    assert "Per-band linear probe" in dom
