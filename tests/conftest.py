"""Shared fixtures: the REAL sample data, fetched once by eossl's own code and cached.

The cache is the user's cache ($EOSSL_CACHE or ~/.cache/eossl), so repeated test runs and the
demo share one download.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest-xdist worker per core: one thread each (torch's OpenMP and
    # the BLAS pools, also in the processes a test starts), or the workers' pools oversubscribe
    # the cores. Set before torch and numpy are imported: they read it once.
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import numpy as np
import pytest

from eossl.data import samples


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` (pytest-xdist workers share the user's cache: one
    fetches the samples, the others wait, then find them complete)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def sample_cache() -> Path:
    cache = samples.cache_dir()
    with _locked(cache / ".fetch.lock"):
        samples.fetch_all(cache)
    return cache


@pytest.fixture(scope="session")
def landsat_dir(sample_cache) -> Path:
    return samples.landsat_series_dir(sample_cache)


@pytest.fixture(scope="session")
def ben_dir(sample_cache) -> Path:
    return samples.bigearthnet_dir(sample_cache)


@pytest.fixture(scope="session")
def brandenburg(sample_cache):
    """The real S2 scene as a SceneSource (stack cached, label map rasterised once)."""
    from eossl.data.sources import brandenburg as open_brandenburg

    src = open_brandenburg(sample_cache)
    src.label_map()
    return src


SAR_STATS = {"VV": (-12.0, 4.0, -22.0, -3.0), "VH": (-19.0, 4.0, -30.0, -10.0)}


@pytest.fixture(scope="session")
def tiny_checkpoints(brandenburg, tmp_path_factory) -> dict:
    """One untrained checkpoint per registered method, written as pretraining writes them
    (eossl metadata, state dict, hyperparameters), on the real scene's bands and statistics;
    a method that refuses those bands (RS-BYOL's pool takes radar) also gets Sentinel-1 VV, VH.
    {method: path}."""
    import torch

    from eossl.errors import ConfigError
    from eossl.methods import available_methods, get_method
    from eossl.normalization import BandStats

    s2 = brandenburg.stats()
    sar = BandStats(list(SAR_STATS), *[[v[i] for v in SAR_STATS.values()] for i in range(4)],
                    log=[False, False])
    both = BandStats(s2.bands + sar.bands, *[getattr(s2, k) + getattr(sar, k) for k in
                                             ("mean", "std", "q02", "q98", "log")], s2.count)
    root = tmp_path_factory.mktemp("tiny-checkpoints")
    out = {}
    for name in available_methods():
        torch.manual_seed(12345)  # not a seed the tests draw random twins with
        try:
            model = get_method(name)(bands=s2.bands, stats=s2.to_dict(), crop_size=32)
        except ConfigError:
            model = get_method(name)(bands=both.bands, stats=both.to_dict(), crop_size=32)
        out[name] = root / f"{name}.ckpt"
        torch.save({"eossl": model.eossl_metadata(), "state_dict": model.state_dict(),
                    "hyper_parameters": dict(model.hparams)}, out[name])
    return out


def benchmark_script(name: str):
    """A script of benchmarks/ imported as a module (benchmarks/ is no package), for the tests
    of its tables and plots."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def first_fold_context(*args, **kw):
    """An evaluation Context on the real data whose folds (patches, areas, tiles) are cut to
    the first one: a whole evaluation at a test's cost (the k-fold logic is tested in
    test_splits; mean and CI over folds in test_summary)."""
    from eossl.evaluate.base import Context

    class FirstFold(Context):
        def patch_folds(self, size=16):
            return super().patch_folds(size)[:1]

        def area_folds(self, gap=16):
            return super().area_folds(gap)[:1]

        def tile_folds(self, size):
            return super().tile_folds(size)[:1]

    return FirstFold(*args, **kw)


# ------------------------------------------------------------------ evaluations at a test's cost
SMALL_FOLDS = 2              # folds kept (two: the mean and spread over folds still run)
SMALL_PATCHES = (48, 32)     # labelled patches kept per fold: train, test (a seeded sample)
SMALL_TILES = (8, 4)         # segmentation tiles kept per fold: train, test (evenly spread)
SMALL_CHIP_SIDE = 32         # chips (BigEarthNet's are 120 px) cut to their central 32 px


def _sample_patches(ds, n: int | None):
    """A seeded sample of ``n`` patches of a LabelledPatches set (None, or other sets: all)."""
    from eossl.data.datasets import LabelledPatches

    if n is None or not isinstance(ds, LabelledPatches) or len(ds) <= n:
        return ds
    idx = np.sort(np.random.default_rng(0).choice(len(ds), size=n, replace=False))
    return LabelledPatches(ds.scenes, size=ds.size, classes=ds.classes,
                           items=[ds.items[i] for i in idx])


def _spread_tiles(ds, n: int):
    """``n`` tiles spread evenly over a tile set (a copy: the fold's own set stays whole)."""
    out = copy.copy(ds)
    out.items = ds.items[:: max(1, len(ds.items) // n)][:n]
    return out


def _thinned(mask: np.ndarray, block: int = 64, every: int = 4) -> np.ndarray:
    """A sixteenth of an area: one 64 px block in every 4 x 4, spread over the scene (so it
    still holds labels of several classes)."""
    rows = (np.arange(mask.shape[0]) // block % every == 0)[:, None]
    cols = (np.arange(mask.shape[1]) // block % every == 0)[None, :]
    return mask & rows & cols


def shrink_evaluation_data(mp: pytest.MonkeyPatch, patches=SMALL_PATCHES) -> None:
    """Make every evaluation Context (also those the CLI, the demo and the benchmark build)
    see less of the real data: the first two folds, each a seeded sample of its labelled
    patches (``patches``: train, test; None keeps them all) and a few of its tiles; the first
    area fold with its training area thinned to a sixteenth; chips cut to their centre. A
    whole evaluation, every code path of it, at a test's cost: the k-fold logic is tested in
    test_splits, mean and CI over folds in test_summary, and the evaluations' own tests check
    their numbers on whole folds (first_fold_context above: one whole fold)."""
    from eossl.data.chips import ChipDataset
    from eossl.data.sources import PatchFold
    from eossl.evaluate.base import Context
    from eossl.evaluate.folds import AreaFold

    patch_folds, area_folds, tile_folds = (Context.patch_folds, Context.area_folds,
                                           Context.tile_folds)
    read_chip = ChipDataset._read

    def small_patch_folds(self, size=16):
        return self.cached(("small-patch-folds", size, patches), lambda: [
            PatchFold(f.index, _sample_patches(f.train, patches[0]),
                      _sample_patches(f.test, patches[1]))
            for f in patch_folds(self, size)[:SMALL_FOLDS]])

    def small_area_folds(self, gap=16):
        return self.cached(("small-area-folds", gap), lambda: [
            AreaFold(f.index, [_thinned(m) for m in f.train], f.test)
            for f in area_folds(self, gap)[:1]])

    def small_tile_folds(self, size):
        return self.cached(("small-tile-folds", size), lambda: [
            (_spread_tiles(tr, SMALL_TILES[0]), _spread_tiles(te, SMALL_TILES[1]))
            for tr, te in tile_folds(self, size)[:SMALL_FOLDS]])

    def centre_of_chip(self, k):
        a = read_chip(self, k)
        h, w = a.shape[-2:]
        r, c = max(0, (h - SMALL_CHIP_SIDE) // 2), max(0, (w - SMALL_CHIP_SIDE) // 2)
        return np.ascontiguousarray(a[..., r:r + SMALL_CHIP_SIDE, c:c + SMALL_CHIP_SIDE])

    mp.setattr(Context, "patch_folds", small_patch_folds)
    mp.setattr(Context, "area_folds", small_area_folds)
    mp.setattr(Context, "tile_folds", small_tile_folds)
    mp.setattr(ChipDataset, "_read", centre_of_chip)


@pytest.fixture
def small_evaluations(monkeypatch):
    """Evaluations in this test run on less of the real data (shrink_evaluation_data)."""
    shrink_evaluation_data(monkeypatch)
