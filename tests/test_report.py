"""One renderer for every report: the same blocks as Markdown beside PNG files and as one
self-contained HTML page; atomic writes of results and pictures."""

import base64

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from eossl.report import blocks_to_text, save_figure, to_html, to_markdown, write_blocks  # noqa: E402


def _blocks(tmp_path):
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1])
    png = save_figure(fig, tmp_path / "figures" / "curve.png", dpi=50)
    return [("h1", "Title"), ("p", "Some **bold** and `code`."), ("list", ["one", "two"]),
            ("table", [["model", "10%"], ["moco", "**0.610 ± 0.020**"]]),
            ("details", "per unit", [["model", "10%"], ["moco", "0.600 / 0.620"]]),
            ("img", png, "a curve"), ("img", tmp_path / "missing.png", "gone")], png


def test_markdown_and_html_from_the_same_blocks(tmp_path):
    blocks, png = _blocks(tmp_path)
    md = to_markdown(blocks[:-1], tmp_path)
    assert "# Title" in md and "- two" in md
    assert "| moco | **0.610 ± 0.020** |" in md and "![a curve](figures/curve.png)" in md
    assert "<details><summary>per unit</summary>" in md
    html = to_html(blocks[:-1], title="t")
    assert "<b>bold</b>" in html and "<code>code</code>" in html
    assert "<td><b>0.610 ± 0.020</b></td>" in html
    assert base64.b64encode(png.read_bytes()).decode() in html  # inlined, self-contained
    assert 'src="figures/' not in html
    text = blocks_to_text(blocks)
    assert "| moco |" in text and "curve" not in text and "per unit" not in text


def test_write_blocks_writes_both_and_skips_missing_pictures(tmp_path):
    blocks, _ = _blocks(tmp_path)
    md_path = write_blocks(tmp_path, blocks, title="t")
    assert md_path.name == "report.md" and (tmp_path / "report.html").exists()
    md = md_path.read_text()
    assert "a curve" in md and "gone" not in md


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


def test_contents_link_every_later_section_with_the_same_anchors_in_both_formats():
    import re
    from pathlib import Path

    blocks = [("h1", "eossl benchmark"), ("h2", "How to read this report"), ("list", ["x"]),
              ("toc",), ("h2", "Findings"), ("p", "y"), ("h2", "Linear probe (last stage)"),
              ("h3", "kNN probe (k = 20)"), ("h2", "Findings")]
    md = to_markdown(blocks, Path("."))
    toc = md.split("**Contents**")[1].split("\n\n")[1].splitlines()
    assert toc == ["- [Findings](#findings)",
                   "- [Linear probe (last stage)](#linear-probe-last-stage)",
                   "  - [kNN probe (k = 20)](#knn-probe-k--20)",  # GitHub's anchors
                   "- [Findings](#findings-1)"]
    html = to_html(blocks)
    links = re.findall(r'<a href="#([^"]+)">', html)
    assert links == ["findings", "linear-probe-last-stage", "knn-probe-k--20", "findings-1"]
    for anchor in links:
        assert html.count(f'id="{anchor}"') == 1
    assert 'id="how-to-read-this-report"' in html and "how-to-read" not in "".join(links)
    assert "Contents" not in blocks_to_text(blocks)  # the terminal gets no links


def test_plots_give_each_row_one_colour_and_the_tables_confidence_interval(tmp_path,
                                                                           monkeypatch):
    """Methods never get a reference's colour or any grey; a fraction plot draws each row in
    its colour with error bars equal to the table's ± (the same mean_ci, ddof 1)."""
    from matplotlib.axes import Axes
    from matplotlib.colors import to_rgb

    from eossl.evaluate import results as R
    from eossl.evaluate.summary import (SPECTRAL_COLOUR, TWIN_COLOUR, metric_tables,
                                        plot_fraction_curves, row_colours)

    methods = ["simclr", "moco", "byol", "dino", "mae", "dense", "seco", "rsbyol",
               "colorization", "spectral"]
    infos = {"random init": {"role": "twin"}, **{m: {"role": "encoder"} for m in methods}}
    colours = row_colours([R.SPECTRAL, "random init", *methods], infos)
    used = [colours[m] for m in methods]
    assert len(set(used)) == len(methods)
    assert colours[R.SPECTRAL] == SPECTRAL_COLOUR and colours["random init"] == TWIN_COLOUR
    for c in used:
        r, g, b = to_rgb(c)
        assert max(r, g, b) - min(r, g, b) > 0.1, c  # no grey, so never mistaken for one

    values = {R.SPECTRAL: [0.5, 0.55, 0.7], "simclr": [0.6, 0.66, 0.61]}
    recs = [R.record("probe", "T", m, seed, fold, "10% labels", 0.1, "accuracy", v)
            for m, vs in values.items() for (seed, fold), v in zip([(0, 0), (0, 1), (1, 0)], vs)]
    recs += [R.record("probe", "T", m, 0, 0, "100% labels", 1.0, "accuracy", 0.7)
             for m in values]
    drawn = {}

    def errorbar(self, x, y, yerr=None, **kw):
        drawn[kw["label"]] = (y[0], yerr[0], kw["color"])

    monkeypatch.setattr(Axes, "errorbar", errorbar)
    assert plot_fraction_curves(recs, "T", "accuracy", list(values), infos,
                                tmp_path / "f.png", colours=colours).is_file()
    table, _, _ = metric_tables(recs, "accuracy", list(values), infos)
    for m, row in zip(values, table[1:]):
        mean, half = R.mean_ci(values[m])
        assert drawn[m][:2] == (mean, half) and drawn[m][2] == colours[m]
        assert row[1].strip("*").startswith(f"{mean:.3f} ± {half:.3f}")
