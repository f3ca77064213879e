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
