"""The evaluation registry: each evaluation is one class, used unchanged by ``eossl evaluate
NAME`` and by ``eossl benchmark``.

An :class:`Evaluation` says which encoders it can take (``applies``), runs encoders on its
task's folds for one seed (``run``) and computes its encoder-free baseline (``baseline``), all
as records of one format (evaluate/results.py). :func:`compare` adds every encoder's random
twin (one per distinct architecture and inputs): the only kind of reference row, so a
difference to it is the pretraining's and nothing else. Settings are class attributes named in
``settings`` (the CLI turns them into options, the report prints them in the protocol);
``quick`` holds the values of the benchmark's ``--quick`` preset.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..models.encoder import RANDOM_TWIN, Encoder
from . import results as R

EVALUATIONS: dict[str, type["Evaluation"]] = {}
FIGURES = Path("figures") / "evaluations"   # where evaluations put pictures, under the folder


def register_evaluation(name: str, position: int = 1000):
    """Class decorator: make an Evaluation available as ``name`` (``eossl evaluate NAME``,
    ``eossl benchmark --evaluations NAME``); ``position`` orders the sections of a report."""

    def decorate(cls):
        if name in EVALUATIONS and EVALUATIONS[name] is not cls:
            raise ConfigError(f"evaluation name {name!r} is already taken by "
                              f"{EVALUATIONS[name].__qualname__}")
        cls.name, cls.position = name, position
        EVALUATIONS[name] = cls
        return cls

    return decorate


def available_evaluations() -> list[str]:
    """Every registered evaluation, in report order."""
    _import_all()
    return sorted(EVALUATIONS, key=lambda n: (EVALUATIONS[n].position, n))


def get_evaluation(name: str) -> type["Evaluation"]:
    _import_all()
    if name not in EVALUATIONS:
        raise ConfigError(f"unknown evaluation {name!r}; expected one of: "
                          f"{', '.join(available_evaluations())}")
    return EVALUATIONS[name]


def _import_all() -> None:
    """Import every evaluation module: one registers itself on import (a new evaluation is
    one new module here)."""
    import importlib
    import pkgutil

    from .. import evaluate

    for info in pkgutil.iter_modules(evaluate.__path__):
        importlib.import_module(f"{evaluate.__name__}.{info.name}")


class Context:
    """What the evaluations of one command or benchmark share: the data (a request for the
    resolver, eossl.data.resolve, opened once), the options the user gave about it, where
    pictures go, the device, and a cache."""

    def __init__(self, data="brandenburg", *, cache=None, options: Mapping[str, Any] | None = None,
                 root: Path | None = None, device: str = "cpu", source=None) -> None:
        from ..data.resolve import DataRequest

        self.request = data if isinstance(data, DataRequest) else DataRequest(data=data)
        self.cache = cache
        self.options = dict(options or {})
        self.root = Path(root) if root is not None else None
        self.device = device
        self._cached: dict = {} if source is None else {("source", ()): source}
        self._work = None  # the progress bar of the evaluation running (work())

    @property
    def source(self):
        """The evaluation data (labelled scenes or chips) the request names."""
        return self.open()

    def open(self, **changes):
        """The data of the request with ``changes`` (e.g. ``sensor=...`` to add radar bands),
        opened once."""
        import dataclasses

        from ..data.resolve import open_data

        key = ("source", tuple(sorted(changes.items())))
        return self.cached(key, lambda: open_data(dataclasses.replace(self.request, **changes),
                                                  self.cache))

    def cached(self, key, build):
        """``build()`` once per key: data several evaluations, encoders or seeds share."""
        if key not in self._cached:
            self._cached[key] = build()
        return self._cached[key]

    # the folds every evaluation runs on (evaluate/folds.py), opened once
    def patch_folds(self, size: int = 16) -> list:
        from .folds import patch_folds

        return self.cached(("patch-folds", size), lambda: patch_folds(self.source, size))

    def area_folds(self, gap: int = 16) -> list:
        from .folds import area_folds

        return self.cached(("area-folds", gap), lambda: area_folds(self.source, gap))

    def tile_folds(self, size: int) -> list:
        from .folds import tile_folds

        return self.cached(("tile-folds", size), lambda: tile_folds(self.source, size))

    # progress: the evaluation's fold loops go through track(), so the bar counts folds
    @contextlib.contextmanager
    def work(self, desc: str, runs: int, *, enabled: bool = True, leave: bool = True):
        """A progress bar (eossl.progress.Work) over ``runs`` runs of an evaluation (one
        encoder or the baseline, one seed each) while the block runs."""
        from ..progress import Work

        outer = self._work
        with Work(desc, runs, enabled=enabled, leave=leave) as w:
            self._work = w
            try:
                yield w
            finally:
                self._work = outer

    def track(self, folds):
        """``for fold in ctx.track(folds)``: the folds of one run, each counted on the bar."""
        return self._work.track(folds) if self._work is not None else iter(folds)

    def end_run(self) -> None:
        """One run (an encoder or the baseline, one seed) finished."""
        if self._work is not None:
            self._work.end_run()

    def say(self, text: str, out=print) -> None:
        """A line for the user (``out``), written around the bar when one is shown."""
        if self._work is not None:
            self._work.write(text, out)
        else:
            out(text)

    def figure_path(self, name: str) -> Path | None:
        if self.root is None:
            return None
        p = self.root / FIGURES / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


class Evaluation:
    """Base class. ``settings``: {name: default} of what a user may set (each becomes an
    attribute, a CLI option and a value in the protocol text); ``quick``: the values of the
    benchmark's ``--quick`` preset. Report hints: ``tables`` (in display order; default: the
    title), ``shown_metrics`` (first = primary), ``finding_metrics`` (every finding must hold
    for all of them; default the first two shown), ``lower_is_better``, ``comparisons``
    (column pairs compared row by row, e.g. the ensemble against its members),
    ``finding_columns`` (restrict findings to some columns), ``fraction_tables`` (columns are
    label fractions: plot score vs fraction)."""

    name = "evaluation"     # set by @register_evaluation
    position = 1000         # where its section stands in a report
    title = "Evaluation"
    description = ""
    shown_metrics: tuple[str, ...] = ("accuracy", "balanced_accuracy")
    finding_metrics: tuple[str, ...] | None = None
    lower_is_better: tuple[str, ...] = ()
    comparisons: tuple[tuple[str, str], ...] = ()
    finding_columns: tuple[str, ...] | None = None
    fraction_tables = False
    fraction_label: str | None = None
    settings: dict[str, Any] = {}
    quick: dict[str, Any] = {}
    default_data = "brandenburg"  # the data it runs on unless told otherwise (--data)
    twins = True            # random-twin reference rows
    layer_cv = False        # a "cv" feature layer (chosen per fit) is allowed
    in_benchmark = True     # part of ``eossl benchmark`` by default

    def __init__(self, quick: bool = False, **settings) -> None:
        for k, v in {**self.settings, **(self.quick if quick else {})}.items():
            setattr(self, k, v)
        for k, v in settings.items():
            if k not in self.settings:
                raise ConfigError(f"evaluation {self.name}: unknown setting {k!r}; expected "
                                  f"one of {', '.join(self.settings) or 'none'}")
            setattr(self, k, v)
        self.inputs: dict[str, str] = {}  # row -> how its encoder read the data (describe())
        self.check()

    def check(self) -> None:
        """Refuse bad settings before any work (ConfigError)."""
        if "layers" in self.settings:
            from .features import check_layers

            self.layers = check_layers(self.layers, allow_cv=self.layer_cv)

    @property
    def tables(self) -> tuple[str, ...]:
        return (self.title,)

    # ------------------------------------------------------------------ protocol
    def params(self) -> dict:
        return {k: getattr(self, k) for k in self.settings}

    def protocol(self) -> str:
        """The description with the settings filled in, for the report."""
        return self.description.format(**{k: _param(v) for k, v in self.params().items()})

    def finding_metric_names(self) -> tuple[str, ...]:
        return self.finding_metrics or tuple(self.shown_metrics[:2])

    # ------------------------------------------------------------------ the work
    def splits(self, ctx: Context) -> str:
        """One sentence for the report: the folds the records come from."""
        from .folds import describe_folds

        return describe_folds(ctx.source)

    def pretraining_note(self, ctx: Context, encoder: Encoder) -> str:
        """Whether the encoder's pretraining saw this evaluation's test areas (from its
        checkpoint's ``pretrain_data``), for the report's row description."""
        if encoder.is_random_twin:
            return ""
        return ctx.source.pretraining_note(encoder.metadata)

    def available(self, ctx: Context) -> str | None:
        """None when the context has the data this evaluation needs; otherwise why not."""
        return None

    def applies(self, encoder: Encoder) -> str | None:
        """None when this evaluation can take ``encoder``; otherwise the reason it cannot."""
        return None

    def baseline(self, ctx: Context, seed: int) -> list[dict]:
        """Records of the encoder-free baseline (the spectral one) for one seed."""
        return []

    def run(self, ctx: Context, encoders: Mapping[str, Encoder], seed: int) -> list[dict]:
        """Records of every encoder on every fold, for one seed."""
        raise NotImplementedError

    def figures(self, records: list[dict], root: Path) -> list[tuple[Path, str]]:
        """Pictures drawn at report time from all saved records."""
        return []

    # ------------------------------------------------------------------ helpers
    def fed(self, name: str, encoder: Encoder, bands: Sequence[str]) -> Encoder:
        """``encoder`` reading ``bands``; its description goes into the protocol."""
        fed = encoder.for_bands(list(bands))
        self.inputs[name] = fed.describe()
        return fed

    def rec(self, table: str, model: str, seed: int, fold: int, column: str, order: float,
            scores: dict, metrics: Sequence[str], **extra) -> list[dict]:
        return R.records(self.name, table, model, seed, fold, column, order, scores, metrics,
                         **extra)

    def model_records(self, rows: Mapping[str, dict], seed: int) -> list[dict]:
        """``_model`` records: for each row its role, twin, collapse verdict and inputs."""
        out = []
        for name, info in rows.items():
            out.append({"evaluation": self.name, "table": "_model", "model": name,
                        "seed": int(seed), "fold": 0, "metric": "model", "value": None,
                        "column": "", "order": 0.0, **info,
                        "inputs": self.inputs.get(name, info.get("inputs", ""))})
        return out


def figure_record(ctx: Context, evaluation: str, model: str, seed: int, path: Path,
                  caption: str) -> dict:
    """The record that tells a report where an evaluation's picture lies (relative to the
    output folder)."""
    return {"evaluation": evaluation, "table": "_figure", "model": model, "seed": int(seed),
            "fold": 0, "metric": "figure", "value": None, "column": "", "order": 0.0,
            "caption": caption, "path": Path(path).relative_to(ctx.root).as_posix()}


def _param(v):
    """A setting for the description: floats print short (0.001, not 0.0010) but may still be
    formatted (``{min_labelled:.0%}``); lists join with commas."""
    if isinstance(v, (list, tuple)):
        return ", ".join(_show(x) for x in v)
    return _Num(v) if isinstance(v, float) else v


def _show(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


class _Num(float):
    def __str__(self) -> str:
        return f"{float(self):g}"

    def __format__(self, spec: str) -> str:
        return format(float(self), spec) if spec else str(self)


# ------------------------------------------------------------------------------ twins
def twin_rows(encoders: Mapping[str, Encoder]) -> dict[str, list[str]]:
    """{twin row name: the encoders it is the twin of}: one random twin per distinct
    architecture and inputs (Encoder.signature). One twin in all: "random init"; several:
    "random init (a, b)" naming the encoders each stands in for."""
    groups: dict[str, list[str]] = {}
    for name, enc in encoders.items():
        groups.setdefault(enc.signature(), []).append(name)
    if len(groups) == 1:
        return {RANDOM_TWIN: next(iter(groups.values()))}
    return {f"{RANDOM_TWIN} ({', '.join(names)})": names for names in groups.values()}


def row_info(name: str, encoder: Encoder, twin: str | None = None) -> dict:
    """What a report needs to know about a row besides its numbers."""
    info = {"role": "twin" if encoder.is_random_twin else "encoder",
            "architecture": encoder.describe(), "signature": encoder.signature(),
            "twin": twin, "collapse": encoder.collapse, "collapsed": encoder.collapsed}
    if origin(encoder):
        info["origin"] = origin(encoder)
    return info


def origin(encoder: Encoder) -> str:
    """Where an encoder's weights come from, when not from an eossl pretraining: the weights
    file and what its description names (models/external.py); '' otherwise."""
    ext = encoder.metadata.get("external")
    if not ext or encoder.is_random_twin:
        return ""
    file = Path(str(encoder.metadata.get("weights_file", ""))).name
    what = [str(ext["name"])] if ext.get("name") and ext.get("name") != file else []
    what += [f"{ext['method']} pretraining"] if ext.get("method") else []
    return f"weights pretrained elsewhere: {file}" + (f" ({', '.join(what)})" if what else "")


def compare(ev: Evaluation, ctx: Context, encoders: Mapping[str, Encoder],
            seeds: Sequence[int], twins: bool = True, log=None,
            progress: bool = False) -> list[dict]:
    """Records of the baseline, every encoder and (``twins``) the random twins, per seed;
    ``progress``: a bar (stderr) over those runs, counted in folds; ``log`` gets a line as
    each run starts."""
    skipped = {n: ev.applies(e) for n, e in encoders.items()}
    for n, why in skipped.items():
        if why:
            raise ConfigError(f"evaluation {ev.name} cannot take encoder {n!r}: {why}")
    groups = twin_rows(encoders) if twins and ev.twins else {}
    twin_of = {m: t for t, members in groups.items() for m in members}
    has_baseline = type(ev).baseline is not Evaluation.baseline
    runs = len(seeds) * (len(encoders) + len(groups) + has_baseline)
    out: list[dict] = []

    def step(name: str, seed: int, encoder: Encoder | None = None) -> list[dict]:
        """One run: the baseline (no encoder) or one encoder, for one seed."""
        if log:
            ctx.say(f"{ev.name}: {name}, seed {seed}", log)
        records = (ev.baseline(ctx, seed) if encoder is None
                   else ev.run(ctx, {name: encoder}, seed))
        ctx.end_run()
        return records

    with ctx.work(ev.name, runs, enabled=progress):
        for seed in seeds:
            if has_baseline:
                out += step(R.SPECTRAL, seed)
            rows = {n: {**row_info(n, e, twin_of.get(n)),
                        "pretraining": ev.pretraining_note(ctx, e)}
                    for n, e in encoders.items()}
            for name, enc in encoders.items():
                out += step(name, seed, enc)
            for tname, members in groups.items():
                twin = encoders[members[0]].random_twin(seed)
                out += step(tname, seed, twin)
                rows[tname] = {**row_info(tname, twin), "twin_of": members}
            out += ev.model_records(rows, seed)
    return out
