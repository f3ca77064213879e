"""Train/test splits of a labelled scene, as areas on its pixel grid.

Neighbouring patches of one scene are nearly copies of each other, so a random split of
patches scores memory, not generalisation: every split here is spatial. A split turns a scene
grid (and its label map) into :class:`FoldArea` masks; a patch or tile may train only if it
lies wholly in ``train`` and test only if wholly in ``test``, and ``train`` already keeps
``gap`` px away from ``test``.

Pretraining and the test areas: self-supervised pretraining on the very pixels a probe is
later scored on flatters the probe, so pretraining excludes the *evaluation region* by
default (:meth:`SceneSplit.pretraining_mask`). With k-fold blocks every labelled block is a
test block of some fold, so :class:`SpatialKFold` deals its folds over a seeded share
(``eval_share``) of the blocks that hold labels; the other blocks (labelled or not) are left to
pretraining, and probes may still train on them. See docs/data.md.

Splits:

- :class:`SpatialKFold` (the default for scene labels): square blocks dealt into k folds.
- :class:`SpatialSplit`: the legacy west block / east block split (cross-region transfer).
- :class:`ColumnSplit`: a column of the label file says train / test (or a fold number).
- :class:`AreaSplit`: a polygon file of test areas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, DataError

IGNORE = 255  # unlabelled pixels in label maps (datasets.IGNORE_INDEX)


@dataclass
class FoldArea:
    """One fold on one scene grid: boolean (H, W) masks of where training and test patches
    may lie (the gap already applied)."""

    index: int
    train: np.ndarray
    test: np.ndarray


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    """``mask`` grown by ``px`` pixels in every direction (a square neighbourhood)."""
    if px <= 0 or not mask.any():
        return mask.copy()
    from scipy.ndimage import maximum_filter

    return maximum_filter(mask.astype(np.uint8), size=2 * int(px) + 1, mode="constant") > 0


def inside(mask: np.ndarray, size: int) -> np.ndarray:
    """(H - size + 1, W - size + 1) bool: whether the ``size`` px window with that top-left
    corner lies wholly inside ``mask`` (a summed-area table, so any number of windows is
    O(H W))."""
    h, w = mask.shape
    if size > h or size > w:
        return np.zeros((max(h - size + 1, 0), max(w - size + 1, 0)), bool)
    sat = np.zeros((h + 1, w + 1), np.int64)
    sat[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1)
    s = sat[size:, size:] - sat[:-size, size:] - sat[size:, :-size] + sat[:-size, :-size]
    return s == size * size


class SceneSplit:
    """Base class: how a labelled scene is divided into training and test areas."""

    gap: int = 16
    description: str = ""

    def spec(self) -> dict:
        """Plain JSON, enough to rebuild the split (:func:`split_from_spec`)."""
        raise NotImplementedError

    def folds(self, height: int, width: int, label_map: np.ndarray | None = None
              ) -> list[FoldArea]:
        raise NotImplementedError

    def evaluation_region(self, height: int, width: int, label_map: np.ndarray | None = None
                          ) -> np.ndarray:
        """Every pixel some fold tests on."""
        region = np.zeros((height, width), bool)
        for f in self.folds(height, width, label_map):
            region |= f.test
        return region

    def pretraining_mask(self, height: int, width: int, label_map: np.ndarray | None = None
                         ) -> np.ndarray | None:
        """Where pretraining crops may lie when test areas are excluded: everything ``gap``
        px or more away from the evaluation region."""
        return ~dilate(self.evaluation_region(height, width, label_map), self.gap)

    def with_gap(self, gap: int) -> "SceneSplit":
        """The same split with another gap (evaluations widen it to their patch size)."""
        spec = dict(self.spec(), gap=int(gap))
        return split_from_spec(spec)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description})"


def _check_gap(gap) -> int:
    try:
        gap = int(gap)
    except (TypeError, ValueError):
        raise ConfigError(f"split gap must be a whole number of pixels, got {gap!r}") from None
    if gap < 0:
        raise ConfigError(f"split gap must be >= 0 px, got {gap}")
    return gap


class SpatialKFold(SceneSplit):
    """Square blocks of ``block`` px dealt into ``k`` folds over the evaluation region.

    The evaluation region is a seeded ``eval_share`` of the blocks that hold labels (at least
    ``k``; all of them with ``eval_share=1``). Fold i tests on its blocks and trains on every
    pixel at least ``gap`` px away from them (other folds' blocks and the rest of the scene).
    Blocks are dealt largest-labelled-first to the fold with the fewest labelled pixels, so
    folds hold similar amounts of labels.
    """

    def __init__(self, k: int = 5, block: int | str | None = None, gap: int = 16,
                 seed: int = 0, eval_share: float = 0.5) -> None:
        try:
            self.k, self.seed = int(k), int(seed)
            self.block = None if block in (None, "auto") else int(block)
            self.eval_share = float(eval_share)
        except (TypeError, ValueError):
            raise ConfigError(f"kfold split: k, block, seed must be integers and eval_share a "
                              f"number, got k={k!r}, block={block!r}, seed={seed!r}, "
                              f"eval_share={eval_share!r}") from None
        if self.k < 2:
            raise ConfigError(f"kfold split needs k >= 2 folds, got {self.k}")
        if self.block is not None and self.block < 8:
            raise ConfigError(f"kfold split: block must be >= 8 px, got {self.block}")
        if not 0 < self.eval_share <= 1:
            raise ConfigError(f"kfold split: eval_share must be in (0, 1], got "
                              f"{self.eval_share}")
        self.gap = _check_gap(gap)
        share = "" if self.eval_share >= 1 else f" over {self.eval_share:.0%} of the labelled blocks"
        size = f"{self.block} px" if self.block else "up to 128 px"
        self.description = (f"spatial {self.k}-fold blocks of {size}{share}, gap "
                            f"{self.gap} px, seed {self.seed}")
        self._cache: dict = {}

    def spec(self) -> dict:
        return {"kind": "kfold", "k": self.k, "block": self.block or "auto", "gap": self.gap,
                "seed": self.seed, "eval_share": self.eval_share}

    def _blocks(self, height: int, width: int, label_map: np.ndarray | None):
        """(block ids per pixel (H, W), fold of each block (-1 = not evaluated))."""
        key = (height, width, None if label_map is None else hash(label_map.tobytes()))
        if key in self._cache:
            return self._cache[key]
        b = self.block_size(height, width)
        nr, nc = -(-height // b), -(-width // b)
        ids = (np.arange(height)[:, None] // b) * nc + (np.arange(width)[None, :] // b)
        if label_map is None:
            counts = np.full(nr * nc, 1, np.int64)
        else:
            if label_map.shape != (height, width):
                raise DataError(f"label map of shape {label_map.shape} does not match the "
                                f"scene grid {(height, width)}")
            counts = np.bincount(ids[label_map != IGNORE].ravel(), minlength=nr * nc)
        labelled = np.flatnonzero(counts > 0)
        if len(labelled) < self.k:
            raise DataError(
                f"the {self.k}-fold split needs at least {self.k} blocks of {b} px holding "
                f"labels; the labels touch {len(labelled)} of the {nr * nc} blocks; use smaller "
                f"blocks or fewer folds (--split kfold:k=3,block={max(8, b // 2)})")
        rng = np.random.default_rng(self.seed)
        n_eval = len(labelled) if self.eval_share >= 1 else max(
            self.k, int(round(self.eval_share * len(labelled))))
        chosen = rng.permutation(labelled)[:n_eval]
        # largest first (seeded order among equals), each to the fold with the fewest labels
        chosen = chosen[np.argsort(-counts[chosen], kind="stable")]
        fold_of = np.full(nr * nc, -1, np.int64)
        totals = np.zeros(self.k, np.int64)
        sizes = np.zeros(self.k, np.int64)
        for blk in chosen:
            f = int(np.lexsort((sizes, totals))[0])
            fold_of[blk] = f
            totals[f] += counts[blk]
            sizes[f] += 1
        self._cache[key] = (ids, fold_of)
        return ids, fold_of

    def with_gap(self, gap: int) -> "SpatialKFold":
        """The same blocks and folds, the train area kept ``gap`` px from the test blocks."""
        twin = type(self).__new__(type(self))
        twin.__dict__.update(self.__dict__)
        twin.gap = _check_gap(gap)
        twin._block_gap = getattr(self, "_block_gap", self.gap)
        return twin

    def block_size(self, height: int, width: int) -> int:
        """``block``, or (auto) 128 px, smaller on small scenes so that there are about 8
        blocks per fold: multiples of 16 px, at least 32 and at least twice the gap."""
        if self.block:
            return self.block
        fit = int(np.sqrt(height * width / (8 * self.k)) // 16 * 16)
        return int(min(128, max(32, 2 * getattr(self, "_block_gap", self.gap), fit)))

    def folds(self, height: int, width: int, label_map: np.ndarray | None = None
              ) -> list[FoldArea]:
        ids, fold_of = self._blocks(height, width, label_map)
        pix_fold = fold_of[ids]
        out = []
        for i in range(self.k):
            test = pix_fold == i
            out.append(FoldArea(i, ~dilate(test, self.gap), test))
        return out

    def evaluation_region(self, height, width, label_map=None) -> np.ndarray:
        ids, fold_of = self._blocks(height, width, label_map)
        return fold_of[ids] >= 0


class SpatialSplit(SceneSplit):
    """West block for training, east block for testing, ``gap`` px apart (one fold).

    ``train_side="east"`` mirrors it (train east, test west): the cross-region check of a
    model pretrained on one side only.
    """

    def __init__(self, train_fraction: float = 0.6, gap: int = 16, train_side: str = "west"
                 ) -> None:
        if not 0 < float(train_fraction) < 1:
            raise ConfigError(f"train_fraction must be in (0, 1), got {train_fraction}")
        if train_side not in ("west", "east"):
            raise ConfigError(f"train_side must be 'west' or 'east', got {train_side!r}")
        self.train_fraction, self.train_side = float(train_fraction), train_side
        self.gap = _check_gap(gap)
        test_side = "east" if train_side == "west" else "west"
        self.description = (f"{train_side} {self.train_fraction:.0%} trains, {test_side} "
                            f"block tests, gap {self.gap} px")

    def __eq__(self, other) -> bool:
        return isinstance(other, SpatialSplit) and self.spec() == other.spec()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.spec().items())))

    def spec(self) -> dict:
        return {"kind": "west-east", "train_fraction": self.train_fraction, "gap": self.gap,
                "train_side": self.train_side}

    def border(self, width: int) -> int:
        b = int(round(width * self.train_fraction))
        return b if self.train_side == "west" else width - b

    def columns(self, split: str, width: int) -> tuple[int, int]:
        """The column range [start, end) of a block."""
        b = self.border(width)
        if split not in ("train", "test"):
            raise ConfigError(f"unknown split {split!r}; expected 'train' or 'test'")
        if self.train_side == "east":
            return (b, width) if split == "train" else (0, max(b - self.gap, 0))
        if split == "train":
            return 0, b
        return min(b + self.gap, width), width

    def folds(self, height, width, label_map=None) -> list[FoldArea]:
        masks = {}
        for part in ("train", "test"):
            c0, c1 = self.columns(part, width)
            m = np.zeros((height, width), bool)
            m[:, c0:c1] = True
            masks[part] = m
        return [FoldArea(0, masks["train"], masks["test"])]

    def pretraining_mask(self, height, width, label_map=None) -> np.ndarray:
        return self.folds(height, width)[0].train


class MaskSplit(SceneSplit):
    """A split given as rasterised areas: ``test_maps`` (one bool (H, W) per fold, per scene)
    built by the source from a label-file column or a polygon file of test areas."""

    def __init__(self, kind: str, source: str, gap: int = 16) -> None:
        self.kind, self.source = kind, source
        self.gap = _check_gap(gap)
        self._maps: dict = {}

    def bind(self, height: int, width: int, tests: list[np.ndarray]) -> None:
        """The fold test areas of one scene grid (set by the data source)."""
        self._maps[(height, width)] = tests

    def _tests(self, height, width) -> list[np.ndarray]:
        if (height, width) not in self._maps:
            raise DataError(f"split {self.description}: no test areas on a {height} x {width} "
                            "grid; the data source binds them when it opens the labels")
        return self._maps[(height, width)]

    def folds(self, height, width, label_map=None) -> list[FoldArea]:
        return [FoldArea(i, ~dilate(t, self.gap), t)
                for i, t in enumerate(self._tests(height, width))]

    def with_gap(self, gap: int) -> "MaskSplit":
        twin = type(self).__new__(type(self))
        twin.__dict__.update(self.__dict__)
        twin.gap = _check_gap(gap)
        return twin


class ColumnSplit(MaskSplit):
    """A column of the label file says where each labelled feature belongs: ``train`` /
    ``test`` (one fold), or fold numbers 0..k-1 (k folds: fold i tests on the features marked
    i). Areas not covered by a test feature may train."""

    def __init__(self, column: str, gap: int = 16) -> None:
        super().__init__("column", column, gap)
        self.column = column
        self.description = f"user split: column {column!r} of the label file, gap {self.gap} px"

    def spec(self) -> dict:
        return {"kind": "column", "column": self.column, "gap": self.gap}


class AreaSplit(MaskSplit):
    """A polygon file of test areas: everything inside tests, everything ``gap`` px outside
    may train."""

    def __init__(self, path: str, gap: int = 16) -> None:
        super().__init__("areas", str(path), gap)
        self.path = str(path)
        self.description = f"user split: test areas of {self.path}, gap {self.gap} px"

    def spec(self) -> dict:
        return {"kind": "areas", "path": self.path, "gap": self.gap}


def split_from_spec(spec: dict) -> SceneSplit:
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind == "kfold":
        return SpatialKFold(**spec)
    if kind == "west-east":
        return SpatialSplit(**spec)
    if kind == "column":
        return ColumnSplit(spec["column"], spec.get("gap", 16))
    if kind == "areas":
        return AreaSplit(spec["path"], spec.get("gap", 16))
    raise ConfigError(f"unknown split kind {kind!r}; expected kfold, west-east, column or areas")


SPLIT_FORMS = ("kfold", "kfold:k=5,block=128,gap=16,seed=0,eval_share=0.5", "west-east",
               "column:NAME", "a polygon file of test areas")


def parse_split(text: str | dict | SceneSplit | None, gap: int = 16) -> SceneSplit:
    """``--split``: ``kfold`` (default), ``kfold:k=3,block=64``, ``kfold:5``, ``west-east``
    (``west-east:train_fraction=0.6,train_side=east``), ``column:NAME`` or a polygon file."""
    if isinstance(text, SceneSplit):
        return text
    if isinstance(text, dict):
        return split_from_spec(text)
    text = (text or "kfold").strip()
    head, _, rest = text.partition(":")
    kw: dict = {"gap": gap}
    if head in ("kfold", "west-east") and rest:
        for item in rest.split(","):
            key, eq, val = item.partition("=")
            if not eq and head == "kfold" and key.strip().isdigit():
                key, val = "k", key
            if not val.strip():
                raise ConfigError(f"--split {text}: expected KEY=VALUE items after ':', e.g. "
                                  "kfold:k=5,block=128")
            kw[key.strip()] = val.strip()
    try:
        if head == "kfold":
            bad = set(kw) - {"k", "block", "gap", "seed", "eval_share"}
            if bad:
                raise TypeError(", ".join(sorted(bad)))
            return SpatialKFold(**kw)
        if head in ("west-east", "westeast", "legacy"):
            bad = set(kw) - {"train_fraction", "gap", "train_side"}
            if bad:
                raise TypeError(", ".join(sorted(bad)))
            if "train_fraction" in kw:
                kw["train_fraction"] = float(kw["train_fraction"])
            return SpatialSplit(**kw)
    except TypeError as e:
        raise ConfigError(f"--split {text}: unknown setting(s) {e}; kfold takes k, block, gap, "
                          "seed, eval_share; west-east takes train_fraction, gap, "
                          "train_side") from None
    if head == "column":
        if not rest:
            raise ConfigError("--split column:NAME needs the column name")
        return ColumnSplit(rest, gap)
    from pathlib import Path

    if Path(text).is_file():
        return AreaSplit(text, gap)
    raise ConfigError(f"--split {text!r}: expected one of {', '.join(SPLIT_FORMS)} (no such "
                      "file either)")
