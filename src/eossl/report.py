"""Results as people read them: a Markdown table and plots in a report folder.

Inputs are plain records (one dict per model, probe kind, label fraction and seed) and the
``metrics.csv`` that Lightning's CSV logger wrote during pretraining, so a report can be
re-rendered from saved results without recomputing anything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

# Every write goes through eossl.io (temporary file + rename, one-line disk errors); these names
# stay importable from here for the modules that write reports.
from .io import atomic_path, atomic_write_text  # noqa: F401


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a matplotlib figure atomically (format from the suffix) and close it.

    One place for every picture eossl draws, so they share the dpi (reports are committed,
    so pictures stay small) and none is ever left half-written.
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path, suffix=path.suffix) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    finally:
        plt.close(fig)
    return path


def summarise(records: Sequence[dict], metric: str) -> pd.DataFrame:
    """Mean and std over seeds per (model, kind, fraction)."""
    df = pd.DataFrame(records)
    df = df[df[metric].notna()]  # skipped fits (e.g. a one-class subsample) carry no score
    g = df.groupby(["model", "kind", "fraction"], sort=False)[metric]
    return g.agg(["mean", "std", "count"]).reset_index()


def markdown_table(records: Sequence[dict], metrics: Sequence[str] = ("accuracy",
                   "balanced_accuracy", "macro_f1"), kind: str = "linear") -> str:
    """One row per model, one column per (metric, label fraction): 'mean ± std (n seeds)'.

    The best mean in each column is set in bold.
    """
    df = pd.DataFrame([r for r in records if r["kind"] == kind])
    if df.empty:
        return f"_no {kind} probe results_\n"
    models = list(dict.fromkeys(df["model"]))
    fractions = sorted(df["fraction"].unique())
    cols, cells = [], {m: [] for m in models}
    for metric in metrics:
        s = summarise(df.to_dict("records"), metric)
        for f in fractions:
            cols.append(f"{metric.replace('_', ' ')} @{f:.0%}")
            sub = s[s.fraction == f].set_index("model")
            best = sub["mean"].max() if len(sub) else np.nan
            for m in models:
                if m not in sub.index:
                    cells[m].append("–")
                    continue
                mu, sd, n = sub.loc[m, "mean"], sub.loc[m, "std"], int(sub.loc[m, "count"])
                txt = f"{mu:.3f}" + (f" ± {sd:.3f}" if n > 1 else "")
                cells[m].append(f"**{txt}**" if np.isclose(mu, best) else txt)
    # Written by hand: pandas' to_markdown needs the optional 'tabulate' package.
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {m} | " + " | ".join(cells[m]) + " |" for m in models]
    return "\n".join(lines) + "\n"


def per_class_table(records: Sequence[dict], fraction: float = 1.0, kind: str = "linear") -> str:
    """Per-class F1 (mean over seeds) at one label fraction: where each model wins or fails."""
    rows = [r for r in records if r["kind"] == kind and r["fraction"] == fraction
            and r.get("per_class_f1")]
    if not rows:
        return ""
    classes = list(rows[0]["per_class_f1"])
    models = list(dict.fromkeys(r["model"] for r in rows))
    lines = ["| model | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for m in models:
        vals = np.array([[r["per_class_f1"][c] for c in classes] for r in rows if r["model"] == m])
        lines.append(f"| {m} | " + " | ".join(f"{v:.2f}" for v in vals.mean(axis=0)) + " |")
    return "\n".join(lines) + "\n"


def plot_probe_scores(records: Sequence[dict], path: Path, metric: str = "accuracy",
                      kind: str = "linear") -> Path:
    """Probe score vs label fraction, one line per model, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summarise([r for r in records if r["kind"] == kind], metric)
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    for model, g in s.groupby("model", sort=False):
        ax.errorbar(g["fraction"] * 100, g["mean"], yerr=g["std"].fillna(0), marker="o",
                    capsize=3, label=model)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training patches used (%)")
    ax.set_ylabel(f"{metric.replace('_', ' ')} ({kind} probe)")
    ax.set_title("Spatial test block, Brandenburg S2 scene", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def plot_training(metrics_csv: Path, path: Path) -> Path | None:
    """Training loss (and the online kNN accuracy when logged) against step."""
    if not Path(metrics_csv).exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = pd.read_csv(metrics_csv)
    loss_col = next((c for c in m.columns if c.startswith("train/loss")), None)
    if loss_col is None:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=110)
    lm = m[["step", loss_col]].dropna()
    ax.plot(lm["step"], lm[loss_col], lw=1, color="tab:blue", label="pretext loss")
    ax.set_xlabel("step")
    ax.set_ylabel("pretext loss", color="tab:blue")
    if "val/knn_acc" in m.columns:
        km = m[["step", "val/knn_acc"]].dropna()
        if len(km):
            ax2 = ax.twinx()
            ax2.plot(km["step"], km["val/knn_acc"], "o-", color="tab:orange", ms=3,
                     label="kNN accuracy (test block)")
            ax2.set_ylabel("online kNN accuracy", color="tab:orange")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def write_report(out: Path, records: Sequence[dict], *, title: str, header: dict,
                 metrics_csv: Path | None = None, notes: str = "") -> Path:
    """results.json + report.md (+ PNG plots) in ``out``; returns the report path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(
        {"header": header, "records": list(records)}, indent=1, default=float))
    probe_png = plot_probe_scores(records, out / "probe_scores.png")
    train_png = plot_training(metrics_csv, out / "training.png") if metrics_csv else None
    lines = [f"# {title}", ""]
    lines += [f"- **{k}**: {v}" for k, v in header.items()]
    lines += ["", "## Linear probe (frozen features, logistic regression)", "",
              markdown_table(records, kind="linear"),
              "## kNN probe (k = 20, cosine)", "",
              markdown_table(records, kind="knn", metrics=("accuracy", "balanced_accuracy")),
              f"![probe scores]({probe_png.name})", "",
              "## Per-class F1 (linear probe, all labels)", "", per_class_table(records)]
    if train_png:
        lines += ["## Pretraining", "", f"![training curve]({train_png.name})", ""]
    if notes:
        lines += ["## Notes", "", notes, ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    return out / "report.md"


def load_results(out: Path) -> tuple[dict, list[dict]]:
    d = json.loads((Path(out) / "results.json").read_text())
    return d["header"], d["records"]
