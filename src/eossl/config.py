"""Run configuration: YAML recipes merged with command-line overrides.

A recipe has four sections (see configs/): ``method`` (name), ``model`` (keyword arguments of
the method class: backbone, optimiser, method hyper-parameters), ``data`` (source, crop size,
crops per epoch, batch size, workers) and ``trainer`` (budget and Lightning's device options).
Values given on the command line win over the file, which wins over the defaults here.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

from .errors import ConfigError

DEFAULTS: dict = {
    "method": "moco",
    "seed": 0,
    "model": {},
    "data": {
        "name": "brandenburg",
        "crop_size": 32,
        "crops_per_epoch": 8192,
        "batch_size": 64,
        "num_workers": 0,
        "probe_patch_size": 16,
        "skip_corrupt_shards": False,  # shard corpora: leave damaged shards out, don't stop
    },
    "trainer": {
        "max_time": "10m",
        "max_steps": None,
        "accelerator": "auto",
        "devices": 1,
        "num_nodes": 1,
        "strategy": "auto",
        "precision": "32-true",
        "channels_last": False,  # NHWC weights and batches (train.ChannelsLast)
        "compile": False,  # torch.compile the backbone(s): true or a torch.compile mode
        "sync_batchnorm": False,  # DDP: BatchNorm statistics over all ranks (SimCLR's global BN)
        "val_every_n_steps": 100,
        "checkpoint_every_n_steps": 100,
        "deterministic": False,  # Lightning's flag: deterministic kernels (GPU), same results
    },
}

SECTIONS = ("model", "data", "trainer")

# The recipes ship inside the package (the repository's configs/ is a link to this folder), so
# `--config moco-cpu` works after a plain `pip install eossl` too.
RECIPES_DIR = Path(__file__).resolve().parent / "configs"


def packaged_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def resolve_recipe(path: str | Path) -> Path:
    """A recipe file: the path itself, else a packaged recipe by name (``moco-cpu`` or
    ``moco-cpu.yaml``); ConfigError naming the packaged ones when neither exists."""
    p = Path(path)
    if p.is_file():
        return p
    for cand in (RECIPES_DIR / p.name, RECIPES_DIR / f"{p.name}.yaml"):
        if len(p.parts) == 1 and cand.is_file():
            return cand
    raise ConfigError(f"config file {p} not found; packaged recipes (usable by name): "
                      f"{', '.join(packaged_recipes())}")


def parse_set(items: list[str] | None) -> dict:
    """``--set model.ms_only=true --set data.crop_size=64`` -> {"model.ms_only": True, ...}.

    Values are read as YAML scalars/lists (true, 64, 0.1, [B02, B03]), like the recipe files.
    """
    out: dict = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        section = key.rpartition(".")[0]
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. model.lr=0.01")
        if section not in ("", *SECTIONS) or (not section and key not in ("method", "seed")):
            raise ConfigError(f"--set {item!r}: the key must be method, seed or "
                              "model.NAME / data.NAME / trainer.NAME")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: cannot read the value as YAML") from None
    return out


def parse_duration(text: str | int | float | None) -> float | None:
    """'90s', '10m', '1.5h', '01:30:00' or a number of seconds -> seconds (None stays None)."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        secs = float(text)
    else:
        t = str(text).strip().lower()
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?", t)
        if m:
            mult = {"s": 1, "sec": 1, None: 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
            secs = float(m.group(1)) * mult[m.group(2)]
        elif re.fullmatch(r"\d+:\d{1,2}:\d{1,2}", t):
            h, mi, s = (int(x) for x in t.split(":"))
            secs = h * 3600 + mi * 60 + s
        else:
            raise ConfigError(f"cannot read duration {text!r}; expected e.g. 90s, 10m, 1.5h "
                              "or HH:MM:SS")
    if secs <= 0:
        raise ConfigError(f"duration {text!r} must be positive")
    return secs


def _merge(base: dict, over: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, f"{where}.{k}")
        else:
            out[k] = v
    return out


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """DEFAULTS <- YAML file <- overrides (None values in overrides are ignored)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        p = resolve_recipe(path)
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{p}: malformed YAML{where}: {getattr(e, 'problem', e)}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping with keys method, model, data, trainer")
        unknown = set(loaded) - {"method", "seed", *SECTIONS}
        if unknown:
            raise ConfigError(f"{p}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
                              "expected method, seed, model, data, trainer")
        for s in SECTIONS:
            if loaded.get(s) is not None and not isinstance(loaded[s], dict):
                raise ConfigError(f"{p}: section {s!r} must be a mapping")
        cfg = _merge(cfg, {k: v for k, v in loaded.items() if v is not None}, str(p))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, name = key.rpartition(".")
        if section:
            cfg.setdefault(section, {})[name] = value
        else:
            cfg[name] = value
    return cfg
