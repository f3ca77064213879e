"""What an evaluation's records say, as report blocks: the protocol (with every row's
architecture and inputs), one table per metric (mean and 95% confidence interval over seeds and
folds, flags for collapsed encoders and scarce labels), the per-unit numbers, and findings
that hold seed by seed and fold by fold or say they do not.

Blocks are plain tuples (``("h2", text)``, ``("p", text)``, ``("list", items)``,
``("table", rows)``, ``("details", summary, rows)``, ``("img", path, caption)``) that
:mod:`eossl.report` renders to Markdown and to HTML alike.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..models.encoder import RANDOM_TWIN
from . import results as R

COLLAPSED = "⚠ collapsed"
FEW = "‡"


# ------------------------------------------------------------------------------ rows
def row_infos(records: list[dict]) -> dict[str, dict]:
    """{row: info} from the ``_model`` records (collapse flagged if any seed collapsed)."""
    out: dict[str, dict] = {}
    for r in records:
        if r.get("table") != "_model":
            continue
        info = out.setdefault(r["model"], dict(r))
        if r.get("collapsed"):
            info["collapsed"] = True
            info.setdefault("collapsed_seeds", []).append(r["seed"])
    return out


def row_order(records: list[dict], infos: dict[str, dict]) -> list[str]:
    """Spectral baseline, then the random twins, then the encoders, in order of appearance."""
    present = list(dict.fromkeys(r["model"] for r in records if not R.hidden(r)))
    ref = [m for m in present if m == R.SPECTRAL]
    twins = [m for m in present if infos.get(m, {}).get("role") == "twin"]
    rest = [m for m in present if m not in ref and m not in twins]
    return ref + twins + rest


# One colour per row in every plot of a report. Methods take the colours of a palette with no
# grey in it (matplotlib's tab10 and the light half of tab20, greys left out), in the order the
# report lists them; the references keep theirs: the spectral baseline black, random twins grey,
# both dashed, so no method is ever drawn like a reference.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5",
           "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5")
SPECTRAL_COLOUR, TWIN_COLOUR = "#000000", "#8a8a8a"


def row_colours(rows: list[str], infos: dict[str, dict] | None = None) -> dict[str, str]:
    """{row: colour} for every plot of one report; ``rows`` in report order (methods first
    seen first); ``infos`` (row_infos) tells which rows are random twins."""
    infos = infos or {}
    out, k = {}, 0
    for m in dict.fromkeys(rows):
        if m == R.SPECTRAL:
            out[m] = SPECTRAL_COLOUR
        elif infos.get(m, {}).get("role") == "twin" or m.startswith(RANDOM_TWIN):
            out[m] = TWIN_COLOUR
        else:
            out[m] = PALETTE[k % len(PALETTE)]
            k += 1
    return out


def is_reference(model: str, infos: dict[str, dict]) -> bool:
    return (model == R.SPECTRAL or infos.get(model, {}).get("role") == "twin"
            or model.startswith(RANDOM_TWIN))


def label(model: str, infos: dict[str, dict]) -> str:
    return f"{model} {COLLAPSED}" if infos.get(model, {}).get("collapsed") else model


# ------------------------------------------------------------------------------ cells
def _cells(recs: list[dict]) -> tuple[list[str], dict]:
    """Columns in order, and {model: {column: {(seed, fold): value}}}."""
    cols = sorted({(r.get("order", 0), r["column"]) for r in recs})
    cells: dict = defaultdict(lambda: defaultdict(dict))
    for r in recs:
        cells[r["model"]][r["column"]][(r["seed"], r.get("fold", 0))] = r["value"]
    return list(dict.fromkeys(c for _, c in cols)), cells


def _fmt(values) -> str:
    mean, half = R.mean_ci(list(values))
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.3f}" + (f" ± {half:.3f}" if half is not None else "")


def metric_tables(recs: list[dict], metric: str, models: list[str], infos: dict,
                  lower: bool = False) -> tuple[list, list, bool]:
    """(summary rows, per-unit rows, any scarce-label cell) for one table and metric; the best
    mean per column is bold (the lowest for an error such as RMSE)."""
    cols, cells = _cells([r for r in recs if r["metric"] == metric])
    few = {(r["model"], r["column"]) for r in recs
           if (r.get("min_per_class") or R.FEW_LABELS) < R.FEW_LABELS}
    means = {c: {m: R.mean_ci(list(cells[m].get(c, {}).values()))[0] for m in models}
             for c in cols}
    summary, units = [["model"] + cols], [["model"] + cols]
    for m in models:
        row, urow = [label(m, infos)], [label(m, infos)]
        for c in cols:
            vals = cells[m].get(c, {})
            txt = _fmt(vals.values())
            finite = [v for v in means[c].values() if np.isfinite(v)]
            if txt != "–" and finite and np.isclose(means[c][m],
                                                    min(finite) if lower else max(finite)):
                txt = f"**{txt}**"
            if (m, c) in few and txt != "–":
                txt += f" {FEW}"
            row.append(txt)
            urow.append(" / ".join("–" if vals[u] is None else f"{vals[u]:.3f}"
                                   for u in sorted(vals)) or "–")
        summary.append(row)
        units.append(urow)
    return summary, units, bool(few)


# ------------------------------------------------------------------------------ findings
@dataclass
class Comparison:
    """One paired comparison: ``a`` against ``b`` in one table column, unit by unit."""

    table: str
    column: str
    a: str
    b: str
    kind: str                      # "twin", "spectral" or "pair"
    wins: dict = field(default_factory=dict)    # metric -> (wins, units)
    diffs: dict = field(default_factory=dict)   # metric -> mean difference (a - b, signed)
    p: float | None = None         # paired t-test on the first metric
    p_holm: float | None = None

    @property
    def verdict(self) -> str:
        if not self.wins or any(n == 0 for _, n in self.wins.values()):
            return "none"
        if all(w == n for w, n in self.wins.values()):
            return "beats"
        if all(w == 0 for w, _ in self.wins.values()):
            return "loses"
        return "mixed"


def _compare(table, column, a, b, kind, cells_by_metric, metrics, lower) -> Comparison:
    c = Comparison(table, column, a, b, kind)
    first_diffs = None
    for metric in metrics:
        va = cells_by_metric[metric][a].get(column, {})
        vb = cells_by_metric[metric][b].get(column, {})
        paired = R.paired_diffs(va, vb)
        d = [x * (-1 if metric in lower else 1) for x in paired.values()]
        c.wins[metric] = (sum(x > 0 for x in d), len(d))
        c.diffs[metric] = float(np.mean(list(paired.values()))) if paired else np.nan
        if first_diffs is None:
            first_diffs = d
    c.p = R.paired_t_p(first_diffs or [])
    return c


def comparisons(ev, recs: list[dict], models: list[str], infos: dict) -> list[Comparison]:
    """Every method against its random twin and against the spectral baseline, and the
    evaluation's own column pairs (e.g. ensemble vs its members), per table and column."""
    metrics = [m for m in ev.finding_metric_names() if any(r["metric"] == m for r in recs)]
    lower = set(ev.lower_is_better)
    out = []
    for table in dict.fromkeys(r["table"] for r in recs):
        trecs = [r for r in recs if r["table"] == table]
        by_metric = {m: _cells([r for r in trecs if r["metric"] == m])[1] for m in metrics}
        if not metrics:
            continue
        cols = _cells([r for r in trecs if r["metric"] == metrics[0]])[0]
        cols = [c for c in cols if ev.finding_columns is None or c in ev.finding_columns]
        methods = [m for m in models if infos.get(m, {}).get("role") == "encoder"]
        present = set(by_metric[metrics[0]])
        for c in cols:
            for m in methods:
                if m not in present:
                    continue
                twin = infos[m].get("twin")
                if twin and twin in present:
                    out.append(_compare(table, c, m, twin, "twin", by_metric, metrics, lower))
                if R.SPECTRAL in present:
                    out.append(_compare(table, c, m, R.SPECTRAL, "spectral", by_metric,
                                        metrics, lower))
        for a, b in ev.comparisons:  # columns compared within each row
            for m in [m for m in models if m in present]:
                cmp = Comparison(table, f"{a} vs {b}", m, m, "pair")
                first = None
                for metric in metrics:
                    cells = by_metric[metric][m]
                    va, vb = cells.get(a, {}), cells.get(b, {})
                    d = [x * (-1 if metric in lower else 1)
                         for x in R.paired_diffs(va, vb).values()]
                    cmp.wins[metric] = (sum(x > 0 for x in d), len(d))
                    cmp.diffs[metric] = float(np.mean(d)) if d else np.nan
                    first = d if first is None else first
                cmp.p = R.paired_t_p(first or [])
                out.append(cmp)
    return out


def adjust(all_comparisons: list[Comparison]) -> None:
    """Holm's correction over every comparison of a report (its whole family of tests)."""
    for c, p in zip(all_comparisons, R.holm([c.p for c in all_comparisons])):
        c.p_holm = p


def _name(metric: str) -> str:
    return metric.replace("_", " ").replace("miou", "mIoU").replace("map", "mAP")


def finding_lines(ev, comps: list[Comparison], infos: dict, recs: list[dict]) -> list[str]:
    """Findings of one evaluation, grouped per table, column and reference."""
    metrics = [m for m in ev.finding_metric_names() if any(r["metric"] == m for r in recs)]
    mtext = " and ".join(_name(m) for m in metrics)
    lines = []
    groups: dict = defaultdict(list)
    for c in comps:
        groups[(c.table, c.column, c.kind)].append(c)
    for (table, column, kind), cs in groups.items():
        few = any((r.get("min_per_class") or R.FEW_LABELS) < R.FEW_LABELS for r in recs
                  if r["table"] == table and r["column"] == column)
        where = f"{table}, {column}" + (f" ({FEW} fewer than {R.FEW_LABELS} labelled examples "
                                        "per class)" if few else "")

        def entry(c: Comparison, who: str) -> str:
            d = ", ".join(f"Δ {_name(m)} {c.diffs[m]:+.3f}" for m in metrics
                          if np.isfinite(c.diffs.get(m, np.nan)))
            p = f"; Holm p = {c.p_holm:.3g}" if c.p_holm is not None else ""
            return f"{label(who, infos)} ({d}{p})"

        if kind == "pair":
            for c in cs:
                a, b = column.split(" vs ")
                lines.append(f"{where}: in the **{c.a}** row, {a} "
                             + _verdict_text(c, b, mtext) + f" ({entry(c, c.a)[len(c.a) + 2:]}")
            continue
        ref = "its random twin" if kind == "twin" else "the spectral baseline"
        by = defaultdict(list)
        for c in cs:
            by[c.verdict].append(c)
        n_units = max((n for c in cs for _, n in c.wins.values()), default=0)
        parts = []
        if by["beats"]:
            parts.append(f"rows that beat {ref} on every seed and fold (n = {n_units}) in {mtext}: "
                         + ", ".join(entry(c, c.a) for c in by["beats"]))
        if by["loses"]:
            parts.append(f"rows that lose to {ref} on every seed and fold in {mtext}: "
                         + ", ".join(entry(c, c.a) for c in by["loses"]))
        if by["mixed"]:
            parts.append("no consistent difference (wins per metric " + "; ".join(
                f"{label(c.a, infos)} " + ", ".join(f"{_name(m)} {w}/{n}" for m, (w, n) in
                                                    c.wins.items()) for c in by["mixed"]) + ")")
        if parts:
            lines.append(f"{where}, against {ref}: " + "; ".join(parts) + ".")
    # the highest mean of each column, said to be a pick
    for table in dict.fromkeys(r["table"] for r in recs):
        if not metrics:
            break
        first = metrics[0]
        lower = first in ev.lower_is_better
        cols, cells = _cells([r for r in recs if r["table"] == table and r["metric"] == first])
        methods = [m for m in cells if infos.get(m, {}).get("role") == "encoder"]
        if len(methods) < 2:
            continue
        for c in cols:
            means = {m: R.mean_ci(list(cells[m].get(c, {}).values()))[0] for m in methods}
            means = {m: v for m, v in means.items() if np.isfinite(v)}
            if len(means) < 2:
                continue
            best = (min if lower else max)(means, key=means.get)
            lines.append(f"{table}, {column_text(c)}: the {'lowest' if lower else 'highest'} "
                         f"mean {_name(first)} is {label(best, infos)}'s ({means[best]:.3f}), "
                         f"picked among {len(means)} methods by its mean: a description, not a "
                         "tested claim.")
    return lines


def column_text(c: str) -> str:
    return c


def _verdict_text(c: Comparison, b: str, mtext: str) -> str:
    v = c.verdict
    n = max((n for _, n in c.wins.values()), default=0)
    if v == "beats":
        return f"beats {b} on every seed and fold (n = {n}) in {mtext}"
    if v == "loses":
        return f"does not beat {b} on any seed or fold in {mtext}"
    return (f"beats {b} on some seeds and folds only ("
            + ", ".join(f"{_name(m)} {w}/{n}" for m, (w, n) in c.wins.items()) + ")")


# ------------------------------------------------------------------------------ blocks
def protocol_blocks(ev, records: list[dict], infos: dict, models: list[str],
                    folds_text: str) -> list[tuple]:
    rows = []
    for m in models:
        info = infos.get(m, {})
        if m == R.SPECTRAL:
            rows.append(f"**{m}**: no network; hand-crafted features (see above)")
            continue
        what = info.get("inputs") or info.get("architecture") or ""
        if info.get("role") == "twin":
            rows.append(f"**{m}**: the random twin of {', '.join(info.get('twin_of', []))}: "
                        f"the same architecture, stem, bands and normalisation with weights "
                        f"drawn from each seed; {what}")
        else:
            twin = f"; reference row: {info['twin']}" if info.get("twin") else ""
            if info.get("origin"):
                twin += f"; {info['origin']}"
            if info.get("pretraining"):
                twin += f"; {info['pretraining']}"
            col = ""
            if info.get("collapsed"):
                cs = info.get("collapse") or {}
                col = (f"; {COLLAPSED}: the collapse monitor tripped in pretraining (embedding "
                       f"spread {cs.get('embed_std_ratio', float('nan')):.2f} of a healthy one, "
                       f"mean cosine {cs.get('embed_cos', float('nan')):.3f})")
            rows.append(f"**{m}**: {what}{twin}{col}")
    out = [("p", f"**Protocol.** {ev.protocol()} **Splits:** {folds_text}")]
    if rows:
        out += [("p", "**Rows** (architecture and inputs):"), ("list", rows)]
    return out


def evaluation_blocks(ev, records: list[dict], *, folds_text: str, figures: Path | None = None,
                      level: int = 2, colours: dict[str, str] | None = None
                      ) -> tuple[list[tuple], list[Comparison]]:
    """Blocks of one evaluation's section and its comparisons (for the findings: the caller
    Holm-adjusts over the whole report and then calls :func:`finding_lines`)."""
    recs = [r for r in records if r.get("evaluation") == ev.name]
    infos = row_infos(recs)
    table_recs = [r for r in recs if not R.hidden(r)]
    models = row_order(table_recs, infos)
    h = f"h{level}"
    sub, subsub = f"h{level + 1}", f"h{min(level + 2, 4)}"
    blocks: list[tuple] = [(h, ev.title)]
    blocks += protocol_blocks(ev, recs, infos, models, folds_text)
    lower = set(ev.lower_is_better)
    tables = [t for t in ev.tables if any(r["table"] == t for r in table_recs)]
    tables += [t for t in dict.fromkeys(r["table"] for r in table_recs) if t not in tables]
    for t in tables:
        trecs = [r for r in table_recs if r["table"] == t]
        tmodels = [m for m in models if any(r["model"] == m for r in trecs)]
        metrics = list(dict.fromkeys(r["metric"] for r in trecs))
        metrics = [m for m in ev.shown_metrics if m in metrics] or metrics
        units = sorted({(r["seed"], r.get("fold", 0)) for r in trecs})
        if t != ev.title:
            blocks.append((sub, t))
        for metric in metrics:
            summary, per_unit, few = metric_tables(trecs, metric, tmodels, infos,
                                                   lower=metric in lower)
            best = "lowest" if metric in lower else "best"
            blocks += [(subsub, f"{_name(metric)}: mean ± 95% CI over {len(units)} "
                                f"seed × fold unit(s); {best} mean in bold"),
                       ("table", summary),
                       ("details", f"per unit {_name(metric)} ("
                                   + ", ".join(f"s{s}/f{f}" for s, f in units)
                                   + ": seed s, fold f)", per_unit)]
            if few:
                blocks.append(("p", f"{FEW} fewer than {R.FEW_LABELS} labelled training "
                                    "examples per class in that cell: read it as anecdote."))
        if figures is not None and ev.fraction_tables and len({r["order"] for r in trecs}) > 1:
            metric = metrics[0]
            p = plot_fraction_curves(trecs, t, metric, tmodels, infos,
                                     figures / f"{_slug(t)}-fractions.png",
                                     xlabel=ev.fraction_label,
                                     colours=colours or row_colours(models, infos))
            if p:
                blocks.append(("img", p, f"{t}: score vs label fraction"))
    for f in recs:
        if f.get("table") == "_figure" and figures is not None:
            blocks.append(("img", figures.parent / f["path"], f["caption"]))
    if figures is not None:
        for p, caption in ev.figures(recs, figures.parent):
            blocks.append(("img", p, caption))
    comps = comparisons(ev, table_recs, models, infos)
    return blocks, comps


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")


def plot_fraction_curves(recs: list[dict], table: str, metric: str, models: list[str],
                         infos: dict, path: Path, xlabel: str | None = None,
                         colours: dict[str, str] | None = None) -> Path | None:
    """Score vs label fraction, one line per row in the row's colour of the report: the mean
    over seeds and folds with error bars of the table's 95% CI (the same mean_ci)."""
    from ..report import save_figure

    recs = [r for r in recs if r["metric"] == metric and r["value"] is not None]
    if not recs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=100)
    colours = colours or row_colours(models, infos)
    for m in models:
        by = defaultdict(list)
        for r in recs:
            if r["model"] == m:
                by[r["order"]].append(r["value"])
        if not by:
            continue
        xs = sorted(by)
        stats = [R.mean_ci(by[x]) for x in xs]
        ref = is_reference(m, infos)
        ax.errorbar([x * 100 for x in xs], [s[0] for s in stats],
                    yerr=[s[1] or 0 for s in stats], marker="o", capsize=3,
                    label=label(m, infos), ls="--" if ref else "-",
                    color=colours.get(m, TWIN_COLOUR if ref else PALETTE[0]))
    ax.set_xscale("log")
    ax.set_xlabel(xlabel or "labelled training patches used (%)")
    ax.set_ylabel(_name(metric))
    ax.set_title(f"{table}: {_name(metric)} vs label fraction (95% CI)", fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a plot of unlabelled rows needs no legend
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path)


FINDINGS_NOTE = ("Each line compares every method with its own random twin (same architecture, "
                 "stem, bands and normalisation, random weights) and with the spectral "
                 "baseline, unit by unit (a unit is one seed on one spatial fold); a method "
                 "'beats' a reference only when it is better on every unit in every metric "
                 "named. p-values: paired t-tests over units on the first metric named, "
                 "Holm-adjusted over all {n} comparisons of this report. ⚠ collapsed: the "
                 "pretraining's collapse monitor tripped.")


HOW_TO_READ = [
    "**Rows.** Each pretrained encoder is one row. Its reference is its **random twin**: the "
    "same architecture, stem, bands and normalisation with random weights, so a difference to "
    "it is what the pretraining learnt. **spectral** is a baseline without a network "
    "(per-band statistics of each patch). Each section's protocol lists every row's "
    "architecture and inputs.",
    "**Cells.** mean ± half-width of the 95% confidence interval (Student t) over units; a "
    "unit is one seed on one spatial fold (train and test areas apart, with a gap). The "
    "best mean of a column is bold; two cells whose intervals overlap are not told apart. "
    "Every unit's own number is under 'per unit'; plots show the same means and intervals.",
    "**Flags.** ⚠ collapsed: the pretraining's collapse monitor tripped (its embeddings "
    "carry little information); ‡: fewer than a handful of labelled examples per class in that "
    "cell's training set.",
    "**Findings** say 'beats' only when a row is better on every unit in every metric named "
    "(accuracy and balanced accuracy for classification), and say so when the best row was "
    "picked among several by its mean.",
]


def report_blocks(evaluations, records: list[dict], *, title: str, header: list[str],
                  splits: dict[str, str], figures: Path | None = None, level: int = 2,
                  colours: dict[str, str] | None = None, contents: bool = True
                  ) -> list[tuple]:
    """A whole report: title, header lines, how to read it, a table of contents
    (``contents``), the findings of every evaluation (p-values adjusted over all of them
    together), then one section per evaluation (``splits``: each evaluation's folds, in a
    sentence). ``colours``: {row: colour} for every plot (default: row_colours over the rows
    of all records, in report order)."""
    if colours is None:
        infos = row_infos(records)
        colours = row_colours(row_order([r for r in records if not R.hidden(r)], infos), infos)
    sections, comps = [], []
    for ev in evaluations:
        blocks, c = evaluation_blocks(ev, records, folds_text=splits.get(ev.name, ""),
                                      figures=figures, level=level, colours=colours)
        sections.append((ev, blocks, c))
        comps += c
    adjust(comps)
    findings = []
    for ev, _, c in sections:
        recs = [r for r in records if r.get("evaluation") == ev.name]
        findings += finding_lines(ev, c, row_infos(recs), [r for r in recs if not R.hidden(r)])
    out = [("h1", title), ("list", header)]
    if contents:
        out += [(f"h{level}", "How to read this report"), ("list", HOW_TO_READ), ("toc",)]
    out += [(f"h{level}", "Findings"),
           ("p", FINDINGS_NOTE.format(n=len(comps))),
           ("list", findings or ["no evaluation finished yet"])]
    for _, blocks, _ in sections:
        out += blocks
    return out
