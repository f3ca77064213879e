"""The benchmark report: pretraining, then every evaluation's section (evaluate/summary.py:
protocol with each row's architecture and inputs, tables with confidence intervals, findings
seed by seed and fold by fold), then pictures, failures and cost; rendered to Markdown and a
self-contained HTML page by :mod:`eossl.report`.

Everything is read from the benchmark folder (``evals/`` and ``status.json``), or from its
``results.json`` alone (a committed report keeps only that, or its gzipped copy
``results.json.gz``, and its figures), so ``eossl report DIR`` re-renders without recomputing.
"""

from __future__ import annotations

import gzip
import json
import platform
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..report import atomic_write_text, save_figure, write_blocks
from .plan import BenchmarkFolder, Plan


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


# ------------------------------------------------------------------------------- saved data
def saved_results(root: Path) -> Path | None:
    """The folder's results.json, or its gzipped copy results.json.gz (what docs/ commits: a
    full run's records are a few MB of repetitive JSON, about 15x smaller gzipped); None if
    neither is there."""
    for name in ("results.json", "results.json.gz"):
        if (Path(root) / name).is_file():
            return Path(root) / name
    return None


def read_saved_results(path: Path) -> dict:
    """The JSON document of a results.json or results.json.gz, with the file named on error."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return json.load(f)
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, EOFError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable benchmark results file ({e})") from e


def load_results(folder: BenchmarkFolder) -> tuple[Plan, dict, list[dict]]:
    """(plan, status, records) from the folder's evals/ and status.json, or from its
    results.json (or results.json.gz) when only that was kept."""
    if folder.plan_path.exists() and (folder.root / "evals").is_dir():
        return folder.load_plan(), folder.status(), folder.all_eval_records()
    saved = saved_results(folder.root)
    if saved is None:
        if folder.plan_path.exists():
            raise ConfigError(f"{folder.root}: no evaluation of this benchmark has finished "
                              f"yet; continue it with eossl benchmark --out {folder.root} "
                              "--resume")
        raise ConfigError(f"{folder.root} is not a benchmark folder (no plan.json and no "
                          "results.json or results.json.gz)")
    data = read_saved_results(saved)
    records = data.get("records", [])
    if records and "evaluation" not in records[0]:
        raise ConfigError(f"{saved} was written by an older eossl benchmark (records without "
                          "an 'evaluation' key); rerun the benchmark to re-render it")
    return Plan(**data["plan"]), data.get("status", {}), records


# ------------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(folder: BenchmarkFolder, status: dict, methods: list[str], seed: int,
                         path: Path, colours: dict[str, str] | None = None) -> Path | None:
    """Pretext loss and online kNN accuracy against wall-clock time (from each run's
    metrics.csv; time = step x the run's mean step time), each method in its report colour.
    Without the run folders (a committed report keeps only results.json and figures/), the
    picture drawn when the runs were there."""
    import pandas as pd

    curves = []
    for m in methods:
        csv = folder.run_dir(m, seed) / "logs" / "metrics.csv"
        info = status.get("runs", {}).get(f"{m}/seed{seed}", {})
        if not csv.exists() or info.get("state") != "done" or not info.get("steps"):
            continue
        curves.append((m, pd.read_csv(csv), info["seconds"] / max(info["steps"], 1)))
    if not curves:
        return path if path.exists() else None
    colours = colours or {}
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
    for m, df, spt in curves:
        if "train/loss" in df:
            d = df[["step", "train/loss"]].dropna()
            a1.plot(d["step"] * spt, d["train/loss"] / max(abs(d["train/loss"].iloc[0]), 1e-9),
                    lw=1, label=m, color=colours.get(m))
        if "val/knn_acc" in df:
            d = df[["step", "val/knn_acc"]].dropna()
            if len(d):
                a2.plot(d["step"] * spt, d["val/knn_acc"], "o-", ms=3, label=m,
                        color=colours.get(m))
    a1.set_title("pretext loss / its first value", fontsize=9)
    a2.set_title("online kNN accuracy (test block)", fontsize=9)
    for a in (a1, a2):
        a.set_xlabel("training time (s)")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_embeddings(records: list[dict], path: Path) -> Path | None:
    """PCA of each row's test-patch embeddings, coloured by class (first seed)."""
    emb = {}
    for r in records:
        if r.get("table") == "_embedding" and r["model"] not in emb:
            emb[r["model"]] = r
    if not emb:  # results.json leaves the embeddings out: keep the picture drawn from them
        return path if path.exists() else None
    plt = _plt()
    ms = list(emb)
    cols = min(len(ms), 4)
    rows = (len(ms) + cols - 1) // cols
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
        ax.set_title(m, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(ms):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(8, len(labels)), fontsize=7)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return save_figure(fig, path)


# ------------------------------------------------------------------------------- blocks
def build_blocks(folder: BenchmarkFolder) -> list[tuple]:
    from ..evaluate.base import available_evaluations, get_evaluation
    from ..evaluate.folds import describe_folds
    from ..evaluate import results as R
    from ..evaluate.summary import report_blocks, row_colours, row_infos, row_order

    plan, st, records = load_results(folder)
    figs = folder.root / "figures"
    figs.mkdir(exist_ok=True)
    env = st.get("environment", {}).get("now", {})
    sessions = st.get("sessions", [])
    header = [
        f"**command**: `{sessions[-1]['command'] if sessions else '(not recorded)'}`",
        f"**methods**: {', '.join(plan.methods) or 'none'}; **seeds**: "
        f"{', '.join(map(str, plan.seeds))}; **backbone**: {plan.backbone}; **budget per "
        f"run**: {plan.budget_obj}"
        + (f"; **where**: --accelerator {plan.accelerator or 'auto'}"
           + (f" --devices {plan.devices}" if plan.devices else "")
           if plan.accelerator or plan.devices else ""),
        *([f"**encoders pretrained elsewhere** (--checkpoint; evaluated beside the methods, "
           f"not pretrained by this benchmark): {', '.join(plan.encoders)}"]
          if plan.encoders else []),
        f"**pretraining data**: {plan.data} (methods that need time series or sensor pairs use "
        "their own, listed below); **evaluation data**: the plan's labelled data (default: the "
        "Brandenburg S2 scene's OSM labels) on spatial folds, and the BigEarthNet v2 sample "
        "for multi-label; each section states its protocol, its folds and every row's "
        "architecture and inputs",
        f"**machine**: {env.get('machine', '?')}; **versions**: eossl {env.get('eossl', '?')}, "
        f"torch {env.get('torch', '?')}, lightning {env.get('lightning', '?')}, "
        f"Python {env.get('python', '?')}",
        f"**wall clock**: {sum(s['seconds'] for s in sessions) / 60:.1f} min over "
        f"{len(sessions)} session(s)",
    ]
    n_pending, pending = _pending(plan, st, records)
    if pending:
        header.append(f"**incomplete**: {n_pending} pretraining run(s) or evaluation step(s) "
                      "have not run yet (listed at the end; some may turn out not to apply); "
                      "every table shows only what has finished, so resume the benchmark "
                      "before reading it as whole")
    protocols = st.get("protocols", {})
    present = {r["evaluation"] for r in records if r.get("evaluation")}
    evaluations = []
    for name in [n for n in available_evaluations() if n in present]:
        ev = get_evaluation(name)(**protocols.get(name, {}).get("params", {}))
        saved = protocols.get(name, {}).get("text")
        if saved:
            ev.protocol = lambda text=saved: text  # the settings that actually ran
        evaluations.append(ev)
    splits = {ev.name: protocols.get(ev.name, {}).get("splits") or describe_folds()
              for ev in evaluations}
    # one colour per method in every plot (plan order), the references in theirs
    infos = row_infos(records)
    colours = row_colours(list(plan.methods) + list(plan.encoders) + row_order(
        [r for r in records if not R.hidden(r)], infos), infos)
    blocks = report_blocks(evaluations, records, title="eossl benchmark", header=header,
                           splits=splits, figures=figs, colours=colours)
    # the pretraining section goes before the evaluations (after the findings)
    findings = blocks.index(("h2", "Findings"))
    first_eval = next((i for i, b in enumerate(blocks) if i > findings and b[0] == "h2"),
                      len(blocks))
    blocks[first_eval:first_eval] = _pretraining_blocks(folder, plan, st, figs, colours)
    emb = plot_embeddings(records, figs / "embeddings.png")
    if emb:
        blocks += [("h2", "Embeddings"),
                   ("p", "First two principal components of the test patches' frozen features "
                         "(standardised), coloured by OSM class (first seed)."),
                   ("img", emb, "Embedding scatter")]
    pics = _run_pictures(folder, plan, records, figs)
    if pics:
        blocks.append(("h2", "Pictures from the methods' training runs"))
        blocks += [("img", p, cap) for p, cap in pics]
    if pending:
        blocks += [("h2", "Not run yet"), ("list", pending)]
    problems = _problems(st)
    if problems:
        blocks += [("h2", "Failures and evaluations that do not apply"), ("list", problems)]
    timing = _timing_table(st, plan)
    if timing:
        blocks += [("h2", "Evaluation cost"),
                   ("p", "Wall-clock seconds per run (mean over seeds; 'references' = the "
                         "baseline and random-twin rows of one seed)."), ("table", timing)]
    return blocks


def _pretraining_blocks(folder, plan, st, figs, colours=None) -> list[tuple]:
    out = _method_blocks(folder, plan, st, figs, colours) if plan.methods else []
    return out + _external_blocks(plan, st)


def _external_blocks(plan, st) -> list[tuple]:
    """The encoders given by --checkpoint: what each is and where it came from."""
    if not plan.encoders:
        return []
    rows = [["row", "weights", "encoder", "pretrained on", "state"]]
    for name, path in plan.encoders.items():
        i = st.get("external", {}).get(name, {})
        rows.append([name, i.get("origin") or Path(path).name, i.get("encoder", "–"),
                     i.get("pretrained_on", "–"), i.get("state", "not run")
                     + (f": {i['error']}" if i.get("error") else "")])
    return [("h2", "Encoders pretrained elsewhere"),
            ("p", "Given by --checkpoint and evaluated beside the methods, each with its own "
                  "random twin (the same architecture, bands and normalisation, random weights) "
                  "as reference. This benchmark did not pretrain them: its budget and "
                  "pretraining data do not apply, and the pretraining note of each row says "
                  "whether its pretraining could have seen the test areas. Weights files: "
                  + ", ".join(f"{n}: `{p}`" for n, p in plan.encoders.items()) + "."),
            ("table", rows)]


def _method_blocks(folder, plan, st, figs, colours=None) -> list[tuple]:
    from ..evaluate.summary import COLLAPSED

    rows = [["method", "seed", "data", "steps", "seconds", "images/s", "collapse monitor",
             "state"]]
    for m in plan.methods:
        for s in plan.seeds:
            i = st.get("runs", {}).get(f"{m}/seed{s}", {})
            col = i.get("collapse") or {}
            verdict = ("–" if not col else COLLAPSED if col.get("collapsed") else
                       "healthy" if col.get("collapsed") is False else "too few steps")
            if col.get("embed_std_ratio") is not None:
                verdict += f" (spread {col['embed_std_ratio']:.2f})"
            rows.append([m, str(s), i.get("data", "–"), str(i.get("steps", "–")),
                         str(i.get("seconds", "–")), str(i.get("images_per_s", "–")), verdict,
                         i.get("state", "not run") + (f": {i['error']}" if i.get("error")
                                                      else "")])
    out = [("h2", "Pretraining (same backbone, same budget)"),
           ("p", "The budget is the same for every method; steps show what each method does "
                 "with it (methods differ in cost per step). The collapse monitor: the spread "
                 "of the pretext embeddings over the last steps as a share of a healthy one; "
                 f"below 0.25 the run is flagged {COLLAPSED} here and in every table."),
           ("table", rows)]
    tc = plot_training_curves(folder, st, plan.methods, plan.seeds[0], figs / "training.png",
                              colours)
    if tc:
        out.append(("img", tc, "Training curves"))
    return out


def _run_pictures(folder: BenchmarkFolder, plan, records: list[dict], figs: Path
                  ) -> list[tuple]:
    """Pictures the methods drew into their first-seed run folders (unless an evaluation drew
    that method's picture on held-out data), copied to figures/runs/METHOD/ so that a report
    re-rendered from results.json and figures/ alone still shows them."""
    import shutil

    drawn = {r["model"] for r in records if r.get("table") == "_figure"
             and r.get("evaluation") == "pictures"}
    pics = []
    for m in plan.methods:
        if m in drawn:
            continue
        kept = figs / "runs" / m
        for p in sorted(folder.run_dir(m, plan.seeds[0]).glob("*.png")):
            kept.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, kept / p.name)
        what = (f"picture drawn at the end of its pretraining run (seed {plan.seeds[0]})")
        pics += [(p, f"{m}: {what}" if p.stem.replace("_", " ").lower() == m.lower() else
                  f"{m}: {p.stem.replace('_', ' ')} ({what})") for p in sorted(kept.glob("*.png"))]
    return pics


def _pending(plan, st: dict, records: list[dict]) -> tuple[int, list[str]]:
    """The plan's pretraining runs and per-run evaluation steps that have neither finished nor
    been recorded as failed or not applicable (what a resume would still do; whether a step
    applies is only known when it is reached): their count, and one line per kind."""
    from .runner import benchmark_evaluations

    runs, evals = st.get("runs", {}), st.get("evals", {})
    # what has a result: the records themselves (a committed report keeps no evals/ folder)
    have = {(r.get("evaluation"), r.get("model"), r.get("seed")) for r in records}
    todo: dict[str, list[str]] = defaultdict(list)
    for m in plan.methods:
        for s in plan.seeds:
            if runs.get(f"{m}/seed{s}", {}).get("state") not in ("done", "failed"):
                todo["pretraining"].append(f"{m}/seed{s}")
    for ev in benchmark_evaluations(plan):
        if evals.get(ev, {}).get("state") == "not available":
            continue
        for m in list(plan.methods) + list(plan.encoders):
            for s in plan.seeds:
                if m in plan.methods and runs.get(f"{m}/seed{s}", {}).get("state") == "failed":
                    continue
                if evals.get(f"{ev}/{m}/seed{s}", {}).get("state") in (
                        "failed", "not applicable"):
                    continue
                if (ev, m, s) not in have:
                    todo[ev].append(f"{m}/seed{s}")
    return (sum(len(v) for v in todo.values()),
            [f"{kind}: {_runs_text(items)}" for kind, items in todo.items()])


def _problems(st: dict) -> list[str]:
    """Failures one by one; evaluations that do not apply grouped by reason."""
    out, skipped = [], defaultdict(list)
    for sec in ("runs", "external", "evals"):
        for k, v in st.get(sec, {}).items():
            if v.get("state") == "failed":
                out.append(f"{k}: failed ({v.get('error', '')})")
            elif v.get("state") in ("not applicable", "not available"):
                parts = k.split("/")
                run = "/".join(parts[1:]) if len(parts) > 1 else ""
                skipped[(parts[0], v.get("reason", ""))].append(run)
    for (ev, reason), runs in skipped.items():
        runs = [r for r in runs if r]
        out.append(f"{ev}: not applicable to {_runs_text(runs)} ({reason})" if runs else
                   f"{ev}: not run ({reason})")
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
            secs[name]["references" if model.startswith("_") else model].append(
                float(v["seconds"]))
    if not secs:
        return None
    models = ["references"] + [m for m in [*plan.methods, *plan.encoders]
                               if any(m in by for by in secs.values())]
    rows = [["evaluation"] + models]
    for name, by in secs.items():
        rows.append([name] + [f"{np.mean(by[m]):.1f}" if by.get(m) else "–" for m in models])
    return rows


def write_benchmark_report(folder: BenchmarkFolder | str | Path) -> Path:
    """report.md (+ figures/) and report.html (self-contained) in the benchmark folder, and
    results.json (plan, status and every record: enough to re-render without the rest)."""
    folder = folder if isinstance(folder, BenchmarkFolder) else BenchmarkFolder(folder)
    plan, st, records = load_results(folder)
    blocks = build_blocks(folder)
    if (folder.root / "evals").is_dir():
        # every record, the embedding scatter's points included (one small record per model),
        # so that a copy of plan.json + results.json re-renders every figure
        atomic_write_text(folder.root / "results.json", json.dumps(
            {"plan": plan.to_dict(), "status": st, "records": records}, indent=1,
            default=float))
    return write_blocks(folder.root, blocks, title="eossl benchmark")
