"""What the two views of one pretraining step cost: eossl's ContrastiveViews next to torchgeo's
MoCo v2 and SimCLR augmentations, on the same batch, in one process.

The batch is what a training step sees: ``--batch-size`` random 13-band crops of the real
Sentinel-2 sample scene (eossl's ``RandomCropDataset``, seed 0), normalised by eossl's
``Normalizer``. Each pipeline makes two views of it: eossl with ``ContrastiveViews.pair`` (what
MoCo, SimCLR, BYOL and the spectral method call), torchgeo by calling its augmentation module
twice, as its ``MoCoTask`` (v2) and ``SimCLRTask`` training steps do. The pipelines take turns
rep by rep, so that both see the same state of the machine; each rep is timed by process CPU
time (the work done; on a shared machine less disturbed than wall time, which is reported too)
and the median over reps is kept. A torch.profiler run over eossl's pair then gives each
operator's share of its CPU time: where the views' time goes.

    python benchmarks/views.py                               # ~1 min
    python benchmarks/views.py --reps 2 --out /tmp/v.json    # smoke test (seconds)

Writes benchmarks/results/views.json (machine, command, settings, rows, profile) and prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "views.json"


def batch(size: int, batch_size: int):
    """A normalised batch of real scene crops, as a training step gets it."""
    import torch

    from eossl.data import samples, sources
    from eossl.normalization import Normalizer

    src = sources.brandenburg(samples.cache_dir())
    ds = src.crops(size, length=batch_size, seed=0)
    x = torch.stack([ds[i]["image"] for i in range(batch_size)])
    return Normalizer(src.stats())(x)


def pipelines(size: int, bands: int) -> dict:
    """name -> a function making two views of a batch."""
    import torch
    from torchgeo.trainers.moco import moco_augmentations
    from torchgeo.trainers.simclr import simclr_augmentations

    from eossl.views import ContrastiveViews

    eossl = ContrastiveViews(size)
    moco, _ = moco_augmentations(2, size, torch.ones(bands))  # MoCoTask's default weights
    simclr = simclr_augmentations(size, torch.ones(bands))
    return {"eossl ContrastiveViews.pair": eossl.pair,
            "torchgeo MoCo v2 augmentations (2 calls)": lambda x: (moco(x), moco(x)),
            "torchgeo SimCLR augmentations (2 calls)": lambda x: (simclr(x), simclr(x))}


def time_pipelines(fns: dict, x, reps: int, warmup: int = 2) -> dict:
    """name -> {cpu_ms, wall_ms}: medians over ``reps`` interleaved calls."""
    import torch

    cpu: dict = {n: [] for n in fns}
    wall: dict = {n: [] for n in fns}
    with torch.no_grad():
        for i in range(warmup + reps):
            for name, fn in fns.items():
                c, w = time.process_time(), time.perf_counter()
                fn(x)
                if i >= warmup:
                    cpu[name].append(time.process_time() - c)
                    wall[name].append(time.perf_counter() - w)
    return {n: {"cpu_ms": 1000 * statistics.median(cpu[n]),
                "wall_ms": 1000 * statistics.median(wall[n])} for n in fns}


def profile_shares(fn, x, reps: int, top: int = 12) -> list[dict]:
    """The operators taking most of ``fn``'s CPU time (self time), with their shares."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            fn(x)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return [{"op": e.key, "calls_per_pair": e.count / reps,
             "share": e.self_cpu_time_total / total} for e in events[:top]]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--size", type=int, default=64, help="crop and view side in px")
    p.add_argument("--reps", type=int, default=30, help="timed pairs per pipeline")
    p.add_argument("--profile", type=int, default=5, help="profiled pairs of eossl's views")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    import torch

    from throughput import machine_info  # benchmarks/ is on sys.path when run as a script

    if a.threads:
        torch.set_num_threads(a.threads)
    x = batch(a.size, a.batch_size)
    fns = pipelines(a.size, x.shape[1])
    rows = time_pipelines(fns, x, a.reps)
    ref = rows["torchgeo MoCo v2 augmentations (2 calls)"]["cpu_ms"]
    shares = profile_shares(fns["eossl ContrastiveViews.pair"], x, a.profile)
    info = machine_info()
    command = "python benchmarks/views.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [f"Machine: {info['cpu_model']}, {info['cpu_cores']} cores, torch {info['torch']}, "
             f"{info['torch_threads']} threads; batch {a.batch_size}, {x.shape[1]} bands, "
             f"{a.size} px, median of {a.reps} pairs", "",
             "| two views of a batch | CPU ms | wall ms | CPU x torchgeo MoCo v2 |",
             "|---|---:|---:|---:|"]
    lines += [f"| {n} | {r['cpu_ms']:.1f} | {r['wall_ms']:.1f} | {r['cpu_ms'] / ref:.2f} |"
              for n, r in rows.items()]
    lines += ["", "eossl ContrastiveViews.pair, share of CPU time by operator:", "",
              "| operator | calls per pair | share |", "|---|---:|---:|"]
    lines += [f"| {s['op']} | {s['calls_per_pair']:g} | {100 * s['share']:.0f}% |"
              for s in shares]
    md = "\n".join(lines)
    print(md)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({
        "benchmark": "views", "command": command, "machine": info,
        "settings": {"batch_size": a.batch_size, "size": a.size, "bands": int(x.shape[1]),
                     "reps": a.reps, "profile_pairs": a.profile,
                     "data": "brandenburg RandomCropDataset, seed 0, normalised"},
        "rows": rows, "eossl_profile": shares, "markdown": md}, indent=2))
    print(f"\nwrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
