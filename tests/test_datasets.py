"""Readers and datasets on the real Sentinel-2 sample scene."""

import shutil

import numpy as np
import pytest
import rasterio

from eossl.data import readers
from eossl.data.datasets import (IGNORE_INDEX, OSM_CLASSES, DenseLabelTiles, LabelledPatches,
                                 RandomCropDataset, SpatialSplit)
from eossl.errors import ConfigError, DataError


def test_scene_stack_resamples_all_bands_to_10m(brandenburg, sample_cache):
    scene = brandenburg.scenes[0]
    assert scene.shape == (13, 768, 1536)
    assert scene.bands[0] == "B01" and scene.bands[-1] == "B12" and "B10" in scene.bands
    with rasterio.open(scene.path) as src:
        assert src.res == (10.0, 10.0) and src.crs.to_epsg() == 32633
        assert src.descriptions[3] == "B04"
    # the 60 m band B01 upsampled: its stack mean matches the native file's mean closely
    native = next((sample_cache / "samples").rglob("*_B01.jp2"))
    with rasterio.open(native) as src:
        assert abs(src.read(1).mean() - scene.load()[0].mean()) / src.read(1).mean() < 0.01
    # second call hits the cache: same file, no rewrite
    again = readers.stacked_scene(native.parent.parent, sample_cache)
    assert again.path == scene.path


def test_random_crops_shape_finite_and_seeded(brandenburg):
    ds = RandomCropDataset(brandenburg.scenes, size=32, length=50, seed=3)
    a, b = ds[7]["image"], ds[7]["image"]
    assert a.shape == (13, 32, 32) and a.dtype.is_floating_point
    assert np.isfinite(a.numpy()).all() and (a > 0).all()
    assert (a == b).all() and not (ds[8]["image"] == a).all()


def test_crop_larger_than_scene_is_refused(brandenburg):
    with pytest.raises(ConfigError, match="larger than scene"):
        RandomCropDataset(brandenburg.scenes, size=1000, length=10)


def test_label_map_and_patch_counts(brandenburg):
    lm = brandenburg.label_map()
    assert lm.shape == (768, 1536)
    labelled = (lm != IGNORE_INDEX).mean()
    assert 0.28 < labelled < 0.34  # data.md: about 31% of pixels labelled
    tr, te = brandenburg.patches("train"), brandenburg.patches("test")
    assert 400 < len(tr) + len(te) < 600  # data.md: about 500 patches at 80% majority
    counts = tr.class_counts()
    assert max(counts, key=counts.get) in ("farm", "meadow")
    assert set(np.unique(tr.labels)) <= set(range(len(OSM_CLASSES)))
    # majority rule: every kept patch's class covers >= 80% of its pixels
    for (r, c), y in list(zip(tr.corners, tr.labels))[:50]:
        assert (lm[r:r + 16, c:c + 16] == y).mean() >= 0.8


def test_folds_keep_train_patches_a_patch_away_from_test_patches(brandenburg):
    folds = brandenburg.folds(16)
    assert len(folds) == 5
    for f in folds:
        te = np.array(f.test.corners)
        for r, c in f.train.corners:  # Chebyshev distance between patch boxes >= 16 px
            gap = np.maximum(np.maximum(te[:, 0] - (r + 16), r - (te[:, 0] + 16)),
                             np.maximum(te[:, 1] - (c + 16), c - (te[:, 1] + 16)))
            assert gap.min() >= 16
    # every labelled patch tests in exactly one fold
    tests = [set(map(tuple, f.test.corners)) for f in folds]
    assert sum(len(t) for t in tests) == len(set().union(*tests))
    legacy = brandenburg.patches("test", spatial_split=SpatialSplit())
    assert min(c for _, c in legacy.corners) >= SpatialSplit().border(1536) + 16


def test_dense_tiles_masks(brandenburg):
    tiles = DenseLabelTiles(brandenburg.scenes[0], brandenburg.label_map(), split="test", size=64)
    s = tiles[0]
    assert s["image"].shape == (13, 64, 64) and s["mask"].shape == (64, 64)
    vals = set(np.unique(s["mask"].numpy()))
    assert vals <= set(range(len(OSM_CLASSES))) | {IGNORE_INDEX}


def test_label_map_on_other_grid_is_refused(brandenburg):
    with pytest.raises(DataError, match="does not match the scene grid"):
        LabelledPatches(brandenburg.scenes[0], np.zeros((10, 10), np.uint8))


def test_split_options_validated():
    with pytest.raises(ConfigError):
        SpatialSplit(train_fraction=1.5)
    with pytest.raises(ConfigError, match="unknown split"):
        SpatialSplit().columns("validation", 100)


def test_folder_without_imagery(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="holds no imagery"):
        readers.find_band_files(tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        readers.find_band_files(tmp_path / "missing")


def test_truncated_band_file_names_the_file(sample_cache, tmp_path):
    src = next((sample_cache / "samples").rglob("IMG_DATA"))
    for f in src.iterdir():
        shutil.copy(f, tmp_path / f.name)
    victim = next(tmp_path.glob("*_B03.jp2"))
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError) as e:
        readers.stacked_scene(tmp_path, tmp_path / "cache")
    assert "_B03.jp2" in str(e.value)
    assert not list((tmp_path / "cache").rglob("*.tif"))  # nothing half-written left behind


def test_missing_band_file_is_named(sample_cache, tmp_path):
    src = next((sample_cache / "samples").rglob("IMG_DATA"))
    for f in src.iterdir():
        if not f.name.endswith("_B8A.jp2"):
            shutil.copy(f, tmp_path / f.name)
    with pytest.raises(DataError, match="B8A"):
        readers.stacked_scene(tmp_path, tmp_path / "cache")
