"""What timm's standard ResNet stem costs against eossl's small-patch stem, measured.

eossl's recipes for small patches use stem stride 2 (timm's stem without its max-pool; the one
setting is methods/base.py DEFAULT_STEM_STRIDE): a 16 px probe patch keeps a 2x2 map at the
last stage. timm's own stem (stride 4) leaves it 1x1 but makes exports load as-is in timm,
torchgeo and terratorch (docs/export.md). This script pretrains one recipe at both strides
with the same budget and seeds, probes every encoder with eossl's evaluation code (linear and
kNN probes on the spatial folds of the labelled sample scene, the evaluation registry's
probe) at each
probe patch size beside a random-init twin of the same stem, and writes a Markdown table with
the command and the machine.

    python benchmarks/stem_stride.py          # moco-cpu, 10 min per run, seeds 0 1 2,
                                              # patches 16 and 32 px: about 1 h 10 min
    python benchmarks/stem_stride.py --max-steps 2 --seeds 0 --patch-sizes 16 \\
        --fractions 1.0 --probe-seeds 0 --out /tmp/stem.md   # smoke test (a minute or two)

The pretraining runs are kept under --runs (default runs/stem-stride/) and reused when the
script is run again with the same settings, so a probe-only change reruns quickly.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STRIDES = (2, 4)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="moco-cpu", help="recipe to pretrain (default moco-cpu)")
    p.add_argument("--max-time", default="10m", help="pretraining budget per run (default 10m)")
    p.add_argument("--max-steps", type=int, help="step budget per run instead of --max-time")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="pretraining seeds (default 0 1 2)")
    p.add_argument("--patch-sizes", type=int, nargs="+", default=[16, 32],
                   help="probe patch sizes in px (default 16 32)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0],
                   help="label fractions of the probes (default 0.1 1.0)")
    p.add_argument("--probe-seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="seeds of the probes' label subsets (default 0 1 2)")
    p.add_argument("--runs", default="runs/stem-stride", help="folder for the pretraining runs")
    p.add_argument("--out", default=str(HERE / "stem_stride.md"), help="Markdown table "
                   "(the JSON records go beside it, .json)")
    p.add_argument("--cache", help="sample-data cache (default: eossl's)")
    return p.parse_args(argv)


def pretrain_runs(a) -> dict[tuple[int, int], dict]:
    """(stride, seed) -> {"checkpoint", "steps", "seconds"}; finished runs are reused."""
    from eossl.config import load_config
    from eossl.train import pretrain

    budget = ({"trainer.max_steps": a.max_steps} if a.max_steps
              else {"trainer.max_time": a.max_time})
    runs = {}
    for stride in STRIDES:
        for seed in a.seeds:
            out = Path(a.runs) / f"stem{stride}-seed{seed}"
            cfg = load_config(a.config, {"model.stem_stride": stride, "seed": seed,
                                         "trainer.accelerator": "cpu", **budget})
            summary = out / "summary.json"
            if not (summary.is_file() and (out / "config.yaml").is_file()
                    and _same_config(out, cfg)):
                print(f"pretraining stem {stride}, seed {seed} -> {out}", flush=True)
                pretrain(cfg, out, cache=a.cache, progress=sys.stderr.isatty())
            s = json.loads(summary.read_text())
            runs[(stride, seed)] = {"checkpoint": str(out / "checkpoints" / "last.ckpt"),
                                    "steps": s["steps"], "seconds": s["seconds"]}
    return runs


def _same_config(out: Path, cfg: dict) -> bool:
    import yaml

    return yaml.safe_load((out / "config.yaml").read_text()) == cfg


def probe(a, runs) -> list[dict]:
    """Linear and kNN probe records (balanced accuracy, last stage) of every run and of the
    random twin per stride, from the evaluation registry's probe on the scene's spatial
    folds: one record per (model, probe, fraction, probe seed, fold)."""
    from eossl.checkpoint import load_encoder
    from eossl.evaluate.base import Context, compare, get_evaluation

    ctx = Context("brandenburg", cache=a.cache)
    records = []
    for size in a.patch_sizes:
        ev = get_evaluation("probe")(fractions=tuple(a.fractions), layers=("last",),
                                     patch_size=size)
        for stride in STRIDES:
            encoders = {f"seed {seed}": load_encoder(runs[(stride, seed)]["checkpoint"])
                        for seed in a.seeds}
            print(f"probing stem {stride} at {size} px ...", flush=True)
            for r in compare(ev, ctx, encoders, seeds=a.probe_seeds):
                if r["metric"] != "balanced_accuracy" or r["table"].startswith("_"):
                    continue
                model = "random init" if r["model"].startswith("random init") else r["model"]
                if model == "spectral baseline" and stride != STRIDES[0]:
                    continue  # the same for both strides
                kind = "knn" if r["table"].startswith("kNN") else "linear"
                records.append({"model": model, "kind": kind, "fraction": r["order"],
                                "balanced_accuracy": r["value"], "seed": r["seed"],
                                "fold": r["fold"], "stride": stride, "patch_size": size})
    return records


def table(records, a) -> list[str]:
    """One row per (patch size, probe, fraction): mean +- sd (ddof 1) of balanced accuracy
    over pretraining x probe seeds, per stride, pretrained and random twin."""
    def cell(rows):
        vals = [r["balanced_accuracy"] for r in rows if r["balanced_accuracy"] is not None]
        if not vals:
            return "n/a"
        if len(vals) == 1:
            return f"{vals[0]:.3f}"
        return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"

    head = ["patch px", "probe", "labels", "spectral baseline"]
    for s in STRIDES:
        head += [f"stem {s} pretrained", f"stem {s} random init"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for size in a.patch_sizes:
        for kind in ("linear", "knn"):
            for frac in a.fractions:
                sel = [r for r in records if r["patch_size"] == size and r["kind"] == kind
                       and r["fraction"] == frac]
                row = [str(size), kind, f"{frac:g}",
                       cell([r for r in sel if r["model"] == "spectral baseline"])]
                for s in STRIDES:
                    mine = [r for r in sel if r["stride"] == s]
                    row += [cell([r for r in mine if r["model"].startswith("seed ")]),
                            cell([r for r in mine if r["model"] == "random init"])]
                lines.append("| " + " | ".join(row) + " |")
    return lines


def machine() -> str:
    """One line for the report, from throughput.py's machine record (one CPU lookup)."""
    from throughput import machine_info  # benchmarks/ is on sys.path when run as a script

    m = machine_info()
    return (f"{m['cpu_model']}, {m['cpu_cores']} cores, torch {m['torch']} "
            f"({m['torch_threads']} threads), Python {m['python']}")


def main(argv=None) -> int:
    a = parse_args(argv)
    t0 = time.time()
    runs = pretrain_runs(a)
    records = probe(a, runs)
    command = "python benchmarks/stem_stride.py " + " ".join(sys.argv[1:] if argv is None
                                                             else argv)
    steps = {s: [runs[(s, k)]["steps"] for k in a.seeds] for s in STRIDES}
    budget = f"{a.max_steps} steps" if a.max_steps else a.max_time
    lines = [
        "# Stem stride 4 (timm's) vs 2 (eossl's small-patch stem)", "",
        f"Recipe `{a.config}`, budget {budget} per run, pretraining seeds "
        f"{', '.join(map(str, a.seeds))}; linear and kNN probes on the spatial folds of the "
        "Brandenburg scene's OSM land-use patches (eossl.evaluate probe, spatial folds, last "
        f"stage), label subsets of probe seeds {', '.join(map(str, a.probe_seeds))}. Balanced "
        "accuracy, mean ± sd (ddof 1) over pretraining × probe seeds × folds; the random-init "
        "twin has the same stem and random weights.", "",
        *table(records, a), "",
        "Steps reached: " + "; ".join(f"stem {s}: {', '.join(map(str, v))}"
                                      for s, v in steps.items()) + ".", "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}; total {time.time() - t0:.0f} s.", "",
        "Read it as: stem 4 is worth switching to (exports then load as-is in timm, torchgeo "
        "and terratorch, docs/export.md) where its pretrained rows are within the seeds' "
        "spread of stem 2's at the patch sizes you probe at.",
    ]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "machine": machine(), "runs": {f"{s}-{k}": v for (s, k), v
                                                            in runs.items()},
         "records": records}, indent=1))
    print("\n".join(lines))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
