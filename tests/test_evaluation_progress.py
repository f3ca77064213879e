"""Evaluations show progress on stderr that counts their real units of work (runs of an
encoder, twin or baseline for one seed, in folds; fine-tuning steps below), with an honest
total; --no-progress hides it."""

from __future__ import annotations

import re

from eossl.checkpoint import load_encoder
from eossl.cli import main
from eossl.evaluate.base import Context, compare
from eossl.evaluate.segment import Segmentation
from eossl.progress import Work, inner_bar


def _final(err: str, desc: str) -> str:
    """The last state a bar called ``desc`` was drawn in (tqdm redraws with carriage
    returns)."""
    states = [s for s in re.split(r"[\r\n]", err) if s.startswith(f"{desc}:")]
    assert states, err
    return states[-1]


def test_work_counts_runs_until_the_folds_are_known_then_folds():
    with Work("x", runs=3, enabled=False) as w:
        w.end_run()  # a run without folds (a baseline the evaluation does not have)
        assert (w.bar.n, w.bar.total) == (1, 3)
        for _ in w.track(["fold 0", "fold 1"]):
            pass
        assert (w.bar.n, w.bar.total) == (4, 6)  # one run done, two folds of the next
        w.end_run()
        assert w.bar.n == 4
        for i, _ in enumerate(w.track(["a", "b"])):
            assert w.bar.n == 4 + i
        w.end_run()
        assert (w.bar.n, w.bar.total) == (6, 6)


def test_evaluate_probe_counts_encoders_seeds_and_folds(tmp_path, sample_cache,
                                                         tiny_checkpoints, capsys,
                                                         monkeypatch):
    args = ["--cache", str(sample_cache), "evaluate", "probe", "--checkpoint",
            f"moco={tiny_checkpoints['moco']}", "--seeds", "0", "--fractions", "1",
            "--layers", "last", "--C", "1", "--split", "kfold:k=2"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    out, err = capsys.readouterr()
    # 3 runs (baseline, moco, its random twin) x 2 folds
    # the rate reads "fold/s" or "s/fold" depending on the machine's speed
    assert re.search(r"100%\|.*\| 6/6 \[.*(fold/s|s/fold)\]", _final(err, "probe")), err
    assert "probe: moco, seed 0" in out  # each run still named on stdout
    # --no-progress reaches the evaluation (compare() draws the bar, tested below)
    from eossl.evaluate import base

    asked = []
    monkeypatch.setattr(base, "compare", lambda *a, **k: asked.append(k["progress"]) or [])
    probe = args[:2] + ["probe"] + args[4:10]  # the top-level probe: no --C
    for argv in (probe, probe + ["--no-progress"], args + ["--no-progress"]):
        assert main(argv + ["--out", str(tmp_path / f"b{len(asked)}")]) == 0
    assert asked == [True, False, False]


class FewTiles(Context):
    """The real scene's first fold cut to a few tiles: a segmentation at a test's cost."""

    def tile_folds(self, size):
        def few(ds, n):
            ds.items = ds.items[::max(1, len(ds.items) // n)][:n]
            return ds

        return self.cached(("few-tiles", size), lambda: [
            (few(tr, 6), few(te, 4)) for tr, te in super(FewTiles, self).tile_folds(size)[:1]])


def test_segment_shows_each_fine_tuning_step(sample_cache, tiny_checkpoints, capsys):
    """The U-Net fine-tuning and the linear probe of each fold show their steps below the
    fold bar, so the evaluation never sits silent through a fit."""
    ev = Segmentation(steps=3, probe_steps=2, fractions=(1.0,), batch_size=4)
    ctx = FewTiles("brandenburg", cache=sample_cache)
    encoders = {"moco": load_encoder(tiny_checkpoints["moco"])}
    records = compare(ev, ctx, encoders, [0], progress=True)
    err = capsys.readouterr().err
    # no baseline: the encoder and its random twin, one fold each
    assert re.search(r"100%\|.*\| 2/2 \[", _final(err, "segment")), err
    fits = [s for s in re.split(r"[\r\n]", err) if s.startswith("fine-tuning:")]
    # a fit's bar is drawn with its step count (U-Net 3, probe 2); a fast fit may end between
    # two redraws (tqdm's mininterval) and its bar is cleared on close, so its totals are what
    # every run shows
    assert any("/3 [" in s for s in fits) and any("/2 [" in s for s in fits), fits
    assert {r["model"] for r in records if r["metric"] == "miou"} == {"moco", "random init"}


def test_fits_show_their_steps_only_inside_a_shown_evaluation_bar(capsys):
    assert inner_bar(3, "fine-tuning").disable  # no evaluation bar open
    with Work("x", runs=1, enabled=False):
        assert inner_bar(3, "fine-tuning").disable
    with Work("x", runs=1, enabled=True):
        with inner_bar(3, "fine-tuning") as b:
            assert not b.disable
            b.update(3)
    assert "fine-tuning" in capsys.readouterr().err
