"""The main job: fetch the real sample scene, pretrain MoCo v2, probe it, write a report.

This is what ``eossl demo`` and ``make demo`` run: the shortest path from nothing to an honest
table of a pretrained encoder against random initialisation and the spectral baseline, on the
spatial test block of a real Sentinel-2 scene.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import torch

from . import __version__
from .config import load_config
from .data import samples
from .errors import ConfigError, OutputExistsError
from .train import check_run_dir, pretrain, run_state


def run_demo(out: str | Path, *, max_time: str = "10m", max_steps: int | None = None,
             cache=None, seeds=(0, 1, 2), fractions=(0.01, 0.1, 1.0), config=None,
             progress: bool = True, echo=print, trainer: dict | None = None) -> Path:
    out = Path(out)
    # every argument is checked before the download and the pretraining
    seeds, fractions = list(seeds), list(fractions)
    if not seeds:
        raise ConfigError("--seeds: expected at least one seed, e.g. 0,1,2")
    if not fractions or not all(0 < f <= 1 for f in fractions):
        raise ConfigError(f"label fractions {fractions}: expected shares in (0, 1]")
    cfg = load_config(config, {"trainer.max_time": max_time, "trainer.max_steps": max_steps,
                               "method": "moco",  # trainer: accelerator, devices, ...
                               **{f"trainer.{k}": v for k, v in (trainer or {}).items()}})
    check_run_dir(out, resume=False)  # refuses a file, a used folder, an unwritable place
    if run_state(out) not in ("absent", "empty"):
        raise OutputExistsError(f"{out} already exists and is not empty; choose another --out")
    echo(f"[1/4] sample data -> {samples.cache_dir(cache)}")
    samples.fetch_all(cache)
    echo(f"[2/4] pretraining {cfg['method']} on the Brandenburg scene "
         f"(budget: {cfg['trainer']['max_time'] or '-'} / {cfg['trainer']['max_steps'] or '-'} "
         "steps)")
    res = pretrain(cfg, out / "pretrain", cache=cache, progress=progress)
    echo(f"      {res.steps} steps in {res.seconds:.0f} s ({res.images_per_s:.0f} images/s)")
    echo(f"[3/4] probing on the spatial test blocks ({len(seeds)} seeds, label fractions "
         f"{', '.join(f'{f:.0%}' for f in fractions)})")
    from .checkpoint import load_encoder
    from .evaluate.base import Context, compare
    from .evaluate.probe import PatchProbe
    from .evaluate.summary import report_blocks
    from .report import blocks_to_text, write_blocks

    probe = PatchProbe(fractions=tuple(fractions),
                       patch_size=int(cfg["data"]["probe_patch_size"]))
    ctx = Context("brandenburg", cache=cache, source=res.source,
                  options={"first_seed": seeds[0]})
    records = compare(probe, ctx, {"MoCo v2": load_encoder(res.checkpoint)}, seeds,
                      progress=progress)
    header = [
        f"**command**: `{' '.join(['eossl'] + sys.argv[1:]) if sys.argv else 'eossl demo'}`",
        "**data**: Sentinel-2 L1C T33UUU 2017-02-16 (13 bands), OSM land use; 16 px patches, "
        f">= 80% majority; {res.source.split_note}",
        f"**pretraining**: MoCo v2, {cfg['model'].get('backbone', 'resnet18')}, "
        f"{res.steps} steps, {res.seconds:.0f} s, batch {cfg['data']['batch_size']}, crops "
        f"{cfg['data']['crop_size']} px",
        f"**seeds**: {', '.join(map(str, seeds))}",
        f"**machine**: {platform.machine()}, {torch.get_num_threads()} threads, "
        f"{platform.python_version()}, torch {torch.__version__}; eossl {__version__}",
    ]
    echo("[4/4] report")
    blocks = report_blocks([probe], records, title="eossl demo: MoCo v2 on a real Sentinel-2 "
                           "scene", header=header, splits={probe.name: probe.splits(ctx)},
                           figures=out / "report" / "figures")
    curve = plot_training(out / "pretrain" / "logs" / "metrics.csv",
                          out / "report" / "training.png")
    if curve:
        blocks += [("h2", "Pretraining"), ("img", curve, "training curve")]
    report = write_blocks(out / "report", blocks, title="eossl demo")
    echo("")
    echo(blocks_to_text(blocks))
    echo(f"report: {report}")
    return report


def plot_training(metrics_csv: Path, path: Path) -> Path | None:
    """Training loss (and the online kNN accuracy when logged) against step."""
    if not Path(metrics_csv).exists():
        return None
    import matplotlib
    import pandas as pd

    from .report import save_figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = pd.read_csv(metrics_csv)
    loss_col = next((c for c in m.columns if c.startswith("train/loss")), None)
    if loss_col is None:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=100)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path)
