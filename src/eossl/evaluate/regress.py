"""Regression downstream: frozen-feature (ridge) and fine-tuned heads, RMSE and R^2 per target.

The paper's regression task (soil P, K, Mg, pH from hyperspectral patches) needs data that
cannot be reached here, so the built-in task is its stand-in on the real scene: per ``size`` px
patch, the share of each OSM class in the rasterised label map (8 targets in [0, 1]), on every
spatial fold. A user's own task is one option away: :func:`read_target_table` reads a CSV or
Parquet table of patch -> targets.

Patch ids: a patch is named by the ``row`` and ``col`` of its TOP-LEFT pixel on the scene's
pixel grid (0-based, row down, col right), and covers ``[row, row + size) x [col, col + size)``.
Any position is allowed (not only multiples of ``size``). Ids outside the scene or on nodata
pixels are a DataError naming them. A ``split`` column (train/test) is honoured; without it a
patch goes to the fold area it lies wholly inside, and patches straddling the border (or inside
the gap) are left out and counted.

Validity: features are standardised with FeatureScaler (a feature active on one training patch
must not dominate a test prediction) and predictions are clipped to the targets' bounds (class
shares: [0, 1]; a user's targets: the training range), so R^2 measures the head's skill, not an
extrapolation accident.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.datasets import IGNORE_INDEX, LabelledPatches
from ..data.splits import SpatialKFold, SpatialSplit
from ..errors import ConfigError, DataError
from ..normalization import default_log_flags
from . import results as R
from .base import Context, Evaluation, register_evaluation
from .features import FeatureScaler, frozen_features, layer_title, spectral_features
from .finetune import PatchNet, epochs_to_steps, fit, predict
from .metrics import regression_metrics
from .probe import single_blas_thread

ID_COLUMNS = ("row", "col")
SPLIT_COLUMN = "split"
RIDGE_ALPHAS = tuple(np.logspace(-2, 5, 15))


class TargetSet(Dataset):
    """Images with a vector of targets each: ``{"image": raw (C, s, s), "label": float32
    (T,)}``. ``images`` is any data set of ``{"image": ...}`` items with an ``images()`` method
    and ``bands``; ``bounds`` the range the targets can take (None: unbounded)."""

    def __init__(self, images, targets: np.ndarray, target_names: Sequence[str],
                 bounds: tuple[float, float] | None = None) -> None:
        targets = np.asarray(targets, dtype=np.float32)
        if targets.ndim != 2 or len(targets) != len(images):
            raise DataError(f"targets of shape {targets.shape} do not match {len(images)} "
                            "images; expected (images, targets)")
        self.patches, self.bounds = images, bounds
        self.targets, self.target_names = targets, [str(t) for t in target_names]
        self.bands = list(images.bands)

    @property
    def labels(self) -> np.ndarray:
        return self.targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.patches[i]["image"], "label": torch.from_numpy(self.targets[i])}

    def images(self) -> np.ndarray:
        return self.patches.images()


class RegressionPatches(TargetSet):
    """Patches of scenes with targets. ``items`` are (scene index, row, col) of each patch's
    top-left pixel; the patches are read as classification patches are (nodata filled the
    same way)."""

    def __init__(self, scenes, items: Sequence[tuple[int, int, int]], targets: np.ndarray,
                 target_names: Sequence[str], size: int,
                 bounds: tuple[float, float] | None = None) -> None:
        patches = LabelledPatches(scenes, size=int(size),
                                  items=[(k, r, c, 0) for k, r, c in items])
        super().__init__(patches, targets, target_names, bounds)
        self.scenes, self.size, self.corners = patches.scenes, int(size), patches.corners
        self.items = [it[:3] for it in patches.items]


def chip_targets(chips) -> TargetSet:
    """A regression chip set (a chip table or torchgeo data set with numeric targets)."""
    return TargetSet(chips, np.asarray(chips.labels, dtype=np.float32), chips.classes)


# --------------------------------------------------------------------------------------------
# Targets


def _inside(mask: np.ndarray, r: int, c: int, size: int) -> bool:
    return bool(mask[r:r + size, c:c + size].all())


def class_share_patches(source, areas: Sequence[np.ndarray], size: int = 16,
                        min_labelled: float = 0.5) -> RegressionPatches:
    """The built-in task: share of each class in each ``size`` px patch of a grid that lies
    wholly inside ``areas[i]`` (scene i's mask of a fold's training or test area).

    Shares are over ALL pixels of the patch (unlabelled pixels count for no class), and only
    patches with at least ``min_labelled`` labelled pixels and no nodata are kept, so a
    target of 0 means "labelled as something else", not "unknown".
    """
    if not 0 <= min_labelled <= 1:
        raise ConfigError(f"min_labelled must be in [0, 1], got {min_labelled}")
    classes = list(source.classes)
    n = len(classes)
    items, targets = [], []
    for k, (scene, label_map, area) in enumerate(zip(source.scenes, source.label_maps(),
                                                     areas)):
        valid = scene.valid_map()
        for r in range(0, scene.height - size + 1, size):
            for c in range(0, scene.width - size + 1, size):
                if not _inside(area, r, c, size) or not valid[r:r + size, c:c + size].all():
                    continue
                lab = label_map[r:r + size, c:c + size].ravel()
                labelled = lab[lab < n]
                if labelled.size < min_labelled * lab.size or labelled.size == 0:
                    continue
                items.append((k, r, c))
                targets.append(np.bincount(labelled, minlength=n) / lab.size)
    if not items:
        raise DataError(f"no {size}px patch of this fold area has >= {min_labelled:.0%} "
                        "labelled pixels; lower min_labelled")
    return RegressionPatches(source.scenes, items, np.asarray(targets), classes, size,
                             bounds=(0, 1))


def _read_table(path: Path):
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{path}: no such file; expected a CSV or Parquet table of patch "
                        "targets")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except Exception as e:  # pandas/pyarrow raise many types; all mean "unreadable"
        raise DataError(f"{path}: cannot read as {'Parquet' if 'parq' in path.suffix else 'CSV'}"
                        f" ({str(e).splitlines()[0][:160]})") from None


def read_target_table(path: str | Path, scene, size: int = 16,
                      targets: Sequence[str] | None = None,
                      areas: tuple[np.ndarray, np.ndarray] | None = None
                      ) -> tuple[RegressionPatches, RegressionPatches, dict]:
    """(train, test, info) from a user's table of patch ids (``row``, ``col`` on ``scene``'s
    grid) -> targets.

    ``targets`` names the target columns (default: every numeric column but the ids and
    ``split``). A ``split`` column (train/test) decides; without one, a patch trains or tests
    when it lies wholly inside ``areas`` = (training mask, test mask) of a spatial fold (default:
    the west 60% / east 40% blocks). ``info`` says how many patches were left out for
    straddling the areas, and whether the table had its own split.
    """
    path = Path(path)
    df = _read_table(path)
    cols = {str(c).lower(): c for c in df.columns}
    missing = [c for c in ID_COLUMNS if c not in cols]
    if missing:
        raise DataError(f"{path}: no {', '.join(missing)} column(s); a patch is named by the row "
                        f"and col of its top-left pixel. Columns found: "
                        f"{', '.join(map(str, df.columns))}")
    rc = df[[cols["row"], cols["col"]]]
    if rc.isna().any().any() or not all(np.all(np.asarray(rc[c], float) % 1 == 0)
                                        for c in rc.columns):
        raise DataError(f"{path}: row/col must be whole pixel numbers (the top-left pixel of "
                        "each patch)")
    rows = rc.iloc[:, 0].to_numpy(np.int64)
    colsv = rc.iloc[:, 1].to_numpy(np.int64)
    skip = {cols["row"], cols["col"], cols.get(SPLIT_COLUMN)}
    if targets is None:
        names = [c for c in df.columns if c not in skip and np.issubdtype(df[c].dtype, np.number)]
    else:
        names = [cols.get(str(t).lower()) for t in targets]
        bad = [t for t, n in zip(targets, names) if n is None]
        if bad:
            raise DataError(f"{path}: target column(s) {', '.join(map(str, bad))} not found; "
                            f"columns are {', '.join(map(str, df.columns))}")
    if not names:
        raise DataError(f"{path}: no numeric target column besides row/col")
    Y = df[names].to_numpy(dtype=np.float64)
    if not np.isfinite(Y).all():
        bad_rows = np.flatnonzero(~np.isfinite(Y).all(axis=1))
        raise DataError(f"{path}: targets are missing or not finite in table row(s) "
                        f"{', '.join(map(str, bad_rows[:5] + 2))} (counting the header as 1)")
    ids = list(zip(rows.tolist(), colsv.tolist()))
    seen, dups = set(), []
    for i in ids:
        if i in seen:
            dups.append(i)
        seen.add(i)
    if dups:
        raise DataError(f"{path}: patch id(s) listed twice: {_fmt(dups)}")
    H, W = scene.height, scene.width
    outside = [(r, c) for r, c in ids if r < 0 or c < 0 or r + size > H or c + size > W]
    if outside:
        raise DataError(f"{path}: {len(outside)} patch id(s) do not match the imagery "
                        f"{Path(scene.path).name} ({H} x {W} px, patch size {size}): "
                        f"{_fmt(outside)} (row, col of the top-left pixel; valid rows "
                        f"0..{H - size}, cols 0..{W - size})")
    scene.load()
    nodata = [(r, c) for r, c in ids if not scene.valid_mask((r, c, size, size)).all()]
    if nodata:
        raise DataError(f"{path}: {len(nodata)} patch id(s) lie on nodata pixels of "
                        f"{Path(scene.path).name}: {_fmt(nodata)}")
    if SPLIT_COLUMN in cols:
        split = df[cols[SPLIT_COLUMN]].astype(str).str.lower().to_numpy()
        odd = sorted(set(split) - {"train", "test"})
        if odd:
            raise DataError(f"{path}: split column holds {', '.join(odd[:5])}; expected "
                            "'train' or 'test'")
        straddle = 0
    else:
        if areas is None:
            fa = SpatialSplit(gap=size).folds(scene.height, scene.width)[0]
            areas = (fa.train, fa.test)
        split = np.array(["train" if _inside(areas[0], r, c, size) else
                          "test" if _inside(areas[1], r, c, size) else "none"
                          for r, c in ids])
        straddle = int((split == "none").sum())
    parts = []
    for name in ("train", "test"):
        sel = np.flatnonzero(split == name)
        if len(sel) == 0:
            raise DataError(f"{path}: no patch falls in the {name} area of the spatial fold; "
                            "add a 'split' column (train/test) or patches on both sides")
        parts.append(RegressionPatches(scene, [(0, *ids[i]) for i in sel], Y[sel], names,
                                       size))
    return parts[0], parts[1], {"left_out_straddling": straddle, "own_split": SPLIT_COLUMN in
                                cols, "targets": [str(n) for n in names]}


def _fmt(ids, k: int = 5) -> str:
    more = f" and {len(ids) - k} more" if len(ids) > k else ""
    return ", ".join(f"({r}, {c})" for r, c in ids[:k]) + more


# --------------------------------------------------------------------------------------------
# Heads


def ridge_head(train_X, train_Y, test_X, alphas: Sequence[float] = RIDGE_ALPHAS,
               bounds: tuple[float, float] | None = None) -> np.ndarray:
    """Frozen-feature head: FeatureScaler -> ridge, one alpha per target chosen by efficient
    leave-one-out CV on the training set only. Predictions are clipped to ``bounds`` (default:
    each target's training range)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline

    X, Xt = np.asarray(train_X, np.float64), np.asarray(test_X, np.float64)
    Y = np.asarray(train_Y, np.float64)
    if X.ndim != 2 or Xt.ndim != 2 or X.shape[1] != Xt.shape[1]:
        raise DataError(f"train features {X.shape} and test features {Xt.shape} must be (N, D) "
                        "with the same D")
    model = make_pipeline(FeatureScaler(), RidgeCV(alphas=list(alphas), alpha_per_target=True))
    with single_blas_thread():
        model.fit(X, Y)
    return clip_targets(model.predict(Xt).reshape(len(Xt), -1), Y.reshape(len(Y), -1), bounds)


def clip_targets(pred: np.ndarray, train_Y: np.ndarray,
                 bounds: tuple[float, float] | None) -> np.ndarray:
    """Predictions clipped to the targets' bounds, or to each target's training range."""
    if bounds is not None:
        return np.clip(pred, bounds[0], bounds[1])
    return np.clip(pred, train_Y.min(axis=0), train_Y.max(axis=0))


class _Standardised(Dataset):
    """Targets standardised with the training mean and std (what the fine-tuned head fits)."""

    def __init__(self, data: RegressionPatches, mean: np.ndarray, std: np.ndarray) -> None:
        self.data = data
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.std = torch.as_tensor(std, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        item = self.data[i]
        return {"image": item["image"], "label": (item["label"] - self.mean) / self.std}


def finetune_regression(encoder, train: RegressionPatches, test: RegressionPatches, *,
                        epochs: int = 10, lr: float = 1e-3, backbone_lr_scale: float = 0.1,
                        batch_size: int = 64, seed: int = 0,
                        accelerator: str = "cpu") -> np.ndarray:
    """A copy of ``encoder`` + a linear head fine-tuned on standardised targets (MSE);
    returns the test predictions, de-standardised and clipped."""
    Y = train.targets.astype(np.float64)
    mean, std = Y.mean(0), np.maximum(Y.std(0), 1e-6)
    net = PatchNet(copy.deepcopy(encoder), Y.shape[1])
    fit(net, _Standardised(train, mean, std), "mse",
        steps=epochs_to_steps(epochs, len(train), batch_size), batch_size=batch_size, lr=lr,
        backbone_lr_scale=backbone_lr_scale, seed=seed, accelerator=accelerator)
    outs, _ = predict(net, test)
    pred = torch.cat(outs).numpy() * std + mean
    return clip_targets(pred, Y, train.bounds)


# --------------------------------------------------------------------------------------------
# The evaluation

METRICS = ("mean_r2", "mean_rmse")


@register_evaluation("regress", position=50)
class Regression(Evaluation):
    """Ridge on frozen features (each layer) and a fine-tuned head, per fold."""

    title = "Regression"
    shown_metrics, lower_is_better = METRICS, ("mean_rmse",)
    settings = dict(patch_size=16, min_labelled=0.5, layers=("last", "multiscale"), epochs=3,
                    lr=1e-3, backbone_lr_scale=0.1, batch_size=64, finetune=True)
    quick = {"epochs": 1}
    description = ("{task}. Ridge on frozen features standardised on the training patches "
                   "(features active on too few of them dropped, a variance floor), alpha per "
                   "target by leave-one-out CV on the training patches, for the layers "
                   "{layers}{finetuned}. Predictions are clipped to {bounds}. Mean R² over the "
                   "targets "
                   "the test patches vary in (R² of a target whose test variance is under 5% "
                   "of its training variance is undefined and left out; higher is better); "
                   "mean RMSE (lower is better). Spectral baseline: ridge on each patch's "
                   "per-band mean and std of log reflectance.")

    def protocol(self) -> str:
        table, chips = getattr(self, "_table_name", None), getattr(self, "_chip_targets", None)
        task = (f"Targets from the table {table}" if table else
                f"Targets: chip targets {', '.join(chips)}" if chips else
                f"Targets: the share of each of the 8 OSM classes in each {self.patch_size} px "
                f"patch with >= {self.min_labelled:.0%} labelled pixels")
        finetuned = ("; and the encoder fine-tuned with a linear head (about {epochs} epochs of "
                     "batch {batch_size}, lr {lr}, a pretrained encoder at {backbone_lr_scale} x "
                     "lr, a random twin at lr; MSE on standardised targets)".format(
                         **self.params()) if self.finetune else "; no fine-tuning")
        return self.description.format(**{**self.params(), "layers": ", ".join(
            layer_title(x) for x in self.layers)}, task=task, finetuned=finetuned, bounds=(
            "the training range of each target" if table or chips else "[0, 1]"))

    def _data(self, ctx: Context) -> list[tuple[int, object, object]]:
        """(fold, train, test) per fold: a user's table, a regression chip set, or the class
        shares of a labelled scene."""
        table = ctx.options.get("table")
        self._table_name = table

        def build():
            src = ctx.source
            if table:
                return self._table_folds(src, table, ctx.options.get("targets"))
            if src.task == "regression":
                self._chip_targets = [str(c) for c in src.classes]
                return [(f.index, chip_targets(f.train), chip_targets(f.test))
                        for f in src.folds()]
            out = []
            for fold in ctx.area_folds(self.patch_size):
                tr, te = (class_share_patches(src, areas, self.patch_size, self.min_labelled)
                          for areas in (fold.train, fold.test))
                out.append((fold.index, tr, te))
            return out

        return ctx.cached(("regression", table, self.patch_size, self.min_labelled), build)

    def _table_folds(self, source, table, targets) -> list:
        """A table with its own split column is one fold; otherwise every fold of the
        source's split (spatial k-fold blocks when the imagery has no labels)."""
        scene = source.scenes[0]
        tr, te, info = read_target_table(table, scene, self.patch_size, targets)
        if info["own_split"]:
            return [(0, tr, te)]
        split = source.split if source.labels is not None else SpatialKFold()
        out = []
        for fa in split.with_gap(self.patch_size).folds(scene.height, scene.width):
            tr, te, _ = read_target_table(table, scene, self.patch_size, targets,
                                          areas=(fa.train, fa.test))
            out.append((fa.index, tr, te))
        return out

    def _score(self, name, seed, fold, column, order, train, test, pred) -> list[dict]:
        m = regression_metrics(test.targets, pred, train.target_names,
                               train_std=train.targets.std(axis=0))
        return self.rec(self.tables[0], name, seed, fold, column, order, m, METRICS,
                        n_train=len(train), n_test=len(test), r2=m["r2"],
                        r2_undefined=m["r2_undefined"])

    def baseline(self, ctx: Context, seed: int) -> list[dict]:
        out = []
        for fold, tr, te in ctx.track(self._data(ctx)):
            flags = default_log_flags(tr.bands)
            pred = ridge_head(spectral_features(tr.images(), flags), tr.targets,
                              spectral_features(te.images(), flags), bounds=tr.bounds)
            for i, layer in enumerate(self.layers):
                out += self._score(R.SPECTRAL, seed, fold, f"ridge, {layer_title(layer)}", i,
                                   tr, te, pred)
        return out

    def run(self, ctx: Context, encoders: Mapping, seed: int) -> list[dict]:
        from .classify import _accelerator

        out = []
        for fold, tr, te in ctx.track(self._data(ctx)):
            for name, enc in encoders.items():
                enc = self.fed(name, enc, tr.bands)
                f_tr = frozen_features(enc, tr, device=ctx.device)
                f_te = frozen_features(enc, te, device=ctx.device)
                for i, layer in enumerate(self.layers):
                    pred = ridge_head(f_tr.layer(layer), tr.targets, f_te.layer(layer),
                                      bounds=tr.bounds)
                    out += self._score(name, seed, fold, f"ridge, {layer_title(layer)}", i,
                                       tr, te, pred)
                if not self.finetune:
                    continue
                pred = finetune_regression(
                    enc, tr, te, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                    backbone_lr_scale=1.0 if enc.is_random_twin else self.backbone_lr_scale,
                    seed=seed, accelerator=_accelerator(ctx))
                out += self._score(name, seed, fold, "fine-tuned", len(self.layers), tr, te,
                                   pred)
        return out


__all__ = ["ID_COLUMNS", "RegressionPatches", "TargetSet", "chip_targets", "class_share_patches", "read_target_table",
           "regression_metrics", "ridge_head", "finetune_regression", "Regression",
           "IGNORE_INDEX"]
