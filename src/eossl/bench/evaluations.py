"""The evaluations a benchmark runs, as small adapters over eossl.evaluate.

Each evaluation says which pretraining runs it applies to (and why not, for the others),
computes the reference rows (random init, spectral baseline) once per seed, and turns one run's
checkpoint into flat records::

    {"table": "Linear probe", "model": "moco", "seed": 0, "column": "10%",
     "metric": "accuracy", "value": 0.61, "order": 0.1}

Records of one table share columns; the report shows mean and spread over seeds beside the
per-seed values. Tables whose name starts with ``_`` are not tables: ``_embedding`` carries the
scatter plot's points, ``_figure`` a picture an evaluation drew (its ``path`` relative to the
benchmark folder and a ``caption``). A new evaluation is one ``@register_evaluation`` class here;
its settings are class attributes named in ``settings``, so the report can print the protocol
that was actually run (``--quick`` swaps in the values of ``quick``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluate.compare import RANDOM, SPECTRAL

EVALUATIONS: dict[str, type["Evaluation"]] = {}
FIGURES = Path("figures") / "evaluations"   # where evaluations put pictures, under the folder


def register_evaluation(cls):
    EVALUATIONS[cls.name] = cls
    return cls


@dataclass
class RunInfo:
    """One finished pretraining run of the benchmark."""

    method: str
    seed: int
    run_dir: Path
    checkpoint: Path
    summary: dict = field(default_factory=dict)


class Context:
    """What evaluations share: the labelled data, opened once, the plan's settings and the
    benchmark folder (``root``) that pictures go into."""

    def __init__(self, plan, cache=None, quick: bool = False, root: Path | None = None) -> None:
        self.plan, self.cache, self.quick = plan, cache, quick
        self.root = Path(root) if root is not None else None
        self._source = None
        self._patches: dict[str, Any] = {}
        self._cached: dict[str, Any] = {}

    @property
    def source(self):
        if self._source is None:
            # the plan's data when it has labels (or is the sample scene), else the sample
            opts = dict(getattr(self.plan, "data_options", None) or {})
            if opts.get("labels") or self.plan.data in ("brandenburg", "brandenburg-patches"):
                from ..data.resolve import DataRequest, open_data

                self._source = open_data(DataRequest(data=self.plan.data, **opts), self.cache)
            else:
                from ..data.sources import brandenburg

                self._source = brandenburg(self.cache)
        return self._source

    def patches(self, split: str, size: int = 16):
        if (split, size) not in self._patches:
            self._patches[(split, size)] = self.source.patches(split, size)
        return self._patches[(split, size)]

    def cached(self, key, build):
        """``build()`` once per key: data sets several evaluations or runs share."""
        if key not in self._cached:
            self._cached[key] = build()
        return self._cached[key]

    @property
    def first_seed(self) -> int:
        return self.plan.seeds[0]

    def figure_path(self, name: str) -> Path | None:
        """Where a picture named ``name`` goes (None without a benchmark folder)."""
        if self.root is None:
            return None
        p = self.root / FIGURES / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


class Evaluation:
    """Base class: name, title, the metrics shown, applicability and the two kinds of rows.

    Report hints: ``tables`` (the table names it writes), ``shown_metrics`` (first = primary,
    used by the findings), ``lower_is_better`` (metrics where less wins, e.g. RMSE),
    ``comparisons`` (model pairs compared seed by seed in the findings, beside the generic
    best-method-vs-reference lines), ``finding_columns`` (restrict those lines to some columns),
    ``fraction_tables`` (columns are label fractions: plot score vs fraction).
    """

    name = "evaluation"
    title = "Evaluation"
    tables: tuple[str, ...] = ()
    shown_metrics: tuple[str, ...] = ()
    lower_is_better: tuple[str, ...] = ()
    comparisons: tuple[tuple[str, str], ...] = ()
    finding_columns: tuple[str, ...] | None = None
    fraction_tables = False     # columns are label fractions: the report plots score vs fraction
    fraction_label: str | None = None
    description = ""
    settings: tuple[str, ...] = ()
    quick: dict[str, Any] = {}

    def __init__(self, quick: bool = False, plan=None) -> None:
        self.plan = plan
        if quick:
            for k, v in self.quick.items():
                setattr(self, k, v)

    def params(self) -> dict:
        """The settings this instance runs with (class defaults or the --quick values)."""
        return {k: getattr(self, k) for k in self.settings}

    def protocol(self, params: dict | None = None) -> str:
        """The description with the settings filled in, for the report."""
        p = {**self.params(), **(params or {})}
        return self.description.format(**{k: _param(v) for k, v in p.items()})

    def applies(self, run: RunInfo) -> str | None:
        """None when this evaluation applies to ``run``; otherwise the reason it does not."""
        return None

    def references(self, ctx: Context, seed: int) -> dict[str, list[dict]]:
        """Reference rows for one seed: {model name: records}."""
        return {}

    def evaluate(self, ctx: Context, run: RunInfo) -> list[dict]:
        raise NotImplementedError

    def figures(self, records: list[dict], root: Path) -> list[tuple[Path, str]]:
        """Pictures drawn at report time from all saved records (mean over seeds)."""
        return []


def _show(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_show(x) for x in v)
    return str(v)


def _param(v):
    """A setting for the description: numbers stay numbers (so a description may format
    them, e.g. ``{min_labelled:.0%}``); floats print short (0.001, not 0.0010)."""
    if isinstance(v, (list, tuple)):
        return _show(v)
    return _Num(v) if isinstance(v, float) else v


class _Num(float):
    def __str__(self) -> str:
        return f"{float(self):g}"

    def __format__(self, spec: str) -> str:
        return format(float(self), spec) if spec else str(self)


# ------------------------------------------------------------------------------ helpers
def _rec(table: str, model: str, seed: int, column: str, order: float, metric: str, value,
         **extra) -> dict:
    value = None if value is None or not np.isfinite(value) else float(value)
    return {"table": table, "model": model, "seed": int(seed), "column": column,
            "order": float(order), "metric": metric, "value": value, **extra}


def _records(table: str, model: str, seed: int, column: str, order: float, scores: dict,
             metrics, **extra) -> list[dict]:
    """One record per metric of one (model, seed, column) cell."""
    return [_rec(table, model, seed, column, order, m, scores.get(m), **extra) for m in metrics]


def _figure(ctx: Context, evaluation: str, model: str, seed: int, path: Path, caption: str,
            replaces: str | None = None) -> dict:
    """The record that tells the report where an evaluation's picture lies."""
    return {"table": "_figure", "evaluation": evaluation, "model": model, "seed": int(seed),
            "metric": "figure", "value": None, "column": "", "caption": caption,
            "path": path.relative_to(ctx.root).as_posix(), "replaces": replaces}


def shrink_png(path: Path, dpi_from: float = 110, dpi_to: float = 100) -> Path:
    """Resample a PNG drawn at ``dpi_from`` to the pixel size it would have at ``dpi_to``.

    The drawing functions of eossl.methods and eossl.evaluate save at 110 dpi; the benchmark
    report is committed, so its pictures are kept at <= 100 dpi."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
    if dpi_to >= dpi_from:
        return path
    size = (max(1, round(im.width * dpi_to / dpi_from)), max(1, round(im.height * dpi_to /
                                                                      dpi_from)))
    tmp = path.with_name(f".{path.stem}.shrink.png")
    im.convert("RGB").resize(size, Image.LANCZOS).save(tmp, dpi=(dpi_to, dpi_to), optimize=True)
    tmp.replace(path)
    return path


def _method_class(name: str):
    from ..methods import get_method

    return get_method(name)


def _is_bandwise(run: RunInfo) -> bool:
    """Band-wise encoders (RS-BYOL) run a 1- or 3-channel backbone on each band."""
    from ..checkpoint import checkpoint_metadata

    return (checkpoint_metadata(run.checkpoint).get("encoder") or {}).get("type") == "bandwise"


def _is_colorization(method: str) -> bool:
    from ..methods.colorization import Colorization

    return issubclass(_method_class(method), Colorization)


def _is_dense(method: str) -> bool:
    """Dense (Embedding Earth) checkpoints carry their U-Net decoder."""
    from ..methods.dense import DenseContrast

    return issubclass(_method_class(method), DenseContrast)


def _load(run: RunInfo, bands):
    """The run's encoder fed from data with ``bands`` (picked by name or stand-in)."""
    from ..checkpoint import load_encoder

    return load_encoder(run.checkpoint).for_bands(bands)


def _random(ctx: Context, seed: int):
    """The random-init reference: the plan's backbone on the scene's bands and statistics."""
    from ..models.backbones import build_backbone
    from ..models.encoder import RANDOM_TWIN, Encoder
    from ..normalization import Normalizer

    tr = ctx.patches("train")
    bb = build_backbone(ctx.plan.backbone, in_chans=len(tr.bands)).fresh(seed)
    return Encoder(bb, Normalizer(ctx.source.stats()), RANDOM_TWIN,
                   metadata={"random_twin": {"seed": seed}})


def _classification(labels, logits, classes) -> dict:
    from ..evaluate.metrics import classification_metrics

    return classification_metrics(labels, np.asarray(logits).argmax(1), list(classes))


CLASS_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def _probe_records(results_by_model: dict, table_prefix: str, seed: int) -> dict[str, list[dict]]:
    from ..evaluate.probe import results_to_records

    out: dict[str, list[dict]] = {}
    for rec in results_to_records(results_by_model):
        kind = "Linear probe" if rec["kind"] == "linear" else "kNN probe (k = 20)"
        for metric in CLASS_METRICS:
            out.setdefault(rec["model"], []).append({
                "table": f"{table_prefix}{kind}", "model": rec["model"], "seed": seed,
                "column": f"{rec['fraction']:.0%} labels", "order": rec["fraction"],
                "metric": metric, "value": rec[metric], "n_train": rec["n_train"],
                "skipped": rec["skipped"]})
    return out


# ------------------------------------------------------------------------------ evaluations
@register_evaluation
class PatchProbe(Evaluation):
    """Linear and kNN probes of frozen features on the scene's spatial patch split, at the
    plan's label fractions (subsample seed = pretraining seed)."""

    name = "probe"
    title = "Patch classification probes"
    tables = ("Linear probe", "kNN probe (k = 20)")
    shown_metrics = ("accuracy", "balanced_accuracy")
    fraction_tables = True
    settings = ("C",)
    C: float | str = "cv"
    description = ("Frozen features of 16 px patches of the Brandenburg scene (OSM majority "
                   "class, >= 80%), west 60% train / east 40% test, at the plan's label "
                   "fractions (seeded subsamples); logistic regression ({C}) and cosine kNN, "
                   "k = 20.")

    def protocol(self, params: dict | None = None) -> str:
        c = {**self.params(), **(params or {})}["C"]
        return self.description.format(C="C by 3-fold CV" if c == "cv" else f"C = {_show(c)}")

    def _xy(self, ctx: Context, encoder):
        from ..evaluate.probe import extract_features

        tr, te = ctx.patches("train"), ctx.patches("test")
        x_tr, y_tr = extract_features(encoder, tr)
        x_te, y_te = extract_features(encoder, te)
        return x_tr, y_tr, x_te, y_te, tr.classes

    @staticmethod
    def _embedding(name, seed, x_te, y_te, classes) -> dict:
        """2-D PCA of the test features, kept for the report's scatter plot."""
        from sklearn.decomposition import PCA

        xy = PCA(2, random_state=0).fit_transform(x_te)
        return {"table": "_embedding", "model": name, "seed": seed, "metric": "pca",
                "value": None, "column": "", "xy": np.round(xy, 4).tolist(),
                "labels": [int(v) for v in y_te], "classes": list(classes)}

    def _probe(self, ctx, name, x_tr, y_tr, x_te, y_te, classes, seed, knn=True):
        from ..evaluate.probe import knn_probe, linear_probe

        kw = dict(fractions=ctx.plan.fractions, seeds=[seed], class_names=classes)
        rows = {name: linear_probe(x_tr, y_tr, x_te, y_te, C=self.C, **kw)}
        recs = _probe_records(rows, "", seed)
        if knn:
            k = _probe_records({name: knn_probe(x_tr, y_tr, x_te, y_te, **kw)}, "", seed)
            recs[name] += k[name]
        if seed == ctx.plan.seeds[0]:
            recs[name].append(self._embedding(name, seed, x_te, y_te, classes))
        return recs[name]

    def references(self, ctx: Context, seed: int) -> dict[str, list[dict]]:
        from ..evaluate.probe import spectral_features

        tr, te = ctx.patches("train"), ctx.patches("test")
        out = {RANDOM: self._probe(ctx, RANDOM, *self._xy(ctx, _random(ctx, seed)), seed)}
        f_tr, f_te = (spectral_features(d.images()) for d in (tr, te))
        out[SPECTRAL] = self._probe(ctx, SPECTRAL, f_tr, np.asarray(tr.labels), f_te,
                                    np.asarray(te.labels), tr.classes, seed, knn=False)
        return out

    def evaluate(self, ctx: Context, run: RunInfo) -> list[dict]:
        enc = _load(run, ctx.patches("train").bands)
        return self._probe(ctx, run.method, *self._xy(ctx, enc), run.seed)


@register_evaluation
class FineTune(Evaluation):
    """Whole-network fine-tuning of the encoder + a linear head on the labelled patches."""

    name = "finetune"
    title = "Fine-tuning (patch classification)"
    tables = ("Fine-tuned classifier",)
    shown_metrics = ("accuracy", "balanced_accuracy")
    settings = ("epochs", "lr", "backbone_lr_scale", "batch_size")
    epochs, lr, backbone_lr_scale, batch_size = 6, 1e-3, 0.1, 32
    quick = {"epochs": 2}
    description = ("The encoder and a new linear head trained end to end (AdamW lr {lr} for "
                   "the head, {backbone_lr_scale} x that for a pretrained encoder, cosine "
                   "decay, epochs = {epochs}, batch {batch_size}, flips and 90-degree rotations, "
                   "cross-entropy) on all west-block 16 px patches; scored on the east block. "
                   "Reference: the same backbone from random weights (whole network at lr).")

    def _fit(self, ctx: Context, name: str, encoder, seed: int) -> list[dict]:
        from ..evaluate.finetune import finetune, predict_logits

        tr, te = ctx.patches("train"), ctx.patches("test")
        model = finetune(encoder, tr, len(tr.classes), epochs=self.epochs, lr=self.lr,
                         batch_size=self.batch_size, seed=seed,
                         backbone_lr_scale=1.0 if name == RANDOM else self.backbone_lr_scale)
        logits, labels = predict_logits(model, te)
        scores = _classification(labels, logits, tr.classes)
        return _records(self.tables[0], name, seed, "100% labels", 1.0, scores, CLASS_METRICS,
                        n_train=len(tr), n_test=len(te))

    def references(self, ctx: Context, seed: int) -> dict[str, list[dict]]:
        return {RANDOM: self._fit(ctx, RANDOM, _random(ctx, seed), seed)}

    def evaluate(self, ctx: Context, run: RunInfo) -> list[dict]:
        return self._fit(ctx, run.method, _load(run, ctx.patches("train").bands), run.seed)


class _OneCallEvaluation(Evaluation):
    """An evaluation whose reference rows and method rows come from the same ``_run`` call:
    the random-init encoder with ``baseline=True`` (the spectral baseline rides along), the
    run's encoder without it."""

    def _run(self, ctx: Context, encoders: dict, seed: int,
             baseline: bool) -> dict[str, list[dict]]:
        raise NotImplementedError

    def _encoder(self, ctx: Context, run: RunInfo):
        return _load(run, ctx.source.bands)

    def references(self, ctx: Context, seed: int) -> dict[str, list[dict]]:
        return self._run(ctx, {RANDOM: _random(ctx, seed)}, seed, baseline=True)

    def evaluate(self, ctx: Context, run: RunInfo) -> list[dict]:
        return self._run(ctx, {run.method: self._encoder(ctx, run)}, run.seed,
                         baseline=False)[run.method]


@register_evaluation
class PixelProbe(_OneCallEvaluation):
    """Per-pixel logistic regression on frozen per-pixel embeddings (evaluate/pixel_probe)."""

    name = "pixel-probe"
    title = "Per-pixel probe"
    tables = ("Pixel probe",)
    shown_metrics = ("balanced_accuracy", "macro_f1")
    settings = ("per_class", "test_per_class", "C", "tile")
    per_class, test_per_class, C, tile = 200, 400, 1.0, 128
    quick = {"per_class": 100, "test_per_class": 200}
    description = ("Per-pixel embeddings (a spectral stem's own, else the last feature map "
                   "upsampled) of up to {per_class} labelled pixels per OSM class from the west "
                   "block and {test_per_class} per class from the east block (seeded draw), "
                   "embedded in {tile} px tiles that stay inside their block; "
                   "logistic regression, C = {C}; the test sample is class-balanced, so read "
                   "balanced accuracy and macro F1. Spectral baseline: each pixel's standardised "
                   "log spectrum, no network.")

    def _run(self, ctx: Context, encoders: dict, seed: int,
             baseline: bool) -> dict[str, list[dict]]:
        from ..evaluate.pixel_probe import RAW, pixel_probe

        recs = pixel_probe(ctx.source, encoders, per_class=self.per_class,
                           test_per_class=self.test_per_class, seeds=[seed],
                           raw_baseline=baseline, C=self.C, tile=self.tile)
        out: dict[str, list[dict]] = {}
        for r in recs:
            model = SPECTRAL if r["model"] == RAW else r["model"]
            out.setdefault(model, []).extend(_records(
                self.tables[0], model, seed, "labelled pixels", 1.0, r, CLASS_METRICS,
                n_train=r["n_train"]))
        return out



@register_evaluation
class Segmentation(Evaluation):
    """U-Net land-cover segmentation at the plan's label fractions (evaluate/segment)."""

    name = "segmentation"
    title = "Land-cover segmentation"
    tables = ("Segmentation: fine-tuned U-Net", "Segmentation: frozen encoder, linear probe")
    shown_metrics = ("miou", "pixel_accuracy")
    fraction_tables = True
    fraction_label = "labelled training pixels used, in whole tiles (%)"
    settings = ("tile_size", "steps", "batch_size", "lr", "backbone_lr_factor", "probe_steps")
    tile_size, steps, batch_size, lr, backbone_lr_factor, probe_steps = 32, 20, 16, 1e-3, 0.1, 100
    quick = {"steps": 10, "probe_steps": 50}
    description = ("OSM land-use map of the scene in {tile_size} px tiles; label fractions are "
                   "shares of the west block's labelled pixels taken as whole tiles (seeded); "
                   "mIoU over the classes present in the east block. Fine-tuned: U-Net on the "
                   "encoder (a dense checkpoint keeps its decoder), {steps} AdamW steps of "
                   "batch {batch_size}, lr {lr}, pretrained encoders at {backbone_lr_factor} x lr. "
                   "Linear probe: frozen encoder, 1x1 convolutions on every feature scale, "
                   "{probe_steps} steps.")
    KINDS = {"finetune": 0, "linear": 1}

    def applies(self, run: RunInfo) -> str | None:
        if _is_bandwise(run):
            return ("band-wise encoder (1- or 3-channel backbone run on each band): the U-Net "
                    "takes the whole band stack at once")
        return None

    def _run(self, ctx: Context, specs, seed: int) -> dict[str, list[dict]]:
        from ..evaluate.segment import evaluate_segmentation

        recs = evaluate_segmentation(
            ctx.source, specs, fractions=ctx.plan.fractions, seeds=[seed],
            tile_size=self.tile_size, steps=self.steps, batch_size=self.batch_size, lr=self.lr,
            backbone_lr_factor=self.backbone_lr_factor, linear_probe=True,
            probe_steps=self.probe_steps)
        out: dict[str, list[dict]] = {}
        for r in recs:
            table = self.tables[self.KINDS[r["kind"]]]
            out.setdefault(r["model"], []).extend(_records(
                table, r["model"], seed, f"{r['fraction']:.0%} labels", r["fraction"], r,
                ("miou", "pixel_accuracy"), tiles=r["tiles"],
                labelled_share=r["labelled_share"]))
        return out

    def references(self, ctx: Context, seed: int) -> dict[str, list[dict]]:
        from ..evaluate.segment import ModelSpec

        return self._run(ctx, [ModelSpec(RANDOM, _random(ctx, seed))], seed)

    def evaluate(self, ctx: Context, run: RunInfo) -> list[dict]:
        from ..evaluate.segment import specs_from_checkpoints

        specs = specs_from_checkpoints({run.method: str(run.checkpoint)}, random=False)
        return self._run(ctx, specs, run.seed)[run.method]


@register_evaluation
class Regression(_OneCallEvaluation):
    """Class-share regression on the scene (evaluate/regress): ridge and fine-tuned heads."""

    name = "regression"
    title = "Regression (OSM class shares per patch)"
    tables = ("Class-share regression",)
    shown_metrics = ("mean_r2", "mean_rmse")
    lower_is_better = ("mean_rmse",)
    settings = ("patch_size", "min_labelled", "epochs", "lr")
    patch_size, min_labelled, epochs, lr = 16, 0.5, 3, 1e-3
    quick = {"epochs": 1}
    description = ("Targets: the share of each of the 8 OSM classes in each {patch_size} px patch "
                   "with >= {min_labelled:.0%} labelled pixels; west block train, east block test. "
                   "Ridge on standardised frozen features (alpha per target by leave-one-out "
                   "CV), and the encoder fine-tuned with a linear head (epochs = {epochs}, lr "
                   "{lr}, backbone at 0.1 x lr, MSE on standardised targets). Mean R² over the "
                   "targets (higher is better); mean RMSE (lower is better).")
    HEADS = {"ridge": ("ridge (frozen)", 0), "finetune": ("fine-tuned", 1)}

    def _data(self, ctx: Context):
        from ..evaluate.regress import class_share_patches

        return ctx.cached(("class-share", self.patch_size, self.min_labelled), lambda: tuple(
            class_share_patches(ctx.source, s, self.patch_size, self.min_labelled)
            for s in ("train", "test")))

    def _run(self, ctx: Context, encoders: dict, seed: int, baseline: bool) -> dict:
        from ..evaluate.regress import compare_regression

        train, test = self._data(ctx)
        recs = compare_regression(train, test, encoders, seeds=[seed], spectral=baseline,
                                  finetune=True, epochs=self.epochs, lr=self.lr)
        out: dict[str, list[dict]] = {}
        for r in recs:
            column, order = self.HEADS[r["head"]]
            out.setdefault(r["model"], []).extend(_records(
                self.tables[0], r["model"], seed, column, order, r, ("mean_r2", "mean_rmse"),
                n_train=r["n_train"], n_test=r["n_test"], r2=r["r2"]))
        return out



@register_evaluation
class MultiLabel(_OneCallEvaluation):
    """BigEarthNet v2 multi-label probe and fine-tuning (evaluate/multilabel)."""

    name = "multilabel"
    title = "Multi-label land cover (BigEarthNet v2 sample)"
    tables = ("Multi-label (BigEarthNet v2 sample)",)
    shown_metrics = ("micro_map", "macro_map", "micro_f1")
    settings = ("size", "epochs", "lr", "batch_size")
    size, epochs, lr, batch_size = 120, 3, 1e-3, 8
    quick = {"epochs": 1}
    description = ("The real BigEarthNet v2 patches shipped with configilm (S2 L2A, {size} px, 19 "
                   "classes): train + validation splits (16 patches) train, the test split (8) "
                   "scores. Linear probe: one logistic regression per class on frozen features; "
                   "fine-tuned: encoder + linear head, BCE, epochs = {epochs}, batch "
                   "{batch_size}, lr {lr}. Bands the encoder needs but L2A lacks (B10) are fed "
                   "the encoder's training mean. Micro mAP first. With 8 test patches these "
                   "numbers are a smoke test of the multi-label path, not a ranking.")
    HEADS = {"linear": ("linear probe", 0), "finetune": ("fine-tuned", 1)}
    METRICS = ("micro_map", "macro_map", "micro_f1", "macro_f1")

    def _data(self, ctx: Context):
        from torch.utils.data import ConcatDataset

        from ..data import samples
        from ..data.bigearthnet import BigEarthNetV2

        def build():
            root = samples.bigearthnet_dir(ctx.cache)
            parts = [BigEarthNetV2(root, split=s, size=self.size) for s in ("train", "validation")]
            return ConcatDataset(parts), BigEarthNetV2(root, split="test", size=self.size)

        return ctx.cached(("bigearthnet", self.size), build)

    @staticmethod
    def _fit(encoder, bands):
        """The encoder on L2A bands: by name or stand-in, else the missing ones filled."""
        fitted = encoder.for_bands(bands)
        return fitted, fitted.architecture().get("filled", [])

    def _run(self, ctx: Context, encoders: dict, seed: int, baseline: bool) -> dict:
        from ..evaluate.multilabel import compare_multilabel

        train, test = self._data(ctx)
        fitted, filled = {}, {}
        for name, enc in encoders.items():
            fitted[name], filled[name] = self._fit(enc, test.band_names)
        recs = compare_multilabel(train, test, fitted, class_names=test.classes, seeds=[seed],
                                  spectral=baseline, finetune=True, epochs=self.epochs,
                                  lr=self.lr, batch_size=self.batch_size)
        out: dict[str, list[dict]] = {}
        for r in recs:
            column, order = self.HEADS[r["head"]]
            out.setdefault(r["model"], []).extend(_records(
                self.tables[0], r["model"], seed, column, order, r, self.METRICS,
                n_train=r["n_train"], n_test=r["n_test"],
                filled_bands=filled.get(r["model"], [])))
        return out

    def _encoder(self, ctx: Context, run: RunInfo):
        from ..checkpoint import load_encoder

        return load_encoder(run.checkpoint)  # _run fits it to the L2A bands itself


@register_evaluation
class ColorizationEnsemble(Evaluation):
    """The colorization paper's RGB + spectral ensemble (evaluate/ensemble.run_ensemble)."""

    name = "ensemble"
    title = "Colorization ensemble (RGB + spectral classifiers)"
    tables = ("RGB + spectral ensemble",)
    shown_metrics = ("accuracy", "balanced_accuracy")
    comparisons = (("ensemble", "rgb"), ("ensemble", "spectral"))
    settings = ("epochs", "lr", "batch_size", "saliency_patches")
    epochs, lr, batch_size, saliency_patches = 6, 1e-3, 32, 4
    quick = {"epochs": 2}
    description = ("Two classifiers fine-tuned on the west-block 16 px patches (epochs = {epochs}, "
                   "AdamW lr {lr}, batch {batch_size}): 'spectral' starts from the colorization "
                   "encoder (non-visible bands only), 'rgb' sees B04, B03, B02 from random weights "
                   "(no ImageNet file offline); 'ensemble' averages their logits. The claim under "
                   "test: the ensemble beats both members. Saliency (gradient x input) of both "
                   "members on {saliency_patches} test patches, first seed.")

    def applies(self, run: RunInfo) -> str | None:
        if not _is_colorization(run.method):
            return ("needs a colorization encoder (it is the spectral member, which must not "
                    "see the visible bands)")
        return None

    def evaluate(self, ctx: Context, run: RunInfo) -> list[dict]:
        from ..checkpoint import load_encoder
        from ..evaluate.ensemble import run_ensemble

        tr, te = ctx.patches("train"), ctx.patches("test")
        first = run.seed == ctx.first_seed
        sal = ctx.figure_path(f"ensemble-saliency-{run.method}.png") if first else None
        res = run_ensemble(tr, te, load_encoder(run.checkpoint), stats=ctx.source.stats(),
                           seeds=[run.seed], epochs=self.epochs, lr=self.lr,
                           batch_size=self.batch_size, saliency_path=sal,
                           saliency_patches=self.saliency_patches)
        out = []
        for r in res.records:
            out += _records(self.tables[0], r["model"], run.seed, "100% labels", 1.0, r,
                            CLASS_METRICS, n_test=r["n_test"], encoder=run.method,
                            rgb_init=res.rgb_init)
        if res.saliency_path:
            shrink_png(res.saliency_path)
            out.append(_figure(ctx, self.name, run.method, run.seed, res.saliency_path,
                               f"{run.method}: saliency of the RGB and the spectral member "
                               f"(seed {run.seed}, east-block patches)"))
        return out


@register_evaluation
class PerBand(Evaluation):
    """RS-BYOL's per-band table: the frozen band-wise encoder fed one band at a time."""

    name = "per-band"
    title = "Per-band linear probe (band-wise encoders)"
    tables = ("Per-band linear probe",)
    shown_metrics = ("accuracy", "balanced_accuracy")
    finding_columns = ("all used bands",)
    settings = ("C", "fraction", "bands")
    C, fraction = 1.0, 1.0
    bands: tuple[str, ...] | None = None   # None: every pool band the scene has
    description = ("The frozen band-wise encoder sees ONE band of the 16 px patches at a time "
                   "(columns); logistic regression (C = {C}, {fraction:.0%} of the west-block "
                   "patches), scored on the east block. 'all used bands': the encoder's mean "
                   "embedding over every pool band the scene has. Spectral baseline: the band's "
                   "own mean and std of log reflectance; random init: the same band-wise "
                   "architecture with random weights (computed with each run, since it must "
                   "share the run's band pool).")

    def protocol(self, params: dict | None = None) -> str:
        p = {**self.params(), **(params or {})}
        text = self.description.format(C=_param(p["C"]), fraction=float(p["fraction"]))
        if p.get("bands"):
            text += f" Bands probed: {_show(p['bands'])}."
        return text

    def applies(self, run: RunInfo) -> str | None:
        if not _is_bandwise(run):
            return ("not a band-wise encoder: it takes all bands at once, so it cannot be fed "
                    "one band alone")
        return None

    def evaluate(self, ctx: Context, run: RunInfo) -> list[dict]:
        from ..checkpoint import load_encoder
        from ..evaluate import perband

        tr, te = ctx.patches("train"), ctx.patches("test")
        recs = perband.per_band_probe(tr, te, {run.method: load_encoder(run.checkpoint)},
                                      bands=list(self.bands) if self.bands else None,
                                      fraction=self.fraction, seeds=[run.seed], C=self.C,
                                      random_seed=run.seed)
        bands = list(dict.fromkeys(r["band"] for r in recs if r["band"] != perband.ALL))
        out = []
        for r in recs:
            model = {perband.SPECTRAL: SPECTRAL}.get(r["model"], r["model"])
            order = len(bands) if r["band"] == perband.ALL else bands.index(r["band"])
            out += _records(self.tables[0], model, run.seed, r["band"], order, r,
                            CLASS_METRICS, encoder=run.method)
        return out

    def figures(self, records: list[dict], root: Path) -> list[tuple[Path, str]]:
        """The heat map (bands x models) of the mean accuracy over seeds."""
        from ..evaluate.perband import plot_per_band

        recs = [r for r in records if r["table"] == self.tables[0] and r["metric"] == "accuracy"
                and r["value"] is not None]
        if not recs:
            return []
        cells: dict[tuple, list] = {}
        for r in recs:
            cells.setdefault((r["column"], r["model"]), []).append(r["value"])
        order = {r["column"]: r["order"] for r in recs}
        mean = [{"band": b, "model": m, "accuracy": float(np.mean(v))}
                for (b, m), v in sorted(cells.items(), key=lambda kv: order[kv[0][0]])]
        seeds = sorted({r["seed"] for r in recs})
        path = plot_per_band(mean, root / FIGURES / "per-band-heatmap.png",
                             title="Per-band linear probe: accuracy, mean over seeds "
                                   + ", ".join(map(str, seeds)))
        return [(shrink_png(path), "Per-band linear probe as a heat map (accuracy, mean over "
                                   "seeds)")]


@register_evaluation
class Pictures(Evaluation):
    """Pictures of what an encoder learned that a table cannot show: the colorization
    encoder's predicted colours and the dense U-Net's pixel embeddings."""

    name = "pictures"
    title = "Pictures of the pretext tasks"
    settings = ("patches", "map_side")
    patches, map_side = 4, 768
    description = ("Drawn from the first seed's checkpoint: colorization, {patches} east-block "
                   "patches (true RGB | true L + predicted a,b | a,b error); dense, the first "
                   "three principal components of the U-Net's pixel embeddings of the central "
                   "{map_side} px of the scene, beside true colour and the OSM map.")

    def applies(self, run: RunInfo) -> str | None:
        if not (_is_colorization(run.method) or _is_dense(run.method)):
            return "no picture for this method (only colorization and dense draw one)"
        if self.plan is not None and run.seed != self.plan.seeds[0]:
            return "pictures are drawn for the first seed only"
        return None

    def evaluate(self, ctx: Context, run: RunInfo) -> list[dict]:
        if ctx.root is None:
            from ..errors import ConfigError

            raise ConfigError("pictures need a benchmark folder to be written into")
        if _is_colorization(run.method):
            return [self._colour(ctx, run)]
        return [self._dense_map(ctx, run)]

    def _colour(self, ctx: Context, run: RunInfo) -> dict:
        from ..checkpoint import load_method
        from ..data.datasets import SpatialSplit

        model = load_method(run.checkpoint)
        cols = SpatialSplit(gap=int(model.hparams.crop_size)).columns(
            "test", ctx.source.scenes[0].width)
        path = ctx.figure_path(f"colorization-{run.method}.png")
        model.picture(ctx.source, path, seed=run.seed, patches=self.patches, region=cols)
        return _figure(ctx, self.name, run.method, run.seed, shrink_png(path),
                       f"{run.method}: predicted vs true colour on test-area patches (seed "
                       f"{run.seed})", replaces="colorization.png")

    def _dense_map(self, ctx: Context, run: RunInfo) -> dict:
        from ..checkpoint import load_method

        path = ctx.figure_path(f"dense-map-{run.method}.png")
        load_method(run.checkpoint).picture(ctx.source, path, max_side=self.map_side)
        return _figure(ctx, self.name, run.method, run.seed, shrink_png(path),
                       f"{run.method}: PCA of the pixel embeddings (seed {run.seed})",
                       replaces="embedding_pca.png")


def available_evaluations() -> list[str]:
    return list(EVALUATIONS)
