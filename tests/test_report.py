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
