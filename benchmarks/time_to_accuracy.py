"""Probe score vs minutes of pretraining, per method, on the Brandenburg scene.

Which method (and precision, and stem) gives the best encoder for a given number of CPU
minutes?

Each chosen method is pretrained with its CPU recipe (configs/METHOD-cpu.yaml) for each wall
budget in ``--minutes`` (``trainer.max_time``: one run per budget, so that the learning-rate and
momentum schedules, which follow the budget, end where a run of that length ends), for each
seed and variant. Every checkpoint is then probed by the evaluation harness's ``probe``
evaluation (src/eossl/evaluate/probe.py): linear and kNN probes of the frozen last-stage and
multi-scale features on the scene's spatial folds (train and test areas apart), at the label
fractions of ``--fractions``, beside the spectral baseline and the encoders' random twins (same
architecture, random weights), with the run's seed as the evaluation seed, as
``eossl benchmark`` does.

Methods: by default every method whose CPU recipe trains on the Brandenburg scene (moco,
simclr, byol, spectral, dense, colorization); SeCo and MoCo-TP need a time series of one place
and RS-BYOL radar-optical pairs, which the scene does not have. Variants: ``fp32`` (the recipe
as it is), ``bf16`` (``trainer.precision: bf16-mixed``), ``stem4`` (``model.stem_stride: 4``,
timm's standard stem, about 2.5x the images/s of the recipes' stride-2 stem; benchmarks/README.md).

    python benchmarks/time_to_accuracy.py --out benchmarks/time_to_accuracy   # the full grid
    python benchmarks/time_to_accuracy.py --minutes 0.1 --seeds 0 --methods moco \\
        --out /tmp/tta                                                       # smoke test

Resumable: pretraining runs live under OUT/runs/ and probe records under OUT/records/; a run
or probe already finished with the same settings is kept, a half-finished run is resumed.
Writes OUT/results.json (the harness's records, each with ``method``, ``variant``,
``minutes``, ``steps``, ``pretrain_seconds``; the machine and command line of every session),
OUT/time_to_accuracy.md (tables) and OUT/time_to_accuracy.png (probe score vs minutes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # throughput.machine_info when imported from elsewhere (tests)
    sys.path.insert(0, str(HERE))

VARIANTS = {"fp32": {}, "bf16": {"trainer.precision": "bf16-mixed"},
            "stem4": {"model.stem_stride": 4}}
RUN_OVERHEAD_S = 20      # start-up of one pretraining run besides its budget (data, model)
PROBE_S = 90             # a guess at one probe of one checkpoint, for the first estimate
HEADLINE = ("balanced_accuracy", "accuracy")
GREYS = ("0.45", "0.6", "0.3", "0.75")  # random-init twins (one per architecture)


def scene_methods() -> list[str]:
    """Registered methods whose CPU recipe trains on the Brandenburg scene (the rule of
    eossl.bench.runner.run_config: no data of their own kind)."""
    from eossl.bench.runner import recipe_for
    from eossl.config import load_config
    from eossl.methods import available_methods, get_method

    out = []
    for m in available_methods():
        recipe = recipe_for(m)
        if recipe is None or getattr(get_method(m), "default_data", None):
            continue
        if load_config(recipe)["data"]["name"] == "brandenburg":
            out.append(m)
    return out


def parse_args(argv=None):
    # the CLI's own comma-list parsers (same messages as eossl's --seeds and --fractions)
    from eossl.commands._options import floats, fractions, seed_list

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", help="comma-separated (default: every method whose CPU recipe "
                                     "trains on the scene)")
    p.add_argument("--minutes", type=floats, default="1,2,5,10,20", help="wall budgets of pretraining, "
                                                            "minutes (default 1,2,5,10,20)")
    p.add_argument("--seeds", type=seed_list, default="0,1,2", help="pretraining and probe seeds (default 0,1,2)")
    p.add_argument("--variants", default="fp32",
                   help=f"comma-separated from {', '.join(VARIANTS)} (default fp32)")
    p.add_argument("--fractions", type=fractions, default="1.0",
                   help="label fractions of the probes (default 1.0: all training patches)")
    p.add_argument("--out", type=Path, default=HERE / "time_to_accuracy")
    p.add_argument("--cache", help="sample-data cache (default: eossl's)")
    p.add_argument("--yes", action="store_true", help="start without the 5 s pause after the "
                                                      "estimate")
    a = p.parse_args(argv)
    a.methods = [m.strip() for m in a.methods.split(",") if m.strip()] if a.methods \
        else scene_methods()
    if any(m <= 0 for m in a.minutes):
        p.error(f"--minutes: budgets must be positive, got {a.minutes}")
    a.variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    bad = [v for v in a.variants if v not in VARIANTS]
    if bad:
        p.error(f"unknown variant(s) {', '.join(bad)}; expected {', '.join(VARIANTS)}")
    from eossl.methods import available_methods

    bad = [m for m in a.methods if m not in available_methods()]
    if bad:
        p.error(f"unknown method(s) {', '.join(bad)}; expected {', '.join(available_methods())}")
    return a


# ---------------------------------------------------------------------------- pretraining
def run_key(method: str, variant: str, minutes: float, seed: int) -> str:
    return f"{method}/{variant}/{minutes:g}min/seed{seed}"


def run_config(method: str, variant: str, minutes: float, seed: int) -> dict:
    from eossl.bench.runner import recipe_for
    from eossl.config import load_config

    return load_config(recipe_for(method), {"seed": seed, "trainer.accelerator": "cpu",
                                            "trainer.max_time": f"{minutes * 60:g}s",
                                            **VARIANTS[variant]})


def finished(out: Path) -> bool:
    """A run folder whose pretraining ran to its budget (an interrupted one is resumed)."""
    summary = out / "summary.json"
    return (summary.is_file() and (out / "checkpoints" / "last.ckpt").is_file()
            and not json.loads(summary.read_text()).get("interrupted"))


def run_info(out: Path) -> dict:
    s = json.loads((out / "summary.json").read_text())
    return {"checkpoint": str(out / "checkpoints" / "last.ckpt"), "steps": s["steps"],
            "seconds": s["seconds"]}


def pretrained(a, method, variant, minutes, seed, log) -> dict:
    """{"checkpoint", "steps", "seconds"} of one run, pretraining it unless it finished."""
    import yaml

    from eossl.train import pretrain

    out = a.out / "runs" / run_key(method, variant, minutes, seed)
    cfg = run_config(method, variant, minutes, seed)
    ckpt = out / "checkpoints" / "last.ckpt"
    done = finished(out)
    if done and yaml.safe_load((out / "config.yaml").read_text()) != cfg:
        raise SystemExit(f"{out} holds a run with other settings; use another --out")
    if not done:
        resume = ckpt.is_file() and (out / "config.yaml").is_file()
        if out.exists() and not resume:
            shutil.rmtree(out)  # this script's own half-started run folder
        log(f"pretraining {run_key(method, variant, minutes, seed)}"
            + (" (resuming)" if resume else ""))
        pretrain(cfg, out, resume=resume, cache=a.cache, progress=sys.stderr.isatty())
    return run_info(out)


# ---------------------------------------------------------------------------- probing
def _cached(path: Path, build) -> list[dict]:
    """Records saved at ``path``, or ``build()`` saved there (a finished probe is kept)."""
    from eossl.report import atomic_write_text

    if path.is_file():
        return json.loads(path.read_text())
    recs = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(recs))
    return recs


def probe_all(a, runs: dict, seeds: list[int], log) -> list[dict]:
    """The probe's records of every run, of the random twins (one per architecture and seed)
    and of the spectral baseline (per seed), each with method/variant/minutes/steps."""
    from eossl.bench.runner import evaluation_threads
    from eossl.checkpoint import load_encoder
    from eossl.evaluate.base import Context, get_evaluation, twin_rows

    ev = get_evaluation("probe")(fractions=tuple(a.fractions))
    ctx = Context("brandenburg", cache=a.cache, options={"first_seed": seeds[0]})
    rec_dir = a.out / "records"
    records: list[dict] = []
    firsts: dict = {}
    with evaluation_threads():
        for seed in seeds:
            recs = _cached(rec_dir / f"spectral-baseline-seed{seed}.json",
                           lambda seed=seed: ev.baseline(ctx, seed))
            records += [{**r, "method": "spectral baseline", "variant": "", "minutes": 0.0,
                         "steps": 0} for r in recs]
        for (method, variant, minutes, seed), run in runs.items():
            key, label = run_key(method, variant, minutes, seed), f"{method} ({variant})"
            path = rec_dir / f"{key.replace('/', '-')}.json"
            if path.is_file() and label in firsts:  # probed: no need to load the checkpoint
                enc = None
            else:
                enc = load_encoder(run["checkpoint"])
                firsts.setdefault(label, enc)
                why = ev.applies(enc)
                if why:
                    log(f"probe does not apply to {method}: {why}")
                    continue

            def job(enc=enc, method=method, seed=seed, key=key):
                log(f"probing {key}")
                return ev.run(ctx, {method: enc}, seed)

            recs = _cached(path, job)
            records += [{**r, "method": method, "variant": variant, "minutes": minutes,
                         "steps": run["steps"], "pretrain_seconds": run["seconds"]}
                        for r in recs]
        for twin, members in twin_rows(firsts).items():
            enc = firsts[members[0]]
            for seed in seeds:
                sig = enc.signature()

                def job(enc=enc, seed=seed, twin=twin):
                    log(f"probing {twin}, seed {seed}")
                    return ev.run(ctx, {twin: enc.random_twin(seed)}, seed)

                recs = _cached(rec_dir / f"twin-{sig}-seed{seed}.json", job)
                records += [{**r, "model": twin, "method": twin, "variant": "",
                             "minutes": 0.0, "steps": 0, "twin_of": members} for r in recs]
    return [r for r in records if not str(r.get("table", "")).startswith("_")]


# ---------------------------------------------------------------------------- report
def linear_tables(records: list[dict]) -> list[str]:
    """The linear probe's tables present in the records (last stage, multi-scale)."""
    return sorted({r["table"] for r in records if r["table"].startswith("Linear probe")},
                  key=lambda t: ("multi" in t, t))


def row_label(r: dict) -> str:
    return r["method"] if not r["variant"] else f"{r['method']} ({r['variant']})"


def cells(records: list[dict], table: str, metric: str, fraction: float) -> dict:
    """{row label: {minutes: [values, one per unit (seed x fold)]}} of one table, metric and
    label fraction; reference rows (spectral baseline, random init) under minutes 0."""
    out: dict = defaultdict(lambda: defaultdict(list))
    for r in records:
        if (r["table"] == table and r["metric"] == metric and r["value"] is not None
                and abs(r["order"] - fraction) < 1e-9):
            out[row_label(r)][r["minutes"]].append(r["value"])
    return out


def markdown(records: list[dict], fractions: list[float]) -> list[str]:
    """One table per (linear-probe layer, metric, fraction): rows method (variant), columns
    pretraining minutes; a cell is mean ± 95% CI half-width over units (n), as the report's."""
    from eossl.evaluate.results import mean_ci

    minutes = sorted({r["minutes"] for r in records if r["minutes"] > 0})
    steps = defaultdict(list)
    for r in records:
        if r["minutes"] > 0 and r["metric"] == HEADLINE[0] and r["fold"] == 0:
            steps[(row_label(r), r["minutes"])].append(r["steps"])
    lines = []
    for table in linear_tables(records):
        for metric in HEADLINE:
            for frac in fractions:
                c = cells(records, table, metric, frac)
                if not c:
                    continue
                lines += [f"### {table}: {metric.replace('_', ' ')}, {frac:.0%} labels", "",
                          "| row | " + " | ".join(f"{m:g} min" for m in minutes) + " |",
                          "|---|" + "---:|" * len(minutes)]
                refs = [k for k in c if 0.0 in c[k]]
                for label in sorted(k for k in c if k not in refs) + sorted(refs):
                    row = []
                    for m in (minutes if label not in refs else [0.0] * len(minutes)):
                        vals = c[label].get(m)
                        if not vals:
                            row.append("–")
                            continue
                        mean, half = mean_ci(vals)
                        st = steps.get((label, m))
                        row.append(f"{mean:.3f}" + (f" ± {half:.3f}" if half else "")
                                   + f" (n {len(vals)}"
                                   + (f"; {sum(st) / len(st):.0f} steps" if st else "") + ")")
                    lines.append(f"| {label} | " + " | ".join(row) + " |")
                lines.append("")
    return lines


def goal_lines(records: list[dict], at: float = 10.0) -> list[str]:
    """Where the goal stands at ``at`` minutes: per row, on how many units (seed x fold) the
    linear probe (last stage, all labels) beats the spectral baseline on balanced accuracy,
    and its mean accuracy against 0.70."""
    table = next((t for t in linear_tables(records) if "last" in t), None)
    if table is None:
        return []
    base = {(r["seed"], r["fold"]): r["value"] for r in records
            if r["method"] == "spectral baseline" and r["table"] == table
            and r["metric"] == "balanced_accuracy" and r["order"] == 1.0}
    rows = defaultdict(dict)
    acc = defaultdict(list)
    for r in records:
        if r["minutes"] == at and r["table"] == table and r["order"] == 1.0 \
                and r["value"] is not None:
            if r["metric"] == "balanced_accuracy":
                rows[row_label(r)][(r["seed"], r["fold"])] = r["value"]
            elif r["metric"] == "accuracy":
                acc[row_label(r)].append(r["value"])
    out = []
    for label, units in sorted(rows.items()):
        wins = sum(v > base[u] for u, v in units.items() if base.get(u) is not None)
        mean_acc = sum(acc[label]) / len(acc[label]) if acc[label] else float("nan")
        out.append(f"- {label}, {at:g} min: beats the spectral baseline on balanced accuracy "
                   f"on {wins} of {len(units)} units (seed x fold); mean accuracy "
                   f"{mean_acc:.3f} (goal 0.70)")
    return out


def paired_lines(records: list[dict]) -> list[str]:
    """Each row against the spectral baseline and against its own random twin on the same
    units (seed x fold): the mean difference of the last-stage linear probe's balanced
    accuracy (all labels) and on how many units the row is ahead. Reference rows are measured
    on every seed in the folder while a row may have fewer, so only paired units compare."""
    table = next((t for t in linear_tables(records) if "last" in t), None)
    if table is None:
        return []
    sel = [r for r in records if r["table"] == table and r["metric"] == "balanced_accuracy"
           and r["order"] == 1.0 and r["value"] is not None]
    base = {(r["seed"], r["fold"]): r["value"] for r in sel
            if r["method"] == "spectral baseline"}
    twins: dict = defaultdict(dict)
    for r in sel:
        for member in r.get("twin_of") or ():
            twins[member][(r["seed"], r["fold"])] = r["value"]
    rows: dict = defaultdict(dict)
    for r in sel:
        if r["minutes"] > 0:
            rows[(row_label(r), r["minutes"])][(r["seed"], r["fold"])] = r["value"]

    from eossl.evaluate.results import paired_diffs

    def diff(units: dict, ref: dict) -> str:
        d = list(paired_diffs(units, ref).values())
        if not d:
            return "–"
        return f"{sum(d) / len(d):+.3f} ({sum(x > 0 for x in d)}/{len(d)})"

    out = [("| row | minutes | units | minus spectral baseline (units ahead) "
            "| minus its random twin (units ahead) |"), "|---|---:|---:|---:|---:|"]
    for (label, minutes), units in sorted(rows.items()):
        out.append(f"| {label} | {minutes:g} | {len(units)} | {diff(units, base)} "
                   f"| {diff(units, twins.get(label, {}))} |")
    return out


def plot(records: list[dict], fraction: float, path: Path) -> Path | None:
    """Balanced accuracy of the linear probe vs pretraining minutes, one line per method
    (variant), one panel per feature layer; error bars and bands: 95% CI over units."""
    from eossl.evaluate.results import mean_ci
    from eossl.report import save_figure

    tables = linear_tables(records)
    if not tables:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(5.2 * len(tables), 4), dpi=100,
                             squeeze=False, sharey=True)
    minutes = sorted({r["minutes"] for r in records if r["minutes"] > 0})
    colours = plt.get_cmap("tab10").colors
    for ax, table in zip(axes[0], tables):
        c = cells(records, table, "balanced_accuracy", fraction)
        methods = sorted(k for k in c if 0.0 not in c[k])
        for i, label in enumerate(methods):
            xs = [m for m in minutes if c[label].get(m)]
            stats = [mean_ci(c[label][m]) for m in xs]
            # rows share their budgets: a small sideways offset (log axis, so a factor)
            # keeps overlapping error bars apart
            dodge = 1 + 0.04 * (i - (len(methods) - 1) / 2)
            ax.errorbar([x * dodge for x in xs], [s[0] for s in stats],
                        yerr=[s[1] or 0 for s in stats],
                        marker="o", capsize=3, label=label, color=colours[i % len(colours)])
        for j, label in enumerate(sorted(k for k in c if 0.0 in c[k])):
            mean, half = mean_ci(c[label][0.0])
            base = label == "spectral baseline"
            colour = "black" if base else GREYS[j % len(GREYS)]
            ax.axhline(mean, ls=":" if base else "--", color=colour, label=label)
            if half:  # the reference's 95% CI as a faint band
                ax.axhspan(mean - half, mean + half, color=colour, alpha=0.08, lw=0)
        ax.set_xscale("log")
        ax.set_xticks(minutes, [f"{m:g}" for m in minutes])
        ax.minorticks_off()
        ax.set_xlabel("pretraining wall time (minutes)")
        ax.set_title(f"{table}, {fraction:.0%} labels", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("balanced accuracy (95% CI)")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path)


def write_outputs(a, records: list[dict], sessions: list[dict]) -> None:
    from eossl.report import atomic_write_text

    md = ["# Probe score vs pretraining minutes", "",
          "Linear probe (eossl's `probe` evaluation) of each checkpoint on the scene's spatial "
          "folds; a cell is the mean ± 95% CI half-width (Student t) over units, a unit being "
          "one seed on one fold; n: units; steps: mean pretraining steps reached. Reference "
          "rows (spectral baseline, random init) do not depend on the budget.", "",
          *markdown(records, a.fractions),
          "### Paired: linear probe (last stage), balanced accuracy, 100% labels", "",
          ("Each row minus the spectral baseline and minus its own random twin (same "
           "architecture, random weights) on the same seeds and folds: mean difference "
           "(units where the row is ahead / units)."), "",
          *paired_lines(records), "", "Goal at 10 minutes:", "",
          *(goal_lines(records) or ["- no 10-minute runs in these results"]), "",
          "Sessions:", ""]
    md += [f"- {s['date']}: `{s['command']}` on {s['machine']['cpu_model']}, "
           f"{s['machine']['cpu_cores']} cores, torch {s['machine']['torch']} "
           f"({s['machine']['torch_threads']} threads)" for s in sessions]
    png = plot(records, a.fractions[-1], a.out / "time_to_accuracy.png")
    if png:
        md += ["", f"![probe score vs minutes]({png.name})"]
    atomic_write_text(a.out / "time_to_accuracy.md", "\n".join(md) + "\n")
    atomic_write_text(a.out / "results.json", json.dumps(
        {"benchmark": "time_to_accuracy", "sessions": sessions, "records": records},
        indent=1))


def estimate_s(todo_runs: int, todo_budget_s: float, todo_probes: int) -> float:
    """Seconds still to go: budgets, each run's start-up and the probes (a rough guess)."""
    return todo_budget_s + todo_runs * RUN_OVERHEAD_S + todo_probes * PROBE_S


def main(argv=None) -> int:
    from throughput import machine_info

    a = parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    results = a.out / "results.json"
    sessions = json.loads(results.read_text())["sessions"] if results.is_file() else []
    earlier = {tuple(s["grid"]["fractions"]) for s in sessions}
    if earlier - {tuple(a.fractions)}:
        raise SystemExit(f"{a.out} holds probes at label fractions {min(earlier)}; give "
                         "the same --fractions or another --out")
    grid = [(m, v, mi, s) for m in a.methods for v in a.variants for mi in a.minutes
            for s in a.seeds]
    todo = [g for g in grid if not (a.out / "runs" / run_key(*g) / "summary.json").is_file()]
    probes = [g for g in grid if not (a.out / "records" /
                                      f"{run_key(*g).replace('/', '-')}.json").is_file()]
    budget = sum(g[2] * 60 for g in todo)
    rec = a.out / "records"
    references = sum(int(not (rec / f"spectral-baseline-seed{s}.json").is_file())
                     + (len(a.variants) + 1) * int(not any(rec.glob(f"twin-*-seed{s}.json")))
                     for s in a.seeds)  # a baseline per seed, about a twin per variant
    est = estimate_s(len(todo), budget, len(probes) + references)
    print(f"{len(grid)} runs ({len(todo)} to pretrain: {budget / 60:.0f} min of budgets), "
          f"{len(probes)} checkpoints to probe; estimated wall time "
          f"{f'{est / 3600:.1f} h' if est > 7200 else f'{est / 60:.0f} min'} "
          f"(~{RUN_OVERHEAD_S} s start-up per run, ~{PROBE_S} s per probe)", flush=True)
    if not a.yes and sys.stdin.isatty():
        time.sleep(5)
    command = "python benchmarks/time_to_accuracy.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    sessions.append({"command": command, "machine": machine_info(),
                     "date": datetime.now().isoformat(timespec="seconds"),
                     "grid": {"methods": a.methods, "variants": a.variants,
                              "minutes": a.minutes, "seeds": a.seeds,
                              "fractions": a.fractions}})
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{(time.time() - t0) / 60:5.1f} min] {msg}", flush=True)

    runs = {g: pretrained(a, *g, log) for g in grid}
    # the results cover every session's runs in this folder: earlier grids' finished runs too
    for s in sessions[:-1]:
        g = s["grid"]
        for key in [(m, v, mi, sd) for m in g["methods"] for v in g["variants"]
                    for mi in g["minutes"] for sd in g["seeds"]]:
            if key not in runs and finished(a.out / "runs" / run_key(*key)):
                runs[key] = run_info(a.out / "runs" / run_key(*key))
    seeds = sorted({k[3] for k in runs})
    records = probe_all(a, runs, seeds, log)
    write_outputs(a, records, sessions)
    log(f"written: {a.out / 'results.json'}, {a.out / 'time_to_accuracy.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
