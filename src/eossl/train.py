"""Pretraining runs: data source + method + Lightning Trainer, in a run folder of their own.

A run folder holds the checked ``config.yaml`` (exactly what ran), ``checkpoints/`` (periodic
and ``last.ckpt``, each carrying bands and normalisation statistics), ``logs/metrics.csv``
(loss, kNN probe, collapse monitor) and ``summary.json``.

Its lifecycle, so that no run loses work and no mistake leaves a folder in the way:

- the folder is made only after every check passed (configuration, folder, device options,
  data, the method's own arguments);
- a new run that fails or is interrupted before its first checkpoint removes what it made, so
  the same command can simply be run again; a folder a killed start left behind (config.yaml
  and logs, no checkpoint) is taken over by a plain rerun, or restarted by ``--resume``;
- an existing run is never overwritten: it is resumed (``resume=True``) with its own
  config.yaml, only a new budget may change, and nothing in it is deleted or truncated
  (metrics.csv is appended to);
- Ctrl-C finishes the step, saves ``last.ckpt`` and says how to continue; temporary files a
  SIGKILL left during a checkpoint write are removed when the run starts again.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, Sampler

from .config import flatten, parse_duration, validate_config
from .data.datasets import RandomCropDataset
from .data.resolve import open_data, request_from_config
from .data.shards import ShardSource, ShardStream
from .data.sources import SceneSource
from .errors import (ConfigError, DataError, OutputExistsError, RunInterrupted, WriteError)
from .io import (PART, atomic_path, atomic_write_text, check_writable_folder,
                 remove_stale_parts, write_failure)
from .methods import get_method
from .progress import BudgetBar


@dataclass
class PretrainResult:
    run_dir: Path
    checkpoint: Path
    steps: int
    seconds: float
    images_per_s: float
    source: SceneSource  # the opened data, so a caller can probe without reopening it
    method: str = ""  # the method that ran (a resumed run's own, whatever was asked)
    resumed_from_step: int | None = None  # None: a new run; else the step it continued from


def new_run_dir(root: str | os.PathLike, method: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{method}-{stamp}"
    out, i = base, 1
    while out.exists():
        out, i = Path(f"{base}-{i}"), i + 1
    return out


# ------------------------------------------------------------------------- run folder states
# What a run folder may hold before its first checkpoint: a start that died there (SIGKILL,
# power loss) left only these, and a plain rerun may replace them.
_UNSTARTED_ENTRIES = {"config.yaml", "logs", "checkpoints", "tensorboard", "mlruns", "wandb"}


def _checkpoints(out: Path) -> list[Path]:
    d = out / "checkpoints"
    return sorted(d.glob("*.ckpt")) if d.is_dir() else []


def resume_checkpoint(out: str | os.PathLike) -> Path | None:
    """The checkpoint a resumed run continues from: ``last.ckpt``, else (a write of last.ckpt
    that failed, e.g. on a full disk, after the periodic one succeeded) the latest periodic
    ``stepNNNNNN.ckpt``; None when the run has none."""
    last = Path(out) / "checkpoints" / "last.ckpt"
    if last.is_file():
        return last
    steps = [p for p in _checkpoints(Path(out)) if re.fullmatch(r"step\d+\.ckpt", p.name)]
    return max(steps, key=lambda p: int(p.stem[4:])) if steps else None


def run_state(out: str | os.PathLike) -> str:
    """``absent``, ``file``, ``empty``, ``started`` (has a checkpoint), ``unstarted`` (an eossl
    run that stopped before its first checkpoint: nothing in it is worth keeping) or
    ``foreign`` (anything else: never written into)."""
    out = Path(out)
    if not out.exists():
        return "absent"
    if not out.is_dir():
        return "file"
    entries = [e for e in out.iterdir() if not e.name.endswith(PART)]
    if not entries:
        return "empty"
    if (out / "config.yaml").is_file() and _checkpoints(out):
        return "started"
    if (out / "config.yaml").is_file() and {e.name for e in entries} <= _UNSTARTED_ENTRIES:
        return "unstarted"
    return "foreign"


def check_run_dir(out: str | os.PathLike, resume: bool) -> str:
    """Refuse (one line) a run folder this run may not use, before any work; returns its
    state. A new run takes an absent or empty folder, or one a dead start left behind before
    its first checkpoint; ``--resume`` takes a run folder (with or without a checkpoint)."""
    out = Path(out)
    state = run_state(out)
    if state == "file":
        raise OutputExistsError(f"{out} is a file, not a folder; choose another --out")
    if state in ("absent", "empty") or (state == "unstarted" and not resume):
        check_writable_folder(out)
    if resume:
        if state in ("absent", "empty"):
            raise OutputExistsError(f"{out}: nothing to resume (no run there); drop --resume "
                                    "to start a new run")
        if state == "foreign" and resume_checkpoint(out) is not None:
            raise OutputExistsError(f"{out}: cannot resume: its config.yaml is missing "
                                    "(checkpoints/last.ckpt alone does not say how the run "
                                    "was set up)")
        if state == "foreign":
            raise OutputExistsError(f"{out}: nothing to resume (no config.yaml and "
                                    "checkpoints/ of an eossl run)")
    elif state == "started":
        step = _checkpoint_step(resume_checkpoint(out))
        at = f" at step {step}" if step is not None else ""
        raise OutputExistsError(f"{out} already holds a run{at}; pass --resume to continue it, "
                                "or choose another --out")
    elif state == "foreign":
        raise OutputExistsError(f"{out} already exists and is not empty; choose another --out "
                                "(or pass --resume to continue an eossl run there)")
    return state


def _start_run_dir(out: Path, state: str) -> bool:
    """Create the folder of a new run; True if it did not exist before (then a failed start
    removes it whole, else only what it put inside)."""
    if state == "unstarted":
        _clear(out)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputExistsError(f"{out}: cannot write there ({e.strerror})") from None
    return created


def _clear(out: Path) -> None:
    for e in out.iterdir():
        if e.is_dir() and not e.is_symlink():
            shutil.rmtree(e)
        else:
            e.unlink()


def _checkpoint_step(path: Path) -> int | None:
    """The global step a checkpoint holds (None when it cannot be read)."""
    if not path.is_file():
        return None
    from .checkpoint import read_checkpoint

    try:
        return int(read_checkpoint(path, mmap=True).get("global_step") or 0)
    except Exception:  # unreadable: the caller only decorates a message with it
        return None


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
    - where in the epoch the data stream stood (set on the ResumableSampler at train start,
      or on a ShardStream when the checkpoint is loaded, before its DataLoader workers start).
    """

    def __init__(self, sampler: ResumableSampler | None = None, stream=None,
                 batch_size: int = 1) -> None:
        self.sampler, self.stream, self.batch_size = sampler, stream, batch_size
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
        if self.stream is not None:  # one batch per rank per step
            self.stream.resume(int(checkpoint.get("global_step", 0)), self.batch_size)
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


def check_resume_checkpoint(out: Path, cfg: dict, path: Path | None = None) -> dict:
    """The ``eossl`` metadata of the checkpoint a resumed run continues from (plus its
    ``global_step``); refuses a checkpoint that another method wrote, or that cannot be read,
    in one line: Lightning would otherwise fail deep inside load_state_dict with a wall of
    missing keys."""
    from .checkpoint import read_checkpoint

    path = path or resume_checkpoint(out) or out / "checkpoints" / "last.ckpt"
    try:
        ckpt = read_checkpoint(path, mmap=True)
    except DataError as e:
        raise DataError(f"cannot resume: {e}") from None
    meta = ckpt["eossl"]
    if meta.get("method") != cfg["method"]:
        raise ConfigError(f"{path}: written by method {meta.get('method')!r}, but the run in "
                          f"{out} is {cfg['method']!r} (config.yaml); resume with the method "
                          "that wrote it, or start a new run")
    _check_same_stem(path, meta, cfg)
    return {**meta, "global_step": int(ckpt.get("global_step") or 0)}


def _check_same_stem(path: Path, meta: dict, cfg: dict) -> None:
    """A run whose config.yaml leaves model.stem_stride to the default (methods.base.
    DEFAULT_STEM_STRIDE) must not resume with another stem after that default changed: the
    weights would load (the stem changes strides, not shapes) and train another network."""
    from .config import model_schema

    field = model_schema(cfg["method"]).model_fields.get("stem_stride")
    if field is None or "stem_stride" not in meta:
        return
    now = cfg["model"].get("stem_stride", field.default)
    if int(meta["stem_stride"]) != int(now):
        raise ConfigError(f"{path} was trained with stem stride {meta['stem_stride']}, but the "
                          f"run's configuration now gives {now} (the default changed); add "
                          f"'stem_stride: {meta['stem_stride']}' under model: in its "
                          "config.yaml to resume it")


# What --resume may change: the budget. Everything else would make the checkpoint and the run
# disagree (another method, bands or model), or silently mix two settings in one run.
RESUMABLE = ("trainer.max_time", "trainer.max_steps")


def read_run_config(out: Path) -> dict:
    """A run folder's config.yaml, checked against the schema."""
    path = Path(out) / "config.yaml"
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OutputExistsError(f"{out}: nothing to resume (no config.yaml)") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DataError(f"{path}: cannot read the run's configuration ({e}); it is not the "
                        "config.yaml eossl wrote") from None
    if not isinstance(saved, dict):
        raise DataError(f"{path}: not a run configuration (expected a mapping)")
    return validate_config(saved, {k: str(path) for k in flatten(saved)})


def resume_config(out: Path, requested: dict | None = None,
                  origins: dict[str, str] | None = None) -> dict:
    """The configuration a resumed run continues with: the run's own config.yaml, with the
    budget of ``requested`` (when it gives one). Any other difference between ``requested``
    and the run's configuration is refused in one line naming the key."""
    saved = read_run_config(out)
    if requested is None:
        return saved
    old, new = flatten(saved), flatten(requested)
    for key in sorted(set(old) | set(new), key=lambda k: (k not in ("method", "data.bands"), k)):
        if key in RESUMABLE or old.get(key) == new.get(key):
            continue
        where = f" (from {origins[key]})" if origins and key in origins else ""
        raise ConfigError(f"{out} is a run with {key}{_shown(old.get(key))}, asked for "
                          f"{key}{_shown(new.get(key))}{where}; --resume continues a run as it was "
                          "configured (only --max-time and --max-steps can change): start a "
                          "new run with another --out to change it")
    cfg = copy.deepcopy(saved)
    cfg["trainer"]["max_time"] = requested["trainer"]["max_time"]
    cfg["trainer"]["max_steps"] = requested["trainer"]["max_steps"]
    return cfg


def _shown(value) -> str:
    """`` unset`` or ``=VALUE``, as a key's value reads in a message."""
    if value is None:
        return " unset"
    return "=" + (",".join(map(str, value)) if isinstance(value, list) else repr(value))


class AppendingExperimentWriter(ExperimentWriter):
    """Lightning's CSV metrics writer, except that it keeps an existing metrics.csv.

    Lightning's writer deletes metrics.csv when it starts in a folder that has one; a resumed
    run must keep the rows of its earlier sessions, so this one appends to it (its header is
    read back; a new column rewrites the file with every row, atomically)."""

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if path.is_file():
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = [k for k in header if k]

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.metrics_file_path, buf.getvalue())


class RunLogger(CSVLogger):
    """``logs/metrics.csv`` of a run folder, appended to across resumed sessions."""

    def __init__(self, out: Path) -> None:
        super().__init__(out, name="", version="logs")

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


class BudgetProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, but one bar for the whole run that fills toward the run's budget
    (``--max-steps`` and/or ``--max-time``, whichever ends first; progress.BudgetBar) instead
    of one bar per epoch: an epoch is an arbitrary number of crops, the budget is what the
    user set. Time counts as Lightning's Timer counts it (so a resumed run's bar starts where
    the run stands); the kNN probe keeps Lightning's own validation bar below it."""

    def __init__(self, max_steps: int | None, max_seconds: float | None) -> None:
        super().__init__()
        self.max_steps, self.max_seconds = max_steps, max_seconds
        self._bar = None

    def init_train_tqdm(self):
        self._bar = BudgetBar("pretrain", max_steps=self.max_steps,
                              max_seconds=self.max_seconds, enabled=not self.is_disabled,
                              file=sys.stdout, position=2 * self.process_position)
        return self._bar.tqdm

    def on_train_epoch_start(self, trainer, *_) -> None:
        pass  # one bar for the whole run: nothing to reset per epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._bar is None or self.is_disabled:
            return
        self._bar.update(int(trainer.global_step), _train_seconds(trainer),
                         self._metrics(trainer, pl_module))

    def _metrics(self, trainer, pl_module) -> str:
        metrics = self.get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in metrics.items())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pass  # the bar lives until the end of training

    def on_train_end(self, trainer, pl_module) -> None:
        if self._bar is not None and not self.is_disabled:
            self._bar.update(int(trainer.global_step), _train_seconds(trainer),
                             self._metrics(trainer, pl_module))
        super().on_train_end(trainer, pl_module)


def _train_seconds(trainer) -> float | None:
    """Training time as Lightning's Timer (the max_time budget) counts it; None without one."""
    from lightning.pytorch.callbacks import Timer

    for cb in trainer.callbacks:
        if isinstance(cb, Timer):
            return float(cb.time_elapsed("train"))
    return None


# ---------------------------------------------------------------------------------- loggers
LOGGER_IDS = "loggers.json"  # in logs/: the MLflow / W&B run a resumed run logs to again
# Where each tracker comes from, for the message when it is not installed.
_LOGGER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",),
                    "wandb": ("wandb",)}


def make_loggers(names, out: Path) -> list:
    """Lightning loggers for ``trainer.loggers`` (config.LOGGERS), all writing under the run
    folder ``out`` unless the user's environment points a tracker elsewhere:

    - ``csv``: ``logs/metrics.csv`` (RunLogger; appended to across resumed sessions; eossl's
      reports read it);
    - ``tensorboard``: event files in ``tensorboard/`` (``tensorboard --logdir RUN``);
    - ``mlflow``: a local file store ``mlruns/`` (or ``$MLFLOW_TRACKING_URI``), experiment
      ``eossl``, run named after the run folder;
    - ``wandb``: offline files in ``wandb/`` (``wandb sync`` uploads them later); it goes
      online only when ``$WANDB_MODE`` says ``online``.

    A resumed run logs to the same MLflow / W&B run as before (their ids are kept in
    ``logs/loggers.json``). ConfigError naming the package when a tracker is not installed.
    """
    import importlib.util

    for name in names:
        pkgs = _LOGGER_PACKAGES.get(name, ())
        if pkgs and not any(importlib.util.find_spec(p) for p in pkgs):
            raise ConfigError(f"--logger {name}: the {pkgs[0]} package is not installed; "
                              f"pip install 'eossl[loggers]' (or pip install {pkgs[0]})")
    ids = _read_logger_ids(out)
    loggers = []
    for name in names:
        if name == "csv":
            loggers.append(RunLogger(out))
        elif name == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(out, name="", version="tensorboard",
                                             default_hp_metric=False))
        elif name == "mlflow":
            uri = os.environ.get("MLFLOW_TRACKING_URI")
            if not uri:
                # MLflow 3 keeps its file store in "maintenance mode" behind this switch; a
                # local file store needs no server, database or extra package.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
                uri = (out / "mlruns").absolute().as_uri()
            loggers.append(_mlflow_logger()(experiment_name="eossl", run_name=out.name,
                                            tracking_uri=uri, run_id=ids.get("mlflow")))
        elif name == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            online = os.environ.get("WANDB_MODE", "offline") == "online"
            loggers.append(WandbLogger(name=out.name, save_dir=str(out), project="eossl",
                                       id=ids.get("wandb"), offline=not online,
                                       resume="allow" if ids.get("wandb") else None))
        else:
            raise ConfigError(f"unknown logger {name!r}")
    return loggers


def _mlflow_logger():
    """Lightning's MLFlowLogger, except that a resumed run may log its hyper-parameters again.

    MLflow refuses to change a logged parameter, and a resumed run's new budget changes
    ``max_steps`` / ``max_time_s``; the first session's parameters stay, and a value that
    changed is kept as the tag ``resumed.KEY``."""
    from lightning.pytorch.loggers import MLFlowLogger
    from lightning.pytorch.utilities import rank_zero_only

    class ResumableMLFlowLogger(MLFlowLogger):
        @rank_zero_only
        def log_hyperparams(self, params) -> None:
            from lightning.fabric.utilities.logger import _convert_params, _flatten_dict

            old = self.experiment.get_run(self.run_id).data.params
            if not old:
                return super().log_hyperparams(params)
            flat = {k: str(v)[:250] for k, v in _flatten_dict(_convert_params(params)).items()}
            new = {k: v for k, v in flat.items() if k not in old}
            if new:
                super().log_hyperparams(new)
            for k, v in flat.items():
                if k in old and old[k] != v:
                    self.experiment.set_tag(self.run_id, f"resumed.{k}", v)

    return ResumableMLFlowLogger


def _read_logger_ids(out: Path) -> dict:
    try:
        return dict(json.loads((Path(out) / "logs" / LOGGER_IDS).read_text()))
    except (OSError, ValueError, TypeError):
        return {}


class LoggerIds(Callback):
    """Keeps the MLflow and W&B run ids in ``logs/loggers.json`` once training starts, so a
    resumed run continues the same tracked run instead of opening a new one."""

    def on_train_start(self, trainer, pl_module) -> None:
        from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

        if not trainer.is_global_zero:
            return
        ids = {}
        for lg in trainer.loggers:
            if isinstance(lg, MLFlowLogger):
                ids["mlflow"] = lg.run_id
            elif isinstance(lg, WandbLogger):
                ids["wandb"] = lg.version
        if ids:
            out = Path(trainer.default_root_dir)
            if ids != _read_logger_ids(out):
                (out / "logs").mkdir(parents=True, exist_ok=True)
                atomic_write_text(out / "logs" / LOGGER_IDS, json.dumps(ids, indent=1))


class StopOnInterrupt(Callback):
    """Ctrl-C during training: the first one finishes the current step, then training stops
    and the run saves its last.ckpt as at the end of its budget, so ``--resume`` continues
    exactly there; a second one stops at once (Lightning's own handling; the run then
    continues from its last periodic checkpoint). Lightning alone exits with status 1 and
    no word on what was kept; pretrain turns either case into RunInterrupted."""

    def __init__(self) -> None:
        self.requested = False  # first Ctrl-C seen
        self.hard = False  # Lightning caught a KeyboardInterrupt
        self._old = None

    def install(self, graceful: bool = True) -> None:
        """Catch the first Ctrl-C (``graceful``: one process only, since ranks would not stop
        at the same step); the handler in place before is restored by ``uninstall`` either way
        (Lightning leaves SIGINT ignored after it caught one)."""
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)
            if graceful:
                signal.signal(signal.SIGINT, self._on_sigint)

    def uninstall(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None

    def _on_sigint(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step (Ctrl-C again to stop at once)", file=sys.stderr)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.requested:
            trainer.should_stop = True

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.hard = True


def split_batchnorm_note(model: torch.nn.Module) -> str | None:
    """What ``trainer.sync_batchnorm`` would do to a method with split BatchNorm, or None.

    Lightning converts every BatchNorm subclass to SyncBatchNorm, so MoCo's, MoCo-TP's and
    SeCo's SplitBatchNorm2d layers (their guard against a query and its key sharing batch
    statistics) would silently become BatchNorm over the whole global batch."""
    from .methods.moco import SplitBatchNorm2d

    n = sum(isinstance(m, SplitBatchNorm2d) for m in model.modules())
    if not n:
        return None
    return (f"trainer.sync_batchnorm replaces this method's {n} split BatchNorm layers "
            f"(model.bn_splits: {getattr(model.hparams, 'bn_splits', '?')} groups) by "
            "BatchNorm over the global batch of all ranks, which changes the method; leave "
            "sync_batchnorm off for MoCo, MoCo-TP and SeCo")


def check_trainer_options(t: dict) -> None:
    """Lightning's own check of the device options (an accelerator this machine lacks, a
    strategy that does not fit the devices, ...), as one ConfigError, before any data is read
    or any folder is made: a throwaway Trainer that writes nothing."""
    import lightning as L

    _trainer_or_config_error(t, lambda: L.Trainer(
        accelerator=t["accelerator"], devices=t["devices"], num_nodes=t["num_nodes"],
        strategy=t["strategy"], precision=t["precision"], sync_batchnorm=t["sync_batchnorm"],
        deterministic=t["deterministic"], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False))


def _trainer_or_config_error(t: dict, build):
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return build()
    except (MisconfigurationException, ValueError, ImportError, RuntimeError) as e:
        # ImportError: an accelerator whose package is missing (tpu without torch_xla)
        opts = ", ".join(f"{k}={t[k]!r}" for k in ("accelerator", "devices", "num_nodes",
                                                    "strategy", "precision"))
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"trainer options ({opts}) do not work here: {first}") from None


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
                ".*but have no `val_dataloader`.*",
                # a resumed run restarts mid-epoch through ResumableSampler, which Lightning
                # cannot see
                ".*dataloader is not resumable.*"):
        warnings.filterwarnings("ignore", message=msg)


def pretrain_data_of(source, name: str) -> dict:
    """The checkpoint's ``pretrain_data``: the data's id, its split and whether pretraining
    left the split's test areas out (sources without labels have no split)."""
    if hasattr(source, "pretrain_data"):
        return source.pretrain_data()
    from .data.resolve import data_id

    return {"data": data_id(str(name)), "labels": None, "sensor": getattr(source, "sensor", None),
            "split": None, "excluded_test_areas": False}


def pretrain(cfg: dict, out: str | os.PathLike, *, resume: bool = False,
             cache: str | os.PathLike | None = None, progress: bool = True,
             origins: dict[str, str] | None = None) -> PretrainResult:
    """Pretrain ``cfg['method']`` on ``cfg['data']['name']`` into run folder ``out``.

    Everything that can be refused is checked before the folder is made or written to: the
    configuration (config.py's schema), the folder, the device options, the data and the
    method's own arguments. A new run that fails or is interrupted before its first
    checkpoint removes what it made; ``resume=True`` continues the run in ``out`` with its own
    config.yaml (only a new budget is taken from ``cfg``) and never deletes anything.
    ``origins`` (dotted key -> where the value came from) makes messages name the option.
    """
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    out = Path(out)
    zero = launched_rank_zero()  # ranks > 0 of a DDP launch leave the run folder to rank 0
    cfg = validate_config(cfg, origins)
    state = check_run_dir(out, resume) if zero else None
    if resume:
        cfg = resume_config(out, cfg, origins)
    if zero:  # temporary files of a write that a SIGKILL cut short
        for folder in (out, out / "checkpoints", out / "logs"):
            remove_stale_parts(folder)
    last = out / "checkpoints" / "last.ckpt"
    # a resumed run that died before its first checkpoint starts again from step 0
    start_from = resume_checkpoint(out) if resume else None
    restart = start_from is not None
    meta = check_resume_checkpoint(out, cfg, start_from) if restart else None
    _quiet_lightning()
    method_cls = get_method(cfg["method"])
    d, t = cfg["data"], cfg["trainer"]
    max_time = parse_duration(t["max_time"])
    max_steps = t["max_steps"]
    if max_time is None and max_steps is None:
        raise ConfigError("give a budget: --max-time (e.g. 10m) and/or --max-steps")
    check_trainer_options(t)
    loggers = make_loggers(t["loggers"], out)  # a tracker that is not installed: refused here

    seed = int(cfg["seed"])
    L.seed_everything(seed, workers=True, verbose=False)
    with _skip_corrupt_shards(bool(d.get("skip_corrupt_shards"))):
        source = open_data(request_from_config(d), cache)
    if isinstance(source, ShardSource):  # an object-store corpus' local chunk cache
        source.corpus.use_cache(d.get("chunk_cache_dir"), d.get("chunk_cache_size"))
    skipped = list(getattr(source, "skipped", None) or [])
    if skipped and zero:
        warnings.warn(f"{d['name']}: training without {len(skipped)} corrupt shard(s): "
                      f"{', '.join(skipped)} (data.skip_corrupt_shards)", stacklevel=2)
    if meta is not None and meta.get("bands") and list(meta["bands"]) != list(source.bands):
        raise ConfigError(f"{start_from}: trained on bands {', '.join(meta['bands'])}, but "
                          f"{d['name']} now gives {', '.join(source.bands)}; resume with the "
                          "run's own bands and data, or start a new run")
    train_ds = method_cls.train_dataset(source, d)
    stats = source.stats()
    model = method_cls(bands=source.bands, stats=stats.to_dict(), crop_size=int(d["crop_size"]),
                       max_steps=max_steps, max_time_s=max_time, **(cfg.get("model") or {}))
    # which data pretraining saw, and whether it left the test areas out (checkpoint metadata)
    model.pretrain_data = pretrain_data_of(source, d["name"])
    if t.get("sync_batchnorm") and zero:
        note = split_batchnorm_note(model)
        if note:
            warnings.warn(note, stacklevel=2)

    loader_kw = dict(batch_size=int(d["batch_size"]), num_workers=int(d.get("num_workers", 0)))
    # One process: our sampler restarts mid-epoch on resume. Several (DDP) ranks: Lightning
    # shards the sampler itself, so keep the plain sequential order there.
    single = (str(t.get("devices", 1)) == "1" and int(t.get("num_nodes", 1)) == 1
              and str(t.get("strategy", "auto")) in ("auto", "single_device"))
    sampler = None
    stream = train_ds if isinstance(train_ds, ShardStream) else None
    if stream is not None:
        # Shard corpora stream whole chunks (data/shards.py): the stream splits itself across
        # ranks and workers, draws from the run's seed and resumes by position.
        stream.configure(seed=seed if stream.seed is None else None,
                         window=d.get("shuffle_window"))
    elif single and hasattr(train_ds, "__len__"):
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
    if getattr(source, "labels", None) is not None and hasattr(source, "patches") and \
            getattr(source, "task", "classification") == "classification":
        size = int(d.get("probe_patch_size", 16))
        val_dls = [DataLoader(source.patches("train", size), batch_size=256),
                   DataLoader(source.patches("test", size), batch_size=256)]

    ckpt = ModelCheckpoint(dirpath=out / "checkpoints", filename="step{step:06d}",
                           auto_insert_metric_name=False,
                           every_n_train_steps=int(t["checkpoint_every_n_steps"]),
                           save_last=True, save_top_k=-1)
    val_every = int(t["val_every_n_steps"])
    speed = ([ChannelsLast()] if t.get("channels_last") else []) + (
        [CompileBackbone(None if t["compile"] is True else str(t["compile"]))]
        if t.get("compile") else [])
    stop = StopOnInterrupt()
    trainer = _trainer_or_config_error(t, lambda: L.Trainer(
        default_root_dir=out, max_time={"seconds": max_time} if max_time else None,
        max_steps=int(max_steps) if max_steps else -1, max_epochs=-1,
        accelerator=t["accelerator"], devices=t["devices"], num_nodes=int(t["num_nodes"]),
        strategy=t["strategy"], precision=t["precision"],
        callbacks=[ckpt, TrainingState(sampler, stream, loader_kw["batch_size"]), stop,
                   *speed, LoggerIds(),
                   *([BudgetProgressBar(max_steps, max_time)] if progress else [])],
        plugins=[AtomicCheckpointIO()], deterministic=t["deterministic"],
        sync_batchnorm=bool(t["sync_batchnorm"]),  # global BN under DDP (GPUs)
        logger=loggers, log_every_n_steps=10,
        val_check_interval=val_every if val_dls else None,
        check_val_every_n_epoch=None if val_dls else 1,
        limit_val_batches=None if val_dls else 0, num_sanity_val_steps=0,
        enable_progress_bar=progress, enable_model_summary=False,
    ))
    stop.install(graceful=single)
    created = False
    try:
        # Everything that can fail on bad input has run by now: only now is the folder made.
        if zero:
            if not resume:
                created = _start_run_dir(out, state)
            if not resume or read_run_config(out) != cfg:  # a resumed run's new budget
                atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
        start = time.perf_counter()
        try:
            trainer.fit(model, train_dataloaders=train_dl, val_dataloaders=val_dls,
                        ckpt_path=str(start_from) if restart else None,
                        weights_only=True)  # resume loads tensors and plain data, never code
        except SystemExit:
            if not stop.hard:
                raise
            raise KeyboardInterrupt from None  # Lightning exits(1) after a Ctrl-C
        secs = time.perf_counter() - start
        idle = restart and trainer.global_step == model.resumed_from_step
        if not idle:  # a resumed run whose budget was used up keeps its files as they are
            # The final state is saved whatever step the budget ended on. weights_only=False
            # keeps optimiser and loop state, so the run can be resumed from it.
            trainer.save_checkpoint(last, weights_only=False)
    except BaseException as e:
        raise _failed_run(e, out, resume, created, zero) from None
    finally:
        stop.uninstall()
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
        "bands": source.bands, "pretrain_data": model.pretrain_data,
        "device": str(trainer.strategy.root_device),
        "collapse": model.collapse_status(),  # the monitor's verdict (warned on the console)
        "torch": torch.__version__, "finished": datetime.now().isoformat(timespec="seconds"),
    }
    if stop.requested:
        summary["interrupted"] = True
    if model.collapse_warning():  # said on the console at the end of fit, kept here too
        summary["warnings"] = [model.collapse_warning()]
    if trainer.is_global_zero and not idle:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    if stop.requested:
        raise RunInterrupted(f"interrupted at step {steps}; the run in {out} is saved: continue "
                             f"with --resume --out {out}")
    return PretrainResult(out, last, steps, secs, summary["images_per_s"], source,
                          method=cfg["method"], resumed_from_step=start_step if resume else None)


def _failed_run(e: BaseException, out: Path, resume: bool, created: bool,
                zero: bool) -> BaseException:
    """What a failed or interrupted fit leaves and says. A new run with no checkpoint yet
    removes what it made (a plain rerun then starts clean); a run with a checkpoint keeps
    everything, and the message says how to continue."""
    last = resume_checkpoint(out)
    kept = last is not None
    removed = False
    if zero and not resume and not kept:
        _remove_new_run(out, created)
        removed = True
    step = _checkpoint_step(last) if kept else None
    why = write_failure(e) if isinstance(e, Exception) else None
    fix = "free space and " if why and ("space" in why or "quota" in why) else ""
    if kept:
        then = (f"the last complete checkpoint (step {step}) is kept: {fix}continue with "
                f"--resume --out {out}")
    elif removed:
        then = (f"no checkpoint had been written, so the run folder was removed: {fix}rerun "
                "the command")
    else:
        then = f"no checkpoint had been written yet: {fix}--resume --out {out} starts it again"
    if isinstance(e, KeyboardInterrupt):
        return RunInterrupted(f"interrupted; {then}")
    if type(e).__name__ == "SIGTERMException":  # Lightning's SystemExit after a SIGTERM
        return RunInterrupted(f"terminated (SIGTERM); {then}", exit_code=143)
    if why is not None:
        return WriteError(getattr(e, "path", None) or out, why, note=then)
    if resume and isinstance(e, RuntimeError) and "state_dict" in str(e):
        first = str(e).strip().splitlines()[0]
        return DataError(f"{last or out}: does not fit the run's model ({first}); resume with "
                         "the run's own settings, or start a new run")
    return e


def _remove_new_run(out: Path, created: bool) -> None:
    """Undo a new run's folder: the whole folder if this run made it, else what it put in."""
    try:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        elif out.is_dir():
            _clear(out)
    except OSError:
        pass  # best effort: the failure itself is what the user needs to hear about
