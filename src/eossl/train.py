"""Pretraining runs: data source + method + Lightning Trainer, in a run folder of their own.

A run folder holds the resolved ``config.yaml``, ``checkpoints/`` (periodic and ``last.ckpt``,
each carrying bands and normalisation statistics), ``metrics.csv`` (loss, kNN probe, collapse
monitor) and ``summary.json``. An existing run folder is never overwritten: it is resumed
(``resume=True``) or refused.
"""

from __future__ import annotations

import errno
import json
import os
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, Sampler

from .config import parse_duration
from .data.datasets import RandomCropDataset
from .data.sources import SceneSource, open_source
from .errors import ConfigError, DataError, OutputExistsError
from .methods import get_method
from .report import atomic_path, atomic_write_text


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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but through a temporary file + rename.

    Lightning writes checkpoints in place, so a process killed mid-write (SIGKILL, OOM, a lost
    node) leaves a truncated ``last.ckpt`` that ``--resume`` would then fail on; here the old
    checkpoint stays whole until the new one is complete.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with atomic_path(path, suffix=".ckpt") as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


class ResumableSampler(Sampler[int]):
    """Sequential indices that can restart mid-epoch, so a resumed run sees the same batches an
    uninterrupted run would have seen next (Lightning restores its step counters but restarts a
    plain DataLoader at the beginning of the epoch).

    With ``epoch_offset`` the indices continue across epochs (epoch e yields e*n .. e*n+n-1): a
    seeded RandomCropDataset draws crop i from (seed, i), so every epoch gets fresh crops and the
    whole stream is a function of the seed.
    """

    def __init__(self, length: int, batch_size: int, epoch_offset: bool) -> None:
        self.length, self.batch_size, self.epoch_offset = length, batch_size, epoch_offset
        self.epoch = 0
        self.skip_batches = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this before every epoch
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        start, self.skip_batches = self.skip_batches * self.batch_size, 0
        base = self.epoch * self.length if self.epoch_offset else 0
        return iter(range(base + start, base + self.length))


def launched_rank_zero() -> bool:
    """False in the processes a launcher started as ranks > 0.

    Lightning's own DDP launcher re-runs the command with ``LOCAL_RANK``/``NODE_RANK`` set;
    torchrun sets ``RANK``, SLURM ``SLURM_PROCID``. Those processes run ``pretrain`` too, from
    the start, before any process group exists; only rank 0 may refuse or prepare the run
    folder and write ``config.yaml`` and ``summary.json``, or the other ranks would find the
    folder rank 0 just filled and refuse it.
    """
    env = os.environ
    if any(env.get(k, "0") not in ("", "0") for k in ("RANK", "LOCAL_RANK", "NODE_RANK",
                                                       "GROUP_RANK")):
        return False
    # SLURM_PROCID is also set (to 0) inside a one-task allocation that Lightning launches
    # from, so it only counts when SLURM runs several tasks.
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_PROCID", "0") != "0":
        return False
    return True


def external_launch() -> bool:
    """True when torchrun or SLURM started several copies of this command at once."""
    env = os.environ
    return int(env.get("WORLD_SIZE", "1") or 1) > 1 or int(env.get("SLURM_NTASKS", "1") or 1) > 1


class ChannelsLast(Callback):
    """NHWC memory layout for the module's 4-D weights and the batches' 4-D images.

    The one place eossl converts layouts (``trainer.channels_last``, ``--channels-last``). On
    CPU (oneDNN) and on GPUs with tensor cores convolutions run faster in NHWC; a convolution
    whose weight is NHWC returns NHWC, so views made from the batch keep the layout through
    the network. Works for any LightningModule (the throughput benchmark applies it to
    torchgeo's tasks too). Runs in ``setup``, before the strategy wraps the module (DDP's
    gradient buckets then match the parameters' strides).

    1x1 kernels (N, C, 1, 1) are left as they are: their memory order is the same in both
    layouts, and gloo's coalesced broadcast, which DDP uses to sync the initial weights,
    fails on channels-last tensors of that shape (torch 2.14: "some elements of the input
    tensor and the written-to tensor refer to a single memory location").
    """

    def setup(self, trainer, pl_module, stage: str) -> None:
        for t in [*pl_module.parameters(), *pl_module.buffers()]:
            if t.ndim == 4 and tuple(t.shape[-2:]) != (1, 1):
                t.data = t.data.contiguous(memory_format=torch.channels_last)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if isinstance(batch, dict):
            for k, v in batch.items():
                if isinstance(v, torch.Tensor) and v.ndim == 4:
                    batch[k] = v.contiguous(memory_format=torch.channels_last)


class CompileBackbone(Callback):
    """``torch.compile`` of the method's backbone(s) (``trainer.compile``, ``--compile``).

    Compiles every child module whose name starts with ``backbone`` (the encoder and, where a
    method has one, its momentum copy) with ``nn.Module.compile``, which compiles in place:
    unlike ``torch.compile(module)`` it adds no ``_orig_mod.`` level to the state dict, so
    checkpoints keep ``backbone.*`` keys and load into a plain encoder (``load_encoder``).
    ``mode`` is torch.compile's (None, "reduce-overhead", "max-autotune").
    """

    def __init__(self, mode: str | None = None) -> None:
        self.mode = mode
        self.compiled: list[str] = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        for name, child in pl_module.named_children():
            if name.startswith("backbone") and name not in self.compiled:
                child.compile(mode=self.mode)
                self.compiled.append(name)


class TrainingState(Callback):
    """What Lightning leaves out of a checkpoint but a bit-exact resume needs.

    - the random number generators (torch, numpy, python; CUDA), which drive the views;
    - buffers a module registered as non-persistent: lightly's MemoryBankModule keeps the MoCo
      queue that way, so without this a resumed run would start with a fresh random queue;
    - where in the epoch the data stream stood (set on the ResumableSampler at train start).
    """

    def __init__(self, sampler: ResumableSampler | None = None) -> None:
        self.sampler = sampler
        self._pending: dict | None = None

    def state_dict(self) -> dict:
        import random

        np_state = np.random.get_state()
        st = {"torch": torch.get_rng_state(),
              "numpy": [np_state[0], np_state[1].tolist(), *map(_plain_number, np_state[2:])],
              "python": _plain_tuple(random.getstate())}
        if torch.cuda.is_available():
            st["cuda"] = torch.cuda.get_rng_state_all()
        return st

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["eossl_buffers"] = {name: buf.detach().clone() for name, buf in
                                       _non_persistent_buffers(pl_module)}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        saved = checkpoint.get("eossl_buffers") or {}
        for name, buf in _non_persistent_buffers(pl_module):
            if name in saved and saved[name].shape == buf.shape:
                buf.copy_(saved[name].to(buf.device))

    def on_train_start(self, trainer, pl_module) -> None:
        import random

        if self.sampler is not None and trainer.global_step:
            steps_per_epoch = max(1, len(self.sampler) // self.sampler.batch_size)
            self.sampler.skip_batches = trainer.global_step % steps_per_epoch
        st, self._pending = self._pending, None
        if st is None:
            return
        # Restored last, after every setup step that draws random numbers, so the next training
        # step draws exactly what it would have drawn in an uninterrupted run.
        torch.set_rng_state(st["torch"])
        np.random.set_state((st["numpy"][0], np.asarray(st["numpy"][1], dtype=np.uint32),
                             *st["numpy"][2:]))
        random.setstate(_tuple_tree(st["python"]))
        if "cuda" in st and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["cuda"])


def _non_persistent_buffers(module: torch.nn.Module):
    for mod_name, mod in module.named_modules():
        for name in getattr(mod, "_non_persistent_buffers_set", ()):
            buf = mod._buffers.get(name)
            if buf is not None:
                yield (f"{mod_name}.{name}" if mod_name else name), buf


def _plain_number(v):
    return v.item() if hasattr(v, "item") else v


def _plain_tuple(t):
    return [_plain_tuple(v) for v in t] if isinstance(t, (tuple, list)) else t


def _tuple_tree(t):
    return tuple(_tuple_tree(v) for v in t) if isinstance(t, list) else t


class _skip_corrupt_shards:
    """``data.skip_corrupt_shards`` (``--skip-corrupt-shards``) for opening a shard corpus:
    ShardCorpus reads it from the environment (EOSSL_SKIP_CORRUPT_SHARDS), restored after."""

    def __init__(self, on: bool) -> None:
        from .data.shards import SKIP_ENV

        self.on, self.key, self.old = on, SKIP_ENV, None

    def __enter__(self):
        if self.on:
            self.old = os.environ.get(self.key)
            os.environ[self.key] = "1"
        return self

    def __exit__(self, *exc) -> None:
        if self.on:
            if self.old is None:
                os.environ.pop(self.key, None)
            else:
                os.environ[self.key] = self.old


def check_resume_checkpoint(out: Path, cfg: dict) -> None:
    """Refuse to resume from a last.ckpt that another method (or band list) wrote: Lightning
    would otherwise fail deep inside load_state_dict with a wall of missing keys."""
    from .checkpoint import checkpoint_metadata

    path = out / "checkpoints" / "last.ckpt"
    try:
        meta = checkpoint_metadata(path)
    except DataError as e:
        raise DataError(f"cannot resume: {e}") from None
    if meta.get("method") != cfg["method"]:
        raise ConfigError(f"{path}: written by method {meta.get('method')!r}, but the run in "
                          f"{out} is {cfg['method']!r} (config.yaml); resume with the method "
                          "that wrote it, or start a new run")


# Every logger Lightning's INFO banners can come through (see _quiet_lightning).
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning",
                     "lightning_fabric")


def _quiet_lightning() -> None:
    import logging

    # Lightning's INFO lines (accelerator banner, a cloud-logger advert) say nothing our own
    # summary does not; warnings still come through. Both packages' loggers: lightning's
    # rank_zero_info logs through whichever of lightning.pytorch / lightning.fabric imported
    # its rank-zero module last, and the standalone pytorch_lightning / lightning_fabric
    # packages (torchgeo's dependency chain installs them) take that module over when imported.
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # These warnings are about choices we make on purpose (no workers on a 2-core machine,
    # few batches in the kNN loaders); they would bury the progress bar for our users.
    for msg in (".*does not have many workers.*", ".*exists and is not empty.*",
                ".*LeafSpec.*", ".*number of training batches.*", ".*treespec.*",
                ".*but have no `val_dataloader`.*"):
        warnings.filterwarnings("ignore", message=msg)


def pretrain(cfg: dict, out: str | os.PathLike, *, resume: bool = False,
             cache: str | os.PathLike | None = None, progress: bool = True) -> PretrainResult:
    """Pretrain ``cfg['method']`` on ``cfg['data']['name']`` into run folder ``out``."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    out = Path(out)
    zero = launched_rank_zero()  # ranks > 0 of a DDP launch leave the run folder to rank 0
    if resume and (out / "config.yaml").exists():
        cfg = yaml.safe_load((out / "config.yaml").read_text())
    if (resume or (zero and out.exists() and any(out.iterdir()))):  # refuse early
        prepare_run_dir(out, resume)
    if resume:
        check_resume_checkpoint(out, cfg)
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

    seed = int(cfg.get("seed", 0))
    L.seed_everything(seed, workers=True, verbose=False)
    with _skip_corrupt_shards(bool(d.get("skip_corrupt_shards"))):
        source = open_source(d["name"], cache, d.get("labels"), bands=d.get("bands"))
    skipped = list(getattr(source, "skipped", None) or [])
    if skipped and zero:
        warnings.warn(f"{d['name']}: training without {len(skipped)} corrupt shard(s): "
                      f"{', '.join(skipped)} (data.skip_corrupt_shards)", stacklevel=2)
    train_ds = method_cls.train_dataset(source, d)
    stats = source.stats()
    model = method_cls(bands=source.bands, stats=stats.to_dict(), crop_size=int(d["crop_size"]),
                       max_steps=max_steps, max_time_s=max_time, **(cfg.get("model") or {}))

    loader_kw = dict(batch_size=int(d["batch_size"]), num_workers=int(d.get("num_workers", 0)))
    # One process: our sampler restarts mid-epoch on resume. Several (DDP) ranks: Lightning
    # shards the sampler itself, so keep the plain sequential order there.
    single = (str(t.get("devices", 1)) == "1" and int(t.get("num_nodes", 1)) == 1
              and str(t.get("strategy", "auto")) in ("auto", "single_device"))
    sampler = None
    if single and hasattr(train_ds, "__len__"):
        epoch_offset = isinstance(train_ds, RandomCropDataset) and train_ds.seed is None
        if epoch_offset:
            # Crops drawn from OS entropy could not be replayed on resume; seeded by global
            # index (see ResumableSampler) they still differ every epoch and every run seed.
            train_ds.seed = seed
        sampler = ResumableSampler(len(train_ds), loader_kw["batch_size"], epoch_offset)
    # Its own generator: creating a DataLoader iterator draws a seed, which must not come from
    # the global RNG the views use (a resumed run creates its iterator at another moment).
    train_dl = DataLoader(train_ds, shuffle=False, drop_last=True, sampler=sampler,
                          generator=torch.Generator().manual_seed(seed),
                          persistent_workers=loader_kw["num_workers"] > 0, **loader_kw)
    val_dls = None
    if source.polygons is not None:
        size = int(d.get("probe_patch_size", 16))
        val_dls = [DataLoader(source.patches("train", size), batch_size=256),
                   DataLoader(source.patches("test", size), batch_size=256)]

    # Everything that can fail on bad input has run by now, so a refused run leaves no folder.
    if not resume and zero:
        prepare_run_dir(out, resume)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    ckpt = ModelCheckpoint(dirpath=out / "checkpoints", filename="step{step:06d}",
                           auto_insert_metric_name=False, every_n_train_steps=int(
                               t.get("checkpoint_every_n_steps", 100)),
                           save_last=True, save_top_k=-1)
    val_every = int(t.get("val_every_n_steps", 100))
    speed = ([ChannelsLast()] if t.get("channels_last") else []) + (
        [CompileBackbone(None if t["compile"] is True else str(t["compile"]))]
        if t.get("compile") else [])
    trainer = L.Trainer(
        default_root_dir=out, max_time={"seconds": max_time} if max_time else None,
        max_steps=int(max_steps) if max_steps else -1, max_epochs=-1,
        accelerator=t.get("accelerator", "auto"), devices=t.get("devices", 1),
        num_nodes=int(t.get("num_nodes", 1)), strategy=t.get("strategy", "auto"),
        precision=t.get("precision", "32-true"), callbacks=[ckpt, TrainingState(sampler), *speed],
        plugins=[AtomicCheckpointIO()], deterministic=t.get("deterministic", False),
        sync_batchnorm=bool(t.get("sync_batchnorm", False)),  # global BN under DDP (GPUs)
        logger=CSVLogger(out, name="", version="logs"), log_every_n_steps=10,
        val_check_interval=val_every if val_dls else None,
        check_val_every_n_epoch=None if val_dls else 1,
        limit_val_batches=None if val_dls else 0, num_sanity_val_steps=0,
        enable_progress_bar=progress, enable_model_summary=False,
    )
    start = time.perf_counter()
    try:
        trainer.fit(model, train_dataloaders=train_dl, val_dataloaders=val_dls,
                    ckpt_path=str(out / "checkpoints" / "last.ckpt") if resume else None,
                    weights_only=True)  # resume loads tensors and plain data, never code
        secs = time.perf_counter() - start
        # The final state is saved whatever step the budget ended on.
        # weights_only=False keeps optimiser and loop state, so the run can be resumed from it.
        trainer.save_checkpoint(out / "checkpoints" / "last.ckpt", weights_only=False)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EIO):
            raise
        raise DataError(f"{out}: write failed ({e.strerror}); the last complete checkpoint is "
                        "kept: free space and continue with --resume") from None
    steps = int(trainer.global_step)
    start_step = model.resumed_from_step  # images/s counts this session's steps only
    world = int(trainer.world_size)  # batch_size is per rank: all ranks' images count
    summary = {
        "method": cfg["method"], "data": d["name"], "steps": steps,
        "resumed_from_step": start_step, "seconds": round(secs, 1),
        "images_per_s": round((steps - start_step) * int(d["batch_size"]) * world
                              / max(secs, 1e-9), 1),
        "world_size": world, "precision": str(t.get("precision", "32-true")),
        **({"skipped_shards": skipped} if skipped else {}),
        "bands": source.bands, "device": str(trainer.strategy.root_device),
        "collapse": model.collapse_status(),  # the monitor's verdict (warned on the console)
        "torch": torch.__version__, "finished": datetime.now().isoformat(timespec="seconds"),
    }
    if trainer.is_global_zero:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return PretrainResult(out, out / "checkpoints" / "last.ckpt", steps, secs,
                          summary["images_per_s"], source)
