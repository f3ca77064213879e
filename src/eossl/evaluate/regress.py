"""Regression downstream: frozen-feature (ridge) and fine-tuned heads, RMSE and R^2 per target.

The paper's regression task (soil P, K, Mg, pH from hyperspectral patches) needs data that
cannot be reached here, so the built-in task is its stand-in on the real scene: per ``size`` px
patch, the share of each OSM class in the rasterised label map (8 targets in [0, 1]), with the
spatial split (west block train, east block test). A user's own task is one option away:
:func:`read_target_table` reads a CSV or Parquet table of patch -> targets.

Patch ids: a patch is named by the ``row`` and ``col`` of its TOP-LEFT pixel on the scene's
pixel grid (0-based, row down, col right), and covers ``[row, row + size) x [col, col + size)``.
Any position is allowed (not only multiples of ``size``). Ids outside the scene or on nodata
pixels are a DataError naming them. A ``split`` column (train/test) is honoured; without it a
patch goes to the block of the spatial split it lies wholly inside, and patches straddling the
border (or inside the gap) are left out and counted.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.datasets import IGNORE_INDEX, OSM_CLASSES, SpatialSplit, patch_grid
from ..errors import ConfigError, DataError
from .probe import single_blas_thread

ID_COLUMNS = ("row", "col")
SPLIT_COLUMN = "split"
RIDGE_ALPHAS = tuple(np.logspace(-2, 5, 15))


class RegressionPatches(Dataset):
    """Patches of a scene with a vector of targets each: ``{"image": raw (C, s, s),
    "label": float32 (T,)}``; ``corners`` are the (row, col) ids."""

    def __init__(self, scene, corners: Sequence[tuple[int, int]], targets: np.ndarray,
                 target_names: Sequence[str], size: int) -> None:
        targets = np.asarray(targets, dtype=np.float32)
        if targets.ndim != 2 or len(targets) != len(corners):
            raise DataError(f"targets of shape {targets.shape} do not match {len(corners)} "
                            "patches; expected (patches, targets)")
        self.scene, self.size = scene, int(size)
        self.corners = [(int(r), int(c)) for r, c in corners]
        self.targets, self.target_names = targets, [str(t) for t in target_names]

    @property
    def bands(self) -> list[str]:
        return self.scene.bands

    def __len__(self) -> int:
        return len(self.corners)

    def __getitem__(self, i: int) -> dict:
        r, c = self.corners[i]
        img = self.scene.read((r, c, self.size, self.size))
        return {"image": torch.from_numpy(np.ascontiguousarray(img)),
                "label": torch.from_numpy(self.targets[i])}

    def images(self) -> np.ndarray:
        return np.stack([self.scene.read((r, c, self.size, self.size)) for r, c in self.corners])


# --------------------------------------------------------------------------------------------
# Targets


def class_share_patches(source, split: str, size: int = 16, min_labelled: float = 0.5,
                        spatial_split: SpatialSplit | None = None,
                        classes: Sequence[str] = OSM_CLASSES) -> RegressionPatches:
    """The built-in task: share of each class in each ``size`` px patch of a block.

    Shares are over ALL pixels of the patch (unlabelled pixels count for no class), and only
    patches with at least ``min_labelled`` labelled pixels and no nodata are kept, so a
    target of 0 means "labelled as something else", not "unknown".
    """
    if not 0 <= min_labelled <= 1:
        raise ConfigError(f"min_labelled must be in [0, 1], got {min_labelled}")
    scene, label_map = source.scenes[0], source.label_map()
    sp = spatial_split or SpatialSplit(gap=size)
    cols = sp.columns(split, scene.width)
    scene.load()
    n = len(classes)
    corners, targets = [], []
    for r, c in patch_grid(scene.height, scene.width, size, cols):
        lab = label_map[r:r + size, c:c + size].ravel()
        labelled = lab[lab < n]
        if labelled.size < min_labelled * lab.size or labelled.size == 0:
            continue
        if not scene.valid_mask((r, c, size, size)).all():
            continue
        corners.append((r, c))
        targets.append(np.bincount(labelled, minlength=n) / lab.size)
    if not corners:
        raise DataError(f"no {size}px patch in the {split} block has >= {min_labelled:.0%} "
                        "labelled pixels; lower min_labelled")
    return RegressionPatches(scene, corners, np.asarray(targets), classes, size)


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
                      spatial_split: SpatialSplit | None = None
                      ) -> tuple[RegressionPatches, RegressionPatches, dict]:
    """(train, test, info) from a user's table of patch ids (``row``, ``col``) -> targets.

    ``targets`` names the target columns (default: every numeric column but the ids and
    ``split``). ``info`` says how many patches were left out for straddling the split.
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
        sp = spatial_split or SpatialSplit(gap=size)
        tr0, tr1 = sp.columns("train", W)
        te0, te1 = sp.columns("test", W)
        split = np.where((colsv >= tr0) & (colsv + size <= tr1), "train",
                         np.where((colsv >= te0) & (colsv + size <= te1), "test", "none"))
        straddle = int((split == "none").sum())
    parts = []
    for name in ("train", "test"):
        sel = np.flatnonzero(split == name)
        if len(sel) == 0:
            raise DataError(f"{path}: no patch falls in the {name} block (west "
                            f"{SpatialSplit().train_fraction:.0%} of the columns trains, the "
                            "rest tests); add a 'split' column or patches on both sides")
        parts.append(RegressionPatches(scene, [ids[i] for i in sel], Y[sel], names, size))
    return parts[0], parts[1], {"left_out_straddling": straddle, "targets": [str(n) for n in
                                                                             names]}


def _fmt(ids, k: int = 5) -> str:
    more = f" and {len(ids) - k} more" if len(ids) > k else ""
    return ", ".join(f"({r}, {c})" for r, c in ids[:k]) + more


# --------------------------------------------------------------------------------------------
# Metrics and heads


def regression_metrics(y_true, y_pred, target_names: Sequence[str]) -> dict:
    """RMSE and R^2 per target plus their means. R^2 is None for a target that is constant
    on the evaluation set (undefined), and such targets are left out of the mean R^2."""
    from sklearn.metrics import mean_squared_error, r2_score

    yt, yp = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    if yt.ndim == 1:
        yt, yp = yt[:, None], yp[:, None]
    if yt.shape != yp.shape or yt.shape[1] != len(target_names):
        raise DataError(f"y_true {yt.shape} and y_pred {yp.shape} must both be (N, "
                        f"{len(target_names)})")
    if len(yt) == 0:
        raise DataError("cannot score an empty evaluation set")
    rmse = np.sqrt(mean_squared_error(yt, yp, multioutput="raw_values"))
    r2 = r2_score(yt, yp, multioutput="raw_values")
    const = yt.std(axis=0) == 0
    r2_list = [None if k else float(v) for v, k in zip(r2, const)]
    defined = [v for v in r2_list if v is not None]
    return {"rmse": {n: float(v) for n, v in zip(target_names, rmse)},
            "r2": dict(zip(map(str, target_names), r2_list)),
            "mean_rmse": float(rmse.mean()),
            "mean_r2": float(np.mean(defined)) if defined else None}


def ridge_head(train_X, train_Y, test_X, alphas: Sequence[float] = RIDGE_ALPHAS) -> np.ndarray:
    """Frozen-feature head: standardised features -> ridge, one alpha per target chosen by
    efficient leave-one-out CV on the training block only."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, Xt = np.asarray(train_X, np.float64), np.asarray(test_X, np.float64)
    if X.ndim != 2 or Xt.ndim != 2 or X.shape[1] != Xt.shape[1]:
        raise DataError(f"train features {X.shape} and test features {Xt.shape} must be (N, D) "
                        "with the same D")
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=list(alphas), alpha_per_target=True))
    with single_blas_thread():
        model.fit(X, np.asarray(train_Y, np.float64))
    return model.predict(Xt).reshape(len(Xt), -1)


def _augment(x: torch.Tensor) -> torch.Tensor:
    """Random flips and 90-degree rotations: label-preserving for class shares."""
    if torch.rand(()) < 0.5:
        x = x.flip(-1)
    return torch.rot90(x, int(torch.randint(0, 4, ())), dims=(-2, -1))


def finetune_head(encoder: nn.Module, train: Dataset, test: Dataset, *, epochs: int = 10,
                  lr: float = 1e-3, backbone_lr_factor: float = 0.1, batch_size: int = 64,
                  weight_decay: float = 1e-4, seed: int = 0, loss: str = "mse",
                  out_dim: int | None = None, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Fine-tune a copy of ``encoder`` + a linear head; returns (test predictions, test labels).

    The backbone learns at ``backbone_lr_factor`` x ``lr`` (methods.md: a smaller backbone
    learning rate). ``loss="mse"`` regresses targets standardised on the training set;
    ``loss="bce"`` trains multi-label logits (returns probabilities). The encoder passed in is
    not modified.
    """
    if epochs < 1 or lr <= 0 or batch_size < 1:
        raise ConfigError(f"fine-tune: need epochs >= 1, lr > 0 and batch_size >= 1; got "
                          f"{epochs}, {lr}, {batch_size}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        enc = copy.deepcopy(encoder).to(device).train()
        first = train[0]["label"]
        t = int(out_dim or torch.as_tensor(first).numel())
        head = nn.Linear(enc.out_dim, t).to(device)
        ys = torch.stack([torch.as_tensor(train[i]["label"]).float() for i in range(len(train))])
        mu = ys.mean(0) if loss == "mse" else torch.zeros(t)
        sd = ys.std(0).clamp_min(1e-6) if loss == "mse" and len(ys) > 1 else torch.ones(t)
        opt = torch.optim.AdamW([{"params": enc.parameters(), "lr": lr * backbone_lr_factor},
                                 {"params": head.parameters(), "lr": lr}],
                                weight_decay=weight_decay)
        steps = epochs * max(1, -(-len(train) // batch_size))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        gen = torch.Generator().manual_seed(seed)
        loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen,
                            drop_last=len(train) > batch_size)
        for _ in range(epochs):
            for batch in loader:
                x = _augment(batch["image"].to(device))
                y = batch["label"].float().to(device)
                out = head(enc(x))
                if loss == "mse":
                    err = F.mse_loss(out, (y - mu.to(device)) / sd.to(device))
                else:
                    err = F.binary_cross_entropy_with_logits(out, y)
                opt.zero_grad()
                err.backward()
                opt.step()
                sched.step()
        enc.eval()
        preds, labels = [], []
        with torch.inference_mode():
            for batch in DataLoader(test, batch_size=256):
                out = head(enc(batch["image"].to(device))).cpu()
                preds.append(out * sd + mu if loss == "mse" else torch.sigmoid(out))
                labels.append(torch.as_tensor(batch["label"]).float())
    return torch.cat(preds).numpy(), torch.cat(labels).numpy()


def features(encoder: nn.Module, ds: Dataset) -> np.ndarray:
    from .probe import extract_features

    X, _ = extract_features(encoder, ds)
    return X


def compare_regression(train: RegressionPatches, test: RegressionPatches,
                       encoders: Mapping[str, nn.Module], *, seeds: Sequence[int] = (0, 1, 2),
                       spectral: bool = True, finetune: bool = True, epochs: int = 10,
                       lr: float = 1e-3, log_flags: Sequence[bool] | None = None) -> list[dict]:
    """Records for the spectral baseline (ridge), each encoder's ridge head (deterministic:
    one record) and each encoder fine-tuned (one record per seed)."""
    from ..normalization import default_log_flags
    from .probe import spectral_features

    names = train.target_names
    if test.target_names != names:
        raise DataError(f"train targets {names} differ from test targets {test.target_names}")
    records = []

    def add(model, head, seed, pred):
        m = regression_metrics(test.targets, pred, names)
        records.append({"model": model, "head": head, "seed": seed, "n_train": len(train),
                        "n_test": len(test), **m})

    if spectral:
        from .compare import SPECTRAL

        flags = log_flags or default_log_flags(train.bands)
        s_tr = spectral_features(train.images(), flags)
        s_te = spectral_features(test.images(), flags)
        add(SPECTRAL, "ridge", None, ridge_head(s_tr, train.targets, s_te))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for name, enc in encoders.items():
            add(name, "ridge", None, ridge_head(features(enc, train), train.targets,
                                                features(enc, test)))
            if finetune:
                for seed in seeds:
                    pred, _ = finetune_head(enc, train, test, epochs=epochs, lr=lr, seed=seed)
                    add(name, "finetune", int(seed), pred)
    return records


def regression_table(records: Sequence[dict]) -> str:
    """Markdown: one row per (model, head), mean R^2 and RMSE (mean ± std over seeds), then
    R^2 per target."""
    import pandas as pd

    if not records:
        return "_no regression results_\n"
    targets = list(records[0]["r2"])
    rows = []
    df = pd.DataFrame(records)
    for (model, head), g in df.groupby(["model", "head"], sort=False):
        def cell(values):
            v = [x for x in values if x is not None]
            if not v:
                return "–"
            return f"{np.mean(v):.3f}" + (f" ± {np.std(v, ddof=1):.3f}" if len(v) > 1 else "")
        per_t = [cell([r[t] for r in g["r2"]]) for t in targets]
        rows.append(f"| {model} | {head} | {len(g)} | {cell(g['mean_r2'])} | "
                    f"{cell(g['mean_rmse'])} | " + " | ".join(per_t) + " |")
    head = ("| model | head | seeds | mean R² | mean RMSE | " + " | ".join(f"R² {t}" for t in
                                                                           targets) + " |")
    return "\n".join([head, "|---" * (5 + len(targets)) + "|", *rows]) + "\n"


__all__ = ["ID_COLUMNS", "RegressionPatches", "class_share_patches", "read_target_table",
           "regression_metrics", "ridge_head", "finetune_head", "compare_regression",
           "regression_table", "IGNORE_INDEX"]
