"""The folds every evaluation runs on, taken from the data source's split (eossl.data.splits:
spatial k-fold blocks by default, or the split the user gave with ``--split``).

An evaluation never picks its own split: it asks for the folds of its data and reports each
cell as a mean and confidence interval over folds (and seeds). Three kinds:

- :func:`patch_folds`: labelled patches or chips (probes, fine-tuning, multi-label);
- :func:`area_folds`: boolean (H, W) masks per scene of where training and test pixels may
  lie (pixel probe, class-share regression);
- :func:`tile_folds`: dense label tiles (segmentation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class AreaFold:
    """One fold on every scene: ``train[i]`` / ``test[i]`` are scene i's masks; a patch or
    tile may be used for training only if it lies wholly inside ``train``, for testing only if
    wholly inside ``test`` (the split's gap already applied)."""

    index: int
    train: list[np.ndarray]
    test: list[np.ndarray]


def patch_folds(source, size: int = 16) -> list:
    """The labelled-patch folds of a source (``PatchFold(index, train, test)``)."""
    return source.folds(size)


def area_folds(source, gap: int = 16) -> list[AreaFold]:
    """The pixel-mask folds of a scene source, every scene's masks per fold."""
    per_scene = [source.fold_areas(i, gap=gap) for i in range(len(source.scenes))]
    out = []
    for j, first in enumerate(per_scene[0]):
        out.append(AreaFold(first.index, [areas[j].train for areas in per_scene],
                            [areas[j].test for areas in per_scene]))
    return out


def tile_folds(source, size: int) -> list[tuple]:
    """(train, test) dense label tiles of ``size`` px per fold, every tile with a label."""
    return source.dense_folds(size, min_labelled=1e-9)


def describe_folds(source=None) -> str:
    """One sentence for reports: the split the folds come from, and whether pretraining on
    that source saw the test areas."""
    if source is None:
        return "the split of the evaluation data (see each section)"
    return source.split_note
