"""Shared fixtures: the REAL sample data, fetched once by eossl's own code and cached.

The cache is the user's cache ($EOSSL_CACHE or ~/.cache/eossl), so repeated test runs and the
demo share one download.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from eossl.data import samples


@pytest.fixture(scope="session")
def sample_cache() -> Path:
    cache = samples.cache_dir()
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
