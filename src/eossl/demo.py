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
from .evaluate.compare import probe_checkpoints
from .report import markdown_table, write_report
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
    records = probe_checkpoints(res.source, {"MoCo v2": str(res.checkpoint)},
                                patch_size=int(cfg["data"]["probe_patch_size"]),
                                fractions=fractions, seeds=seeds)
    header = {
        "command": " ".join(["eossl"] + sys.argv[1:]) if sys.argv else "eossl demo",
        "data": "Sentinel-2 L1C T33UUU 2017-02-16 (13 bands), OSM land use; 16 px patches, "
                ">= 80% majority",
        "split": getattr(res.source, "split_note", "-"),
        "pretraining": f"MoCo v2, {cfg['model'].get('backbone', 'resnet18')}, "
                       f"{res.steps} steps, {res.seconds:.0f} s, batch "
                       f"{cfg['data']['batch_size']}, crops {cfg['data']['crop_size']} px",
        "seeds": ", ".join(map(str, seeds)),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
                   f"{platform.python_version()}, torch {torch.__version__}",
        "eossl": __version__,
    }
    echo("[4/4] report")
    report = write_report(out / "report", records, title="eossl demo: MoCo v2 on a real "
                          "Sentinel-2 scene", header=header,
                          metrics_csv=out / "pretrain" / "logs" / "metrics.csv")
    echo("")
    echo(markdown_table(records, metrics=("accuracy", "balanced_accuracy")))
    echo(f"report: {report}")
    return report
