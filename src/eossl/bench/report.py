"""The benchmark report: one list of blocks (headings, text, tables, figures) rendered twice,
as Markdown beside PNG files and as a single self-contained HTML file (images inlined).

Everything is read from the benchmark folder, so ``eossl report DIR`` re-renders without
recomputing. Every claim in the findings is printed with the per-seed numbers behind it.
"""

from __future__ import annotations

import base64
import html
import json
import platform
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..evaluate.compare import RANDOM, SPECTRAL
from ..report import atomic_write_text, save_figure
from .plan import BenchmarkFolder

REFERENCES = (SPECTRAL, RANDOM)


def environment() -> dict:
    import os

    import lightning
    import torch

    from .. import __version__

    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = float("nan")
    return {"eossl": __version__, "torch": torch.__version__, "lightning": lightning.__version__,
            "python": platform.python_version(),
            "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores, "
                       f"{mem:.0f} GiB RAM, CUDA: {torch.cuda.is_available()}"}


# ------------------------------------------------------------------------------- tables
def _fmt(vals: list[float]) -> str:
    vals = [v for v in vals if v is not None and np.isfinite(v)]
    if not vals:
        return "–"
    mu = float(np.mean(vals))
    return f"{mu:.3f}" + (f" ± {np.std(vals, ddof=1):.3f}" if len(vals) > 1 else "")


def _hidden(record: dict) -> bool:
    """Records that are not table cells (scatter points, picture locations)."""
    return str(record.get("table", "")).startswith("_")


def _models(records: list[dict], plan_methods: list[str]) -> list[str]:
    present = list(dict.fromkeys(r["model"] for r in records if not _hidden(r)))
    refs = [m for m in REFERENCES if m in present]
    rest = [m for m in plan_methods if m in present]
    rest += [m for m in present if m not in refs and m not in rest]
    return refs + rest


def _grid(records: list[dict]) -> tuple[list[str], dict]:
    cols = sorted({(r.get("order", 0), r["column"]) for r in records})
    cells: dict = defaultdict(dict)
    for r in records:
        cells[r["model"]].setdefault(r["column"], {})[r["seed"]] = r["value"]
    return [c for _, c in cols], cells


def _means(cells: dict, cols: list[str], models: list[str]) -> dict:
    """{column: {model: mean over seeds (NaN where nothing finished)}}."""
    def mean(vals):
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)) if vals else np.nan

    return {c: {m: mean(cells[m].get(c, {}).values()) for m in models} for c in cols}


def metric_tables(records: list[dict], metric: str, models: list[str],
                  lower_is_better: bool = False) -> tuple[list, list]:
    """(summary rows, per-seed rows) for one table and metric; the best mean per column (the
    highest, or the lowest for an error such as RMSE) is marked with ``**``."""
    cols, cells = _grid([r for r in records if r["metric"] == metric])
    means = _means(cells, cols, models)
    pick = np.nanmin if lower_is_better else np.nanmax
    best = {c: pick(list(means[c].values())) if np.isfinite(list(means[c].values())).any()
            else np.nan for c in cols}
    summary = [["model"] + cols]
    seeds = [["model"] + cols]
    for m in models:
        row, srow = [m], [m]
        for c in cols:
            vals = cells[m].get(c, {})
            txt = _fmt(list(vals.values()))
            if txt != "–" and np.isclose(means[c][m], best[c]):
                txt = f"**{txt}**"
            row.append(txt)
            srow.append(" / ".join(f"{vals[s]:.3f}" if vals[s] is not None else "–"
                                   for s in sorted(vals)) or "–")
        summary.append(row)
        seeds.append(srow)
    return summary, seeds


def _paired(a: dict, b: dict, ref: str, metric: str, lower: bool) -> str | None:
    """'beats REF on every seed (metric, seeds ...: a / a vs b / b)' or None without a
    common finished seed."""
    seeds = sorted(s for s in a if s in b and a[s] is not None and b[s] is not None)
    if not seeds:
        return None
    wins = sum((a[s] < b[s]) if lower else (a[s] > b[s]) for s in seeds)
    verdict = (f"beats {ref} on every seed" if wins == len(seeds) else
               f"does not beat {ref} on any seed" if wins == 0 else
               f"beats {ref} on {wins} of {len(seeds)} seeds only")
    nums = (" / ".join(f"{a[s]:.3f}" for s in seeds) + " vs "
            + " / ".join(f"{b[s]:.3f}" for s in seeds))
    better = "lower is better, " if lower else ""
    return (f"{verdict} ({metric.replace('_', ' ')}, {better}seeds "
            f"{', '.join(map(str, seeds))}: {nums})")


def findings(records: list[dict], metric: str, models: list[str], *,
             lower_is_better: bool = False, columns: list[str] | None = None,
             comparisons: tuple = ()) -> list[str]:
    """'A beats B' statements, each with the paired per-seed numbers behind it: the best
    method of each column against each reference row, then the evaluation's own model pairs
    (e.g. ensemble vs its members)."""
    cols, cells = _grid([r for r in records if r["metric"] == metric])
    cols = [c for c in cols if columns is None or c in columns]
    out = []
    methods = [m for m in models if m not in REFERENCES]
    means = _means(cells, cols, methods)
    for c in cols:
        scored = [(v, m) for m, v in means[c].items() if np.isfinite(v)]
        if not scored:
            continue
        _, best = min(scored) if lower_is_better else max(scored)
        for ref in REFERENCES:
            line = _paired(cells[best].get(c, {}), cells[ref].get(c, {}), ref, metric,
                           lower_is_better) if ref in cells else None
            if line:
                out.append(f"{c}: best method **{best}** {line}")
        for a, b in comparisons:
            if a in cells and b in cells:
                line = _paired(cells[a].get(c, {}), cells[b].get(c, {}), b, metric,
                               lower_is_better)
                if line:
                    out.append(f"{c}: **{a}** {line}")
    return out


# ------------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _color(model: str, models: list[str]):
    """One colour per model across all plots: grey/black for the references."""
    import matplotlib

    if model == SPECTRAL:
        return "0.55"
    if model == RANDOM:
        return "black"
    methods = [m for m in models if m not in REFERENCES]
    return matplotlib.colormaps["tab10"](methods.index(model) % 10 if model in methods else 9)


def plot_fraction_curves(records: list[dict], table: str, metric: str, models: list[str],
                         path: Path, xlabel: str | None = None) -> Path | None:
    recs = [r for r in records if r["table"] == table and r["metric"] == metric
            and r["value"] is not None]
    if not recs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=100)
    for m in models:
        by = defaultdict(list)
        for r in recs:
            if r["model"] == m:
                by[r["order"]].append(r["value"])
        if not by:
            continue
        xs = sorted(by)
        ax.errorbar([x * 100 for x in xs], [np.mean(by[x]) for x in xs],
                    yerr=[np.std(by[x]) for x in xs], marker="o", capsize=3, label=m,
                    ls="--" if m in REFERENCES else "-", color=_color(m, models))
    ax.set_xscale("log")
    ax.set_xlabel(xlabel or "labelled training patches used (%)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(f"{table}: {metric.replace('_', ' ')} vs label fraction", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_training_curves(folder: BenchmarkFolder, methods: list[str], seed: int,
                         path: Path) -> Path | None:
    """Pretext loss and online kNN accuracy against wall-clock time (from each run's
    metrics.csv; time = step x the run's mean step time)."""
    import pandas as pd

    st = folder.status()["runs"]
    curves = []
    for m in methods:
        csv = folder.run_dir(m, seed) / "logs" / "metrics.csv"
        info = st.get(f"{m}/seed{seed}", {})
        if not csv.exists() or info.get("state") != "done" or not info.get("steps"):
            continue
        df = pd.read_csv(csv)
        spt = info["seconds"] / max(info["steps"], 1)
        curves.append((m, df, spt))
    if not curves:
        return None
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
    for m, df, spt in curves:
        if "train/loss" in df:
            d = df[["step", "train/loss"]].dropna()
            a1.plot(d["step"] * spt, d["train/loss"] / max(abs(d["train/loss"].iloc[0]), 1e-9),
                    lw=1, label=m)
        if "val/knn_acc" in df:
            d = df[["step", "val/knn_acc"]].dropna()
            if len(d):
                a2.plot(d["step"] * spt, d["val/knn_acc"], "o-", ms=3, label=m)
    a1.set_title("pretext loss / its first value", fontsize=9)
    a2.set_title("online kNN accuracy (test block)", fontsize=9)
    for a in (a1, a2):
        a.set_xlabel("training time (s)")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_embeddings(records: list[dict], models: list[str], path: Path) -> Path | None:
    """PCA of each model's test-patch embeddings, coloured by class (first seed)."""
    emb = {}
    for r in records:
        if r.get("table") == "_embedding" and r["model"] not in emb:
            emb[r["model"]] = r
    ms = [m for m in models if m in emb]
    if not ms:
        return None
    plt = _plt()
    n = len(ms)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.5 * rows + 0.4), dpi=100,
                             squeeze=False)
    classes = emb[ms[0]]["classes"]
    cmap = plt.get_cmap("tab10")
    for ax, m in zip(axes.flat, ms):
        xy, y = np.asarray(emb[m]["xy"]), np.asarray(emb[m]["labels"])
        for k, name in enumerate(classes):
            sel = y == k
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], s=5, color=cmap(k % 10), label=name)
        ax.set_title(m, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(8, len(labels)), fontsize=7)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return save_figure(fig, path)


# ------------------------------------------------------------------------------- blocks
def build_blocks(folder: BenchmarkFolder) -> list[tuple]:
    plan = folder.load_plan()
    st = folder.status()
    records = folder.all_eval_records()
    figs = folder.root / "figures"
    figs.mkdir(exist_ok=True)
    env = st.get("environment", {}).get("now", {})
    sessions = st.get("sessions", [])
    blocks: list[tuple] = [("h1", "eossl benchmark")]
    head = [
        f"**command**: `{sessions[-1]['command'] if sessions else '(not recorded)'}`",
        f"**methods**: {', '.join(plan.methods)}; **seeds**: {', '.join(map(str, plan.seeds))}; "
        f"**backbone**: {plan.backbone}; **budget per run**: {plan.budget_obj}",
        f"**pretraining data**: {plan.data} (methods that need time series or sensor pairs use "
        "their own, listed below); **evaluation data**: the Brandenburg S2 scene's OSM labels, "
        "spatial split (west 60% train, east 40% test), and the BigEarthNet v2 sample for "
        "multi-label; each section below states its protocol",
        f"**machine**: {env.get('machine', '?')}; **versions**: eossl {env.get('eossl', '?')}, "
        f"torch {env.get('torch', '?')}, lightning {env.get('lightning', '?')}, "
        f"Python {env.get('python', '?')}",
        f"**wall clock**: {sum(s['seconds'] for s in sessions) / 60:.1f} min over "
        f"{len(sessions)} session(s)",
    ]
    blocks.append(("list", head))

    # pretraining
    rows = [["method", "seed", "data", "steps", "seconds", "images/s", "state"]]
    for m in plan.methods:
        for s in plan.seeds:
            i = st["runs"].get(f"{m}/seed{s}", {})
            rows.append([m, str(s), i.get("data", "–"), str(i.get("steps", "–")),
                         str(i.get("seconds", "–")), str(i.get("images_per_s", "–")),
                         i.get("state", "not run") + (f": {i['error']}" if i.get("error") else "")])
    blocks += [("h2", "Pretraining (same backbone, same budget)"),
               ("p", "The budget is the same for every method; steps show what each method "
                     "does with it (methods differ in cost per step)."), ("table", rows)]
    tc = plot_training_curves(folder, plan.methods, plan.seeds[0], figs / "training.png")
    if tc:
        blocks.append(("img", tc, "Training curves"))

    # results, one section per evaluation
    from .evaluations import EVALUATIONS

    models_all = _models(records, plan.methods)
    tables = list(dict.fromkeys(r["table"] for r in records if not _hidden(r)))
    owner = {t: ev for ev in EVALUATIONS.values() for t in ev.tables}
    protocols = st.get("protocols", {})
    figures = [r for r in records if r["table"] == "_figure"]
    all_findings, placed = [], set()
    sections = [(ev, [t for t in ev.tables if t in tables]) for ev in EVALUATIONS.values()]
    sections += [(None, [t]) for t in tables if t not in owner]  # results of a removed class
    for ev, ev_tables in sections:
        pics = [f for f in figures if ev is not None and f.get("evaluation") == ev.name]
        if not ev_tables and not pics:
            continue
        if ev is not None:
            blocks += [("h2", ev.title), ("p", _protocol(ev, protocols))]
        for t in ev_tables:
            blocks += _table_blocks(t, [r for r in records if r["table"] == t], ev, models_all,
                                    plan, figs, all_findings, sub=ev is not None)
        for f in pics:
            p = folder.root / f["path"]
            if p.exists():
                blocks.append(("img", p, f["caption"]))
                placed.add(p.resolve())
        if ev is not None:
            for p, caption in ev().figures(records, folder.root):
                blocks.append(("img", p, caption))
                placed.add(Path(p).resolve())
    blocks.insert(2, ("h2", "Findings"))
    blocks.insert(3, ("p", "Each line compares the best method of a column with a reference row "
                           "(or one model with another, where an evaluation names the pair), "
                           "seed by seed (same pretraining and evaluation seed)."))
    blocks.insert(4, ("list", all_findings or ["no evaluation finished yet"]))

    emb = plot_embeddings(records, models_all, figs / "embeddings.png")
    if emb:
        blocks += [("h2", "Embeddings"),
                   ("p", "First two principal components of the test patches' frozen features, "
                         "coloured by OSM class (first seed)."),
                   ("img", emb, "Embedding scatter")]
    pics = _run_pictures(folder, plan, figures, placed)
    if pics:
        blocks.append(("h2", "Pictures from the methods"))
        blocks += [("img", p, cap) for p, cap in pics]

    problems = _problems(st)
    if problems:
        blocks += [("h2", "Failures and evaluations that do not apply"), ("list", problems)]
    timing = _timing_table(st, plan)
    if timing:
        blocks += [("h2", "Evaluation cost"),
                   ("p", "Wall-clock seconds per run (mean over seeds; 'references' = the "
                         "reference rows of one seed)."), ("table", timing)]
    return blocks


def _protocol(ev, protocols: dict) -> str:
    """The protocol text saved by the run (the settings actually used), else the class's."""
    saved = protocols.get(ev.name, {})
    return saved.get("text") or ev().protocol()


def _table_blocks(t: str, recs: list[dict], ev, models_all: list[str], plan, figs: Path,
                  all_findings: list[str], sub: bool) -> list[tuple]:
    """One table of one evaluation: a summary and a per-seed table per shown metric, its
    findings and, for label-fraction tables, the score-vs-fraction plot."""
    h_table, h_metric = ("h3", "h4") if sub else ("h2", "h3")
    shown = tuple(getattr(ev, "shown_metrics", ()) or ())
    lower = set(getattr(ev, "lower_is_better", ()) or ())
    models = [m for m in models_all if any(r["model"] == m for r in recs)]
    metrics = list(dict.fromkeys(r["metric"] for r in recs))
    metrics = [m for m in shown if m in metrics] or metrics
    out: list[tuple] = [(h_table, t)]
    for metric in metrics:
        summary, seeds = metric_tables(recs, metric, models, lower_is_better=metric in lower)
        best = "lowest" if metric in lower else "best"
        out += [(h_metric, f"{metric.replace('_', ' ')} (mean ± std over seeds; {best} in "
                           "bold)"), ("table", summary),
                ("details", f"per-seed {metric.replace('_', ' ')} (seeds "
                            f"{', '.join(map(str, plan.seeds))})", seeds)]
    all_findings += [f"{t}: {f}" for f in findings(
        recs, metrics[0], models, lower_is_better=metrics[0] in lower,
        columns=getattr(ev, "finding_columns", None),
        comparisons=getattr(ev, "comparisons", ()))]
    if getattr(ev, "fraction_tables", False) and len({r["order"] for r in recs}) > 1:
        p = plot_fraction_curves(recs, t, metrics[0], models, figs / f"{_slug(t)}-fractions.png",
                                 xlabel=getattr(ev, "fraction_label", None))
        if p:
            out.append(("img", p, f"{t}: score vs label fraction"))
    return out


def _run_pictures(folder: BenchmarkFolder, plan, figures: list[dict], placed: set
                  ) -> list[tuple[Path, str]]:
    """Pictures the methods drew into their first-seed run folders, less those an evaluation
    redrew on held-out data (its record names the run picture it replaces), plus any loose
    PNG under figures/evaluations that no record placed."""
    replaced = {(f["model"], f.get("replaces")) for f in figures if f.get("replaces")}
    pics = []
    for m in plan.methods:
        run = folder.run_dir(m, plan.seeds[0])
        pics += [(p, f"{m}: {p.stem.replace('_', ' ')}") for p in sorted(run.glob("*.png"))
                 if (m, p.name) not in replaced]
    from .evaluations import FIGURES

    pics += [(p, p.stem.replace("_", " ").replace("-", " "))
             for p in sorted((folder.root / FIGURES).glob("*.png")) if p.resolve() not in placed]
    return pics


def _problems(st: dict) -> list[str]:
    """Failures one by one; evaluations that do not apply grouped by reason (a benchmark of
    nine methods x three seeds would otherwise list dozens of identical lines)."""
    out, skipped = [], defaultdict(list)
    for sec in ("runs", "evals"):
        for k, v in st.get(sec, {}).items():
            if v.get("state") == "failed":
                out.append(f"{k}: failed ({v.get('error', '')})")
            elif v.get("state") == "not applicable":
                parts = k.split("/")
                run = "/".join(parts[1:]) if len(parts) > 1 else k
                skipped[(parts[0], v.get("reason", ""))].append(run)
    for (ev, reason), runs in skipped.items():
        out.append(f"{ev}: not applicable to {_runs_text(runs)} ({reason})")
    return out


def _runs_text(runs: list[str]) -> str:
    """'moco (seeds 0, 1), simclr (seed 0)' from ['moco/seed0', 'moco/seed1', ...]."""
    by = defaultdict(list)
    for r in runs:
        method, _, seed = r.rpartition("/seed")
        by[method or r].append(seed)
    return ", ".join(f"{m} (seed{'s' if len(s) > 1 else ''} {', '.join(s)})"
                     for m, s in by.items())


def _timing_table(st: dict, plan) -> list[list[str]] | None:
    """Seconds per evaluation and method, mean over the finished seeds."""
    secs = defaultdict(lambda: defaultdict(list))
    for k, v in st.get("evals", {}).items():
        if v.get("state") == "done" and v.get("seconds") is not None:
            name, model, _ = k.split("/", 2) if k.count("/") >= 2 else (k, "", "")
            secs[name][model].append(float(v["seconds"]))
    if not secs:
        return None
    models = ["references"] + [m for m in plan.methods
                               if any(m in by for by in secs.values())]
    rows = [["evaluation"] + models]
    for name, by in secs.items():
        rows.append([name] + [f"{np.mean(by[m]):.1f}" if by.get(m) else "–" for m in models])
    return rows


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")


# ------------------------------------------------------------------------------- renderers
def to_markdown(blocks: list[tuple], root: Path) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3", "h4"):
            out += ["#" * int(kind[1]) + " " + b[1], ""]
        elif kind == "p":
            out += [b[1], ""]
        elif kind == "list":
            out += [f"- {x}" for x in b[1]] + [""]
        elif kind == "table":
            out += _md_table(b[1]) + [""]
        elif kind == "details":
            out += [f"<details><summary>{b[1]}</summary>", ""] + _md_table(b[2]) + ["",
                                                                                 "</details>", ""]
        elif kind == "img":
            out += [f"![{b[2]}]({Path(b[1]).relative_to(root).as_posix()})", ""]
    return "\n".join(out)


def _md_table(rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return lines + ["| " + " | ".join(r) + " |" for r in rows[1:]]


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:.5em 0 1em;font-size:.85em}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}td:first-child,th:first-child
{text-align:left}th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}
code{background:#f5f5f5;padding:0 .2em}details{margin-bottom:1em}"""

# Lets a headless browser (the report test) tell that every image decoded.
_CHECK = """<script>window.addEventListener('load',function(){var im=document.images,ok=0;
for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++;}
document.body.setAttribute('data-images',im.length);document.body.setAttribute('data-images-ok',ok);
});</script>"""


def _inline(text: str) -> str:
    """Escape, then the two bits of Markdown our blocks use: **bold** and `code`."""
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_inline(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>"
                   for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(blocks: list[tuple]) -> str:
    parts = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3", "h4"):
            parts.append(f"<{kind}>{_inline(b[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_inline(b[1])}</p>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in b[1]) + "</ul>")
        elif kind == "table":
            parts.append(_html_table(b[1]))
        elif kind == "details":
            parts.append(f"<details><summary>{_inline(b[1])}</summary>{_html_table(b[2])}"
                         "</details>")
        elif kind == "img":
            data = base64.b64encode(Path(b[1]).read_bytes()).decode()
            parts.append(f'<figure><img alt="{html.escape(b[2])}" src="data:image/png;base64,'
                         f'{data}"><figcaption>{_inline(b[2])}</figcaption></figure>')
    return ("<!doctype html><html><head><meta charset='utf-8'><title>eossl benchmark</title>"
            f"<style>{_CSS}</style>{_CHECK}</head><body>" + "\n".join(parts) + "</body></html>")


def write_benchmark_report(folder: BenchmarkFolder | str | Path) -> Path:
    """report.md (+ figures/) and report.html (self-contained) in the benchmark folder."""
    folder = folder if isinstance(folder, BenchmarkFolder) else BenchmarkFolder(folder)
    blocks = build_blocks(folder)
    atomic_write_text(folder.root / "report.md", to_markdown(blocks, folder.root))
    atomic_write_text(folder.root / "report.html", to_html(blocks))
    atomic_write_text(folder.root / "results.json", json.dumps(
        {"plan": folder.load_plan().to_dict(), "status": folder.status(),
         "records": [r for r in folder.all_eval_records() if not _hidden(r)]},
        indent=1, default=float))
    return folder.root / "report.md"
