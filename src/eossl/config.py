"""Run configuration: ONE validated schema for every pretraining run.

A run configuration has five entries (see configs/ for examples): ``method`` (a registered
method name), ``seed``, ``model`` (keyword arguments of the method class: backbone, optimiser,
method hyper-parameters), ``data`` (source, crop size, crops per epoch, batch size, workers)
and ``trainer`` (budget and Lightning's device options).

The ``data`` and ``trainer`` sections are pydantic models below (types, ranges, allowed
values, a one-line description per key). The ``model`` section has no list of its own: its
schema is built from the chosen method class's constructor signature (names, types and
defaults of its keyword arguments, through the class hierarchy), so a new hyper-parameter is
one new keyword argument of the method and nothing else. Unknown keys anywhere are refused with
the nearest valid name; wrong types and values are one-line ConfigErrors naming the key, the
value, where it came from and what was expected.

Layers, lowest first (a later layer wins; only values somebody actually gave count):

1. the defaults of this schema (and of the method's constructor for ``model``),
2. the recipe file (``--config``),
3. ``--set KEY=VALUE`` items,
4. the named command-line options (``--crop-size``, ``--lr``, ...).

A key given both by ``--set`` and by its named option is refused (give it once). A layer that
gives a budget (``trainer.max_time`` and/or ``trainer.max_steps``) replaces the whole budget of
the layers below it: ``--max-steps 100`` on a recipe with ``max_time: 10m`` trains 100 steps.
"""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError,
                      create_model, field_validator)

from .errors import ConfigError

SECTIONS = ("model", "data", "trainer")
TOP_LEVEL = ("method", "seed", *SECTIONS)
BUDGET = ("trainer.max_time", "trainer.max_steps")

# The recipes ship inside the package (the repository's configs/ is a link to this folder), so
# `--config moco-cpu` works after a plain `pip install eossl` too.
RECIPES_DIR = Path(__file__).resolve().parent / "configs"


def parse_duration(text: str | int | float | None) -> float | None:
    """'90s', '10m', '1.5h', '01:30:00' or a number of seconds -> seconds (None stays None)."""
    if text is None or text == "":
        return None
    if isinstance(text, bool):
        raise ConfigError(f"cannot read duration {text!r}; expected e.g. 90s, 10m, 1.5h or "
                          "HH:MM:SS")
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
    if not secs > 0 or secs == float("inf"):
        raise ConfigError(f"duration {text!r} must be positive")
    return secs


# ------------------------------------------------------------------------------------ schema
class _Section(BaseModel):
    """A section: unknown keys refused, values checked again when assigned."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """``data:``: where the crops come from and how they are batched."""

    name: str = Field("brandenburg", description="imagery: a sample name, a raster file, a "
                      "folder or glob of rasters, chips, torchgeo:NAME, a shard corpus, ... "
                      "(docs/data.md)")
    labels: str | None = Field(None, description="labels: a vector file (polygons or points) or "
                               "a label raster; the split's test areas are left out of "
                               "pretraining")
    bands: list[str] | None = Field(None, description="band names to use, in order (default: "
                                    "all of the source's bands)")
    root: str | None = Field(None, description="the dataset folder of name: torchgeo:NAME")
    sensor: str | None = Field(None, description="band-name preset of the imagery "
                               "(sentinel2-l1c, landsat8, ...; several joined by commas)")
    band_names: list[str] | None = Field(None, description="names of a raster's bands in file "
                                         "order, for files without band descriptions")
    nodata: float | None = Field(None, description="nodata value of the imagery (default: the "
                                 "file's)")
    label_column: str | None = Field(None, description="class column of a vector label file")
    classes: str | list[str] | None = Field(None, description="classes to use, in order "
                                            "(corn,soy), or CODE=NAME pairs for a label raster")
    min_share: float | None = Field(None, gt=0, le=1, description="share of a patch its "
                                    "majority class must cover (default 0.8)")
    split: str | dict | None = Field(None, description="kfold (default), west-east, column:NAME "
                                     "or a polygon file of test areas")
    pretrain_on_test_areas: bool = Field(False, description="pretrain on the split's test "
                                         "areas too")
    crop_size: int = Field(32, ge=1, description="crop size in px")
    crops_per_epoch: int = Field(8192, ge=1, description="crops drawn per epoch")
    batch_size: int = Field(64, ge=1, description="crops per batch (per device)")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    probe_patch_size: int = Field(16, ge=1, description="patch size of the online kNN probe")
    skip_corrupt_shards: bool = Field(False, description="shard corpora: leave damaged shards "
                                      "out (named in a warning) instead of stopping")
    shuffle_window: int | None = Field(None, ge=1, description="shard corpora: samples shuffled "
                                       "together, a few chunks' worth (default 1024)")
    chunk_cache_dir: str | None = Field(None, description="object-store corpora: local chunk "
                                        "cache folder (default: <eossl cache>/shards/<hash>)")
    chunk_cache_size: int | str | None = Field(None, description="object-store corpora: chunk "
                                               "cache size limit: 500MB, 50GB or bytes "
                                               "(default 50GB)")
    max_shift: int | None = Field(None, ge=0, description="dense: largest offset in px "
                                  "between the two views (default crop_size // 2)")
    region: str | list[int] | None = Field(None, description="dense: pretrain on one block "
                                           "only (west, east or [col0, col1])")
    max_cloud: float | None = Field(None, ge=0, le=1, description="seco, moco-tp: largest "
                                    "cloud share of a date's window before it is redrawn")

    @field_validator("bands", "band_names", mode="before")
    @classmethod
    def _band_list(cls, v):
        if isinstance(v, str):  # --bands B02,B03,B04 / bands: "B02, B03"
            v = [b.strip() for b in v.split(",") if b.strip()]
            if not v:
                raise ValueError("expected band names, e.g. B02,B03,B04")
        return v


def _accelerators() -> list[str]:
    from lightning.pytorch.accelerators import AcceleratorRegistry

    return sorted({"auto", "gpu", *AcceleratorRegistry.available_accelerators()})


def _strategies() -> list[str]:
    from lightning.pytorch.strategies import StrategyRegistry

    return ["auto", *StrategyRegistry.available_strategies()]


def _precisions() -> list[str]:
    from lightning.fabric.connector import _PRECISION_INPUT

    return list(dict.fromkeys(str(x) for lit in typing.get_args(_PRECISION_INPUT)
                              for x in typing.get_args(lit)))


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# The experiment trackers a run can log to (Lightning's loggers; train.make_loggers).
LOGGERS = ("csv", "tensorboard", "mlflow", "wandb")


class TrainerConfig(_Section):
    """``trainer:``: the budget and Lightning's device options."""

    max_time: str | float | None = Field("10m", description="wall-clock budget: 90s, 10m, "
                                         "1.5h, HH:MM:SS or seconds")
    max_steps: int | None = Field(None, ge=1, description="step budget")
    accelerator: str = Field("auto", description="Lightning accelerator: auto, cpu, gpu, ...")
    devices: int | str | list[int] = Field(1, description="devices per node: a number, 'auto' "
                                           "or a list of device indices")
    num_nodes: int = Field(1, ge=1, description="machines")
    strategy: str = Field("auto", description="Lightning strategy: auto, ddp, ...")
    precision: str = Field("32-true", description="Lightning precision: 32-true, bf16-mixed, "
                           "16-mixed, ...")
    channels_last: bool = Field(False, description="NHWC weights and batches "
                                "(train.ChannelsLast)")
    compile: bool | str = Field(False, description="torch.compile the backbone(s): true or a "
                                "torch.compile mode")
    sync_batchnorm: bool = Field(False, description="DDP: BatchNorm statistics over all ranks")
    val_every_n_steps: int = Field(100, ge=1, description="steps between kNN probes")
    checkpoint_every_n_steps: int = Field(100, ge=1, description="steps between checkpoints")
    deterministic: bool | Literal["warn"] = Field(False, description="Lightning's flag: "
                                                  "deterministic kernels")
    loggers: list[Literal[LOGGERS]] = Field(["csv"], min_length=1, description="where "
                                            "metrics go (train.make_loggers): csv "
                                            "(logs/metrics.csv, read by eossl's reports), "
                                            "tensorboard, mlflow, wandb; several allowed")

    @field_validator("loggers", mode="before")
    @classmethod
    def _logger_list(cls, v):
        if isinstance(v, str):  # --logger csv,tensorboard / loggers: "csv, mlflow"
            v = [x.strip() for x in v.split(",") if x.strip()]
        if isinstance(v, list) and len(set(v)) != len(v):
            raise ValueError("names a logger twice")
        return v

    @field_validator("max_time")
    @classmethod
    def _duration(cls, v):
        try:
            parse_duration(v)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return v

    @field_validator("accelerator")
    @classmethod
    def _accelerator(cls, v):
        return _one_of(v, _accelerators())

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v):
        return _one_of(v, _strategies())

    @field_validator("precision", mode="before")
    @classmethod
    def _precision(cls, v):
        return _one_of(str(v) if isinstance(v, int) and not isinstance(v, bool) else v,
                       _precisions())

    @field_validator("compile")
    @classmethod
    def _compile(cls, v):
        return v if isinstance(v, bool) else _one_of(v, list(COMPILE_MODES))

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, v):
        if isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v):
            v = int(v)
        elif isinstance(v, str) and re.fullmatch(r"\s*\d+(\s*,\s*\d+)+\s*,?\s*", v):
            v = [int(x) for x in v.split(",") if x.strip()]
        if isinstance(v, bool) or (isinstance(v, str) and v != "auto"):
            raise ValueError("expected a number of devices, 'auto' or a list of device "
                             "indices such as 0,1")
        if isinstance(v, int) and v < 1 and v != -1:
            raise ValueError("expected at least 1 device (-1: all)")
        return v


def _one_of(value: str, allowed: list[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"expected one of {', '.join(allowed)}{_did_you_mean(value, allowed)}")
    return value


def _did_you_mean(value, allowed) -> str:
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


# Constructor arguments that the run sets itself from the other sections, never from model:.
FROM_RUN = {"bands": "data.bands", "stats": "the data's statistics",
            "crop_size": "data.crop_size", "max_steps": "trainer.max_steps",
            "max_time_s": "trainer.max_time"}

# Ranges of hyper-parameters that mean the same thing in every method that has them (the
# methods' constructors check their own, method-specific ones when they are built).
LIMITS: dict[str, dict] = {
    "lr": {"gt": 0}, "weight_decay": {"ge": 0}, "momentum": {"ge": 0, "le": 1},
    "warmup_fraction": {"ge": 0, "lt": 1}, "ema_momentum": {"ge": 0, "le": 1},
    "temperature": {"gt": 0}, "knn_k": {"ge": 1}, "knn_temperature": {"gt": 0},
    "stem_stride": {"ge": 1}, "proj_dim": {"ge": 1},
}


@functools.cache
def model_schema(method: str) -> type[BaseModel]:
    """The ``model:`` section of ``method``: one field per keyword argument of the method
    class's constructor (walking up the classes while a constructor passes ``**kwargs`` on),
    with its annotation as type and its default; the arguments a run fills in itself (bands,
    statistics, crop size, budget) are left out."""
    from .methods import get_method
    from .methods.base import OPTIMIZERS

    fields: dict[str, Any] = {}
    for klass in get_method(method).__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        for name, p in params.items():
            if name == "self" or name in FROM_RUN or name in fields or p.kind in (
                    p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            kind = _annotation(init, name)
            if name == "optimizer":
                kind = Literal[OPTIMIZERS]
            elif name == "backbone":
                kind = Annotated[str, AfterValidator(_backbone_name)]
            default = ... if p.default is p.empty else p.default
            fields[name] = (kind, Field(default, **LIMITS.get(name, {})))
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break  # this constructor takes no further keyword arguments
    return create_model(f"{method}_model", __config__=ConfigDict(
        extra="forbid", arbitrary_types_allowed=True), **fields)


def _backbone_name(name: str) -> str:
    """A timm model name (the backbone registry's own check, with its suggestions)."""
    from .models.backbones import _check_name

    try:
        _check_name(name)
    except ConfigError as e:
        raise ValueError(str(e).replace(f"unknown backbone {name!r}: ", "")) from None
    return name


def _annotation(func, name: str):
    """The evaluated annotation of one parameter (Any when it cannot be evaluated: the method
    modules use postponed annotations, and one odd name must not break the whole schema)."""
    raw = func.__annotations__.get(name)
    if raw is None:
        return Any
    if not isinstance(raw, str):
        return raw
    try:
        return eval(raw, func.__globals__, {"Sequence": typing.Sequence})  # noqa: S307
    except Exception:
        return Any


class RunConfig(BaseModel):
    """The whole run configuration (the saved ``config.yaml`` is its ``to_dict()``)."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field("moco", description="pretext method (see 'eossl methods')")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="random seed of the run")
    model: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the "
                                  "method class (see model_schema)")
    data: DataConfig = Field(default_factory=DataConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)

    @field_validator("method")
    @classmethod
    def _method(cls, v):
        from .methods import available_methods

        if v not in available_methods():
            raise ValueError(f"unknown method; expected one of: "
                             f"{', '.join(available_methods())}"
                             f"{_did_you_mean(v, available_methods())}")
        return v

    def to_dict(self) -> dict:
        """Plain data: every data/trainer key, and the model keys that were given (a method's
        own defaults stay in the method, which may depend on other arguments)."""
        return {"method": self.method, "seed": self.seed, "model": copy.deepcopy(self.model),
                "data": self.data.model_dump(mode="json"),
                "trainer": self.trainer.model_dump(mode="json")}


DEFAULTS: dict = RunConfig.model_construct(
    method="moco", seed=0, model={}, data=DataConfig(), trainer=TrainerConfig()).to_dict()


def schema_keys(section: str, method: str | None = None) -> list[str]:
    """The valid keys of one section (``model`` needs the method)."""
    if section == "model":
        return list(model_schema(method or DEFAULTS["method"]).model_fields)
    return list({"data": DataConfig, "trainer": TrainerConfig}[section].model_fields)


# ------------------------------------------------------------------------------- validation
def validate_config(cfg: dict, origins: dict[str, str] | None = None) -> dict:
    """Check a whole run configuration (nested dict) against the schema; returns it with
    every default filled in and every value in its checked type. Raises ConfigError, one line
    naming each wrong key, its value, where it came from (``origins``: dotted key -> "--set",
    "--lr", a file, ...) and what was expected."""
    origins = origins or {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"expected a mapping with keys {', '.join(TOP_LEVEL)}, got "
                          f"{type(cfg).__name__}")
    try:
        run = RunConfig.model_validate(cfg)
    except ValidationError as e:
        raise ConfigError(_explain(e, cfg, origins)) from None
    try:
        model = model_schema(run.method).model_validate(run.model)
    except ValidationError as e:
        raise ConfigError(_explain(e, cfg, origins, prefix=("model",),
                                   method=run.method)) from None
    run.model = {k: getattr(model, k) for k in model.model_fields_set}
    run.model = _plain(run.model)
    return run.to_dict()


def _plain(v):
    """Tuples (from Sequence[...] fields) as lists, so config.yaml stays plain YAML."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _explain(err: ValidationError, cfg: dict, origins: dict[str, str], prefix=(),
             method: str | None = None) -> str:
    """pydantic's errors as one line: ``KEY=VALUE (from ORIGIN): what was expected``."""
    parts, seen = [], set()
    for e in err.errors():
        loc = [str(x) for x in (*prefix, *e["loc"])]
        # the key itself, without the type-branch names pydantic adds for unions
        key_parts = []
        for x in loc:
            if key_parts and key_parts[0] in SECTIONS and len(key_parts) >= 2:
                break
            key_parts.append(x)
        key = ".".join(key_parts)
        if key in seen:
            continue
        seen.add(key)
        where = _origin(key, origins)
        if e["type"] == "extra_forbidden":
            section = key_parts[0] if len(key_parts) > 1 else None
            valid = schema_keys(section, method or cfg.get("method")) if section else \
                list(TOP_LEVEL)
            hint = _did_you_mean(key_parts[-1], valid)
            extra = (f"; {key_parts[-1]} is set from {FROM_RUN[key_parts[-1]]}"
                     if section == "model" and key_parts[-1] in FROM_RUN else "")
            parts.append(f"unknown key {key}{where}{hint or extra}; "
                         f"{'valid ' + section + ' keys' if section else 'expected'}: "
                         f"{', '.join(valid)}")
            continue
        if e["type"] == "missing":
            parts.append(f"{key}{where} is required")
            continue
        value = e.get("input")
        msg = e["msg"]
        msg = msg[len("Value error, "):] if msg.startswith("Value error, ") else msg
        msg = msg[0].lower() + msg[1:] if msg else msg
        if e["type"] == "model_type" or e["type"] == "dict_type":
            msg = "expected a mapping of keys to values"
        parts.append(f"{key}={_short(value)}{where}: {msg}")
    return "; ".join(parts)


def _origin(key: str, origins: dict[str, str]) -> str:
    o = origins.get(key)
    if o is None:  # a section or its parent given as a whole
        o = origins.get(key.rpartition(".")[0])
    return f" (from {o})" if o else ""


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------------- layers
def packaged_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def resolve_recipe(path: str | Path) -> Path:
    """A recipe file: the path itself, else a packaged recipe by name (``moco-cpu`` or
    ``moco-cpu.yaml``); ConfigError naming the packaged ones when neither exists."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        raise ConfigError(f"config {p} is a folder; expected a YAML recipe file")
    for cand in (RECIPES_DIR / p.name, RECIPES_DIR / f"{p.name}.yaml"):
        if len(p.parts) == 1 and cand.is_file():
            return cand
    raise ConfigError(f"config file {p} not found; packaged recipes (usable by name): "
                      f"{', '.join(packaged_recipes())}")


def read_recipe(path: str | Path) -> tuple[Path, dict]:
    """A recipe file's sections as a nested dict (not yet validated)."""
    p = resolve_recipe(path)
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}); expected a YAML recipe") \
            from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the recipe ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}: malformed YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: expected a mapping with keys method, model, data, trainer")
    unknown = [k for k in loaded if k not in TOP_LEVEL]
    if unknown:
        raise ConfigError(f"{p}: unknown top-level key(s) {', '.join(map(str, unknown))}"
                          f"{_did_you_mean(unknown[0], TOP_LEVEL)}; expected method, seed, "
                          "model, data, trainer")
    for s in SECTIONS:
        if loaded.get(s) is not None and not isinstance(loaded[s], dict):
            raise ConfigError(f"{p}: section {s!r} must be a mapping")
    return p, {k: v for k, v in loaded.items() if v is not None}


def parse_set(items: list[str] | None) -> dict:
    """``--set model.ms_only=true --set data.crop_size=64`` -> {"model.ms_only": True, ...}.

    Values are read as YAML scalars/lists (true, 64, 0.1, [B02, B03]), like the recipe files;
    an empty value or ``null`` sets the key to null.
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
        if key in out:
            raise ConfigError(f"--set {key} is given twice; give it once")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: cannot read the value as YAML") from None
    return out


def flatten(cfg: dict) -> dict:
    """{"data": {"crop_size": 32}} -> {"data.crop_size": 32} (method and seed stay as they are)."""
    flat = {}
    for k, v in cfg.items():
        if k in SECTIONS and isinstance(v, dict):
            flat.update({f"{k}.{n}": x for n, x in v.items()})
        else:
            flat[k] = v
    return flat


def compose(layers: list[tuple[str | dict, dict]], base: dict | None = None) -> tuple[dict, dict]:
    """Merge ``layers`` onto ``base`` (default: nothing, i.e. the schema's defaults). Each layer
    is ``(origin, {dotted key: value})``, lowest first; ``origin`` names where the values came
    from, for messages: one text for the whole layer, or a dict per key. Returns the nested,
    NOT yet validated configuration and each key's origin. A layer that gives any budget key
    replaces the whole budget below it."""
    cfg = copy.deepcopy(base) if base is not None else {}
    origins: dict[str, str] = {}
    for origin, values in layers:
        def label(key, origin=origin):
            return origin[key] if isinstance(origin, dict) else origin

        given = [k for k in BUDGET if k in values]
        for k in BUDGET:
            if given and k not in values:
                cfg.setdefault("trainer", {})[k.split(".")[1]] = None
                origins[k] = label(given[0])
        for key, value in values.items():
            section, _, name = key.rpartition(".")
            if section:
                if not isinstance(cfg.get(section), dict):
                    cfg[section] = {}
                cfg[section][name] = copy.deepcopy(value)
            else:
                cfg[name] = copy.deepcopy(value)
            origins[key] = label(key)
    return cfg, origins


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Schema defaults <- recipe file <- ``overrides`` (dotted keys; None values are "not
    given" and ignored), validated. The library's way to build a run configuration."""
    layers: list[tuple[str, dict]] = []
    if path is not None:
        p, recipe = read_recipe(path)
        layers.append((str(p), flatten(recipe)))
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if given:
        layers.append(("overrides", given))
    cfg, origins = compose(layers)
    return validate_config(cfg, origins)
