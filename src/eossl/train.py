"""Pretraining runs: data source + method + Lightning Trainer, in a run folder of their own.

A run folder holds the resolved ``config.yaml``, ``checkpoints/`` (periodic and ``last.ckpt``,
each carrying bands and normalisation statistics), ``metrics.csv`` (loss, kNN probe, collapse
monitor) and ``summary.json``. An existing run folder is never overwritten: it is resumed
(``resume=True``) or refused.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader

from .config import parse_duration
from .data.sources import SceneSource, open_source
from .errors import ConfigError, OutputExistsError
from .methods import get_method


@dataclass
class PretrainResult:
    run_dir: Path
    checkpoint: Path
    steps: int
    seconds: float
    images_per_s: float
    source: SceneSource  # the opened data, so a caller can probe without reopening it


def new_run_dir(root: str | os.PathLike, method: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{method}-{stamp}"
    out, i = base, 1
    while out.exists():
        out, i = Path(f"{base}-{i}"), i + 1
    return out


def prepare_run_dir(out: Path, resume: bool) -> None:
    """Refuse to write into a folder that holds something, unless resuming a run there."""
    if resume:
        if not (out / "checkpoints" / "last.ckpt").exists():
            raise OutputExistsError(f"{out}: nothing to resume (no checkpoints/last.ckpt)")
        return
    if out.exists() and any(out.iterdir()):
        raise OutputExistsError(f"{out} already exists and is not empty; pass --resume to "
                                "continue the run there, or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise OutputExistsError(f"{out}: cannot write there ({e.strerror})") from None


def _quiet_lightning() -> None:
    import logging

    # Lightning's INFO lines (accelerator banner, a cloud-logger advert) say nothing our own
    # summary does not; warnings still come through.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    # These warnings are about choices we make on purpose (no workers on a 2-core machine,
    # few batches in the kNN loaders); they would bury the progress bar for our users.
    for msg in (".*does not have many workers.*", ".*exists and is not empty.*",
                ".*LeafSpec.*", ".*number of training batches.*", ".*treespec.*"):
        warnings.filterwarnings("ignore", message=msg)


def pretrain(cfg: dict, out: str | os.PathLike, *, resume: bool = False,
             cache: str | os.PathLike | None = None, progress: bool = True) -> PretrainResult:
    """Pretrain ``cfg['method']`` on ``cfg['data']['name']`` into run folder ``out``."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    out = Path(out)
    if resume and (out / "config.yaml").exists():
        cfg = yaml.safe_load((out / "config.yaml").read_text())
    if resume or (out.exists() and any(out.iterdir())):  # refuse early, before data work
        prepare_run_dir(out, resume)
    _quiet_lightning()
    method_cls = get_method(cfg["method"])  # fail on a bad name before any data work
    d, t = cfg["data"], cfg["trainer"]
    max_time = parse_duration(t.get("max_time"))
    max_steps = t.get("max_steps")
    if max_steps is not None and int(max_steps) < 1:
        raise ConfigError(f"max_steps must be >= 1, got {max_steps}")
    if max_time is None and max_steps is None:
        raise ConfigError("give a budget: --max-time (e.g. 10m) and/or --max-steps")
    for key in ("crop_size", "batch_size", "crops_per_epoch"):
        if int(d[key]) < 1:
            raise ConfigError(f"data.{key} must be >= 1, got {d[key]}")

    L.seed_everything(int(cfg.get("seed", 0)), workers=True, verbose=False)
    source = open_source(d["name"], cache, d.get("labels"), bands=d.get("bands"))
    train_ds = method_cls.train_dataset(source, d)
    stats = source.stats()
    model = method_cls(bands=source.bands, stats=stats.to_dict(), crop_size=int(d["crop_size"]),
                       max_steps=max_steps, max_time_s=max_time, **(cfg.get("model") or {}))

    loader_kw = dict(batch_size=int(d["batch_size"]), num_workers=int(d.get("num_workers", 0)))
    train_dl = DataLoader(train_ds, shuffle=False, drop_last=True,
                          persistent_workers=loader_kw["num_workers"] > 0, **loader_kw)
    val_dls = None
    if source.polygons is not None:
        size = int(d.get("probe_patch_size", 16))
        val_dls = [DataLoader(source.patches("train", size), batch_size=256),
                   DataLoader(source.patches("test", size), batch_size=256)]

    # Everything that can fail on bad input has run by now, so a refused run leaves no folder.
    if not resume:
        prepare_run_dir(out, resume)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    ckpt = ModelCheckpoint(dirpath=out / "checkpoints", filename="step{step:06d}",
                           auto_insert_metric_name=False, every_n_train_steps=int(
                               t.get("checkpoint_every_n_steps", 100)),
                           save_last=True, save_top_k=-1)
    val_every = int(t.get("val_every_n_steps", 100))
    trainer = L.Trainer(
        default_root_dir=out, max_time={"seconds": max_time} if max_time else None,
        max_steps=int(max_steps) if max_steps else -1, max_epochs=-1,
        accelerator=t.get("accelerator", "auto"), devices=t.get("devices", 1),
        num_nodes=int(t.get("num_nodes", 1)), strategy=t.get("strategy", "auto"),
        precision=t.get("precision", "32-true"), callbacks=[ckpt],
        logger=CSVLogger(out, name="", version="logs"), log_every_n_steps=10,
        val_check_interval=val_every if val_dls else None,
        check_val_every_n_epoch=None if val_dls else 1,
        limit_val_batches=None if val_dls else 0, num_sanity_val_steps=0,
        enable_progress_bar=progress, enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(model, train_dataloaders=train_dl, val_dataloaders=val_dls,
                ckpt_path=str(out / "checkpoints" / "last.ckpt") if resume else None)
    secs = time.perf_counter() - start
    # The final state is saved whatever step the budget ended on.
    # weights_only=False keeps optimiser and loop state, so the run can be resumed from it.
    trainer.save_checkpoint(out / "checkpoints" / "last.ckpt", weights_only=False)
    steps = int(trainer.global_step)
    start_step = model.resumed_from_step  # images/s counts this session's steps only
    summary = {
        "method": cfg["method"], "data": d["name"], "steps": steps,
        "resumed_from_step": start_step, "seconds": round(secs, 1),
        "images_per_s": round((steps - start_step) * int(d["batch_size"]) / max(secs, 1e-9), 1),
        "bands": source.bands, "device": str(trainer.strategy.root_device),
        "torch": torch.__version__, "finished": datetime.now().isoformat(timespec="seconds"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return PretrainResult(out, out / "checkpoints" / "last.ckpt", steps, secs,
                          summary["images_per_s"], source)
