"""Spatial splits (data/splits.py) and what pretraining sees: k-fold blocks with a gap, the
legacy west/east split, user splits; the test areas stay out of pretraining by default."""

import json

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import box

from eossl.cli import main
from eossl.data.resolve import DataRequest, open_data
from eossl.data.splits import (AreaSplit, ColumnSplit, SpatialKFold, SpatialSplit, dilate,
                               parse_split, split_from_spec)
from eossl.errors import ConfigError, DataError
from userdata import landsat_like, own_labels


def no_water_patch():
    """landsat_like's quarter of the scene has no 16 px patch of open water: the patch folds
    leave the class out and say so."""
    return pytest.warns(UserWarning, match=r"left out\): open water")


def test_kfold_blocks_are_disjoint_gapped_and_seeded(brandenburg):
    lm = brandenburg._sample_map(0)
    sp = SpatialKFold(k=5, gap=16, seed=0)
    folds = sp.folds(*lm.shape, lm)
    tests = np.stack([f.test for f in folds])
    assert tests.sum(0).max() == 1  # a pixel tests in at most one fold
    assert np.array_equal(tests.any(0), sp.evaluation_region(*lm.shape, lm))
    for f in folds:
        assert f.test.any() and not (f.train & dilate(f.test, 16)).any()
    ids, fold_of = sp._blocks(*lm.shape, lm)
    have = np.bincount(ids[lm != 255].ravel(), minlength=fold_of.size) > 0
    assert abs((fold_of >= 0).sum() - 0.5 * have.sum()) <= 1 and (fold_of[~have] < 0).all()
    again = SpatialKFold(k=5, gap=16, seed=0).folds(*lm.shape, lm)
    other = SpatialKFold(k=5, gap=16, seed=1).folds(*lm.shape, lm)
    assert all(np.array_equal(a.test, b.test) for a, b in zip(folds, again))
    assert not all(np.array_equal(a.test, b.test) for a, b in zip(folds, other))
    # pretraining keeps a gap from every fold's test blocks
    mask = sp.pretraining_mask(*lm.shape, lm)
    assert not (mask & dilate(tests.any(0), 16)).any() and mask.mean() > 0.3


def test_split_forms_and_specs(tmp_path):
    assert parse_split(None).spec()["kind"] == "kfold"
    k = parse_split("kfold:k=3,block=64,seed=2")
    assert (k.k, k.block, k.seed) == (3, 64, 2) and parse_split("kfold:4").k == 4
    assert split_from_spec(k.spec()).spec() == k.spec()
    w = parse_split("west-east:train_fraction=0.7,train_side=east")
    assert isinstance(w, SpatialSplit) and w.train_side == "east"
    assert split_from_spec(w.spec()) == w
    assert isinstance(parse_split("column:fold"), ColumnSplit)
    (tmp_path / "t.gpkg").write_text("")
    assert isinstance(parse_split(str(tmp_path / "t.gpkg")), AreaSplit)
    for bad, msg in (("kfold:k=1", "k >= 2"), ("kfold:blocks=5", "unknown setting"),
                     ("random", "expected one of"), ("kfold:eval_share=0", "eval_share")):
        with pytest.raises(ConfigError, match=msg):
            parse_split(bad)


def test_legacy_west_east_split(brandenburg):
    src = open_data(DataRequest(data="brandenburg", split="west-east"))
    fold = src.folds(16)[0]
    assert len(src.folds(16)) == 1
    assert max(c for _, c in fold.train.corners) + 16 <= 922  # 60% of 1536 px
    assert min(c for _, c in fold.test.corners) >= 922 + 16
    # pretraining stays in the west block
    assert not src.pretraining_masks()[0][:, 922:].any()


def test_user_split_column_and_test_areas(brandenburg, tmp_path):
    l8 = landsat_like(brandenburg, tmp_path / "l8.tif")
    path = own_labels(brandenburg, tmp_path / "l.gpkg")
    s = open_data(DataRequest(data=str(l8), sensor="landsat8")).scenes[0]
    gdf = gpd.read_file(path).to_crs(s.crs).clip(box(*s.bounds))
    cx = gdf.geometry.centroid.x
    gdf["part"] = np.where(cx > cx.quantile(0.6), "test", "train")
    gdf.to_file(tmp_path / "split.gpkg")
    src = open_data(DataRequest(data=str(l8), sensor="landsat8", labels=str(tmp_path / "split.gpkg"),
                                label_column="landuse", split="column:part"))
    with no_water_patch():
        fold = src.folds(16)[0]
    test_geoms = gdf[gdf["part"] == "test"].to_crs(s.crs).geometry.union_all()
    for _, r, c, _ in fold.test.items[:20]:  # test patches lie in test-marked features
        x, y = s.transform @ (c + 8, r + 8)
        assert test_geoms.buffer(20).contains(gpd.points_from_xy([x], [y])[0])
    # a polygon file of test areas: the east third of the image
    b = s.bounds
    gpd.GeoDataFrame(geometry=[box(b.left + 2 * (b.right - b.left) / 3, b.bottom, b.right,
                                   b.top)], crs=s.crs).to_file(tmp_path / "areas.gpkg")
    src = open_data(DataRequest(data=str(l8), sensor="landsat8", labels=str(path),
                                label_column="landuse", split=str(tmp_path / "areas.gpkg")))
    with no_water_patch():
        fold = src.folds(16)[0]
    assert min(c for _, c in fold.test.corners) >= 512
    assert max(c for _, c in fold.train.corners) + 16 <= 512 - 16
    assert not src.pretraining_masks()[0][:, 512 - 16:].any()


def test_empty_test_fold_is_refused(brandenburg, tmp_path):
    l8 = landsat_like(brandenburg, tmp_path / "l8.tif")
    path = own_labels(brandenburg, tmp_path / "l.gpkg")
    s = open_data(DataRequest(data=str(l8), sensor="landsat8")).scenes[0]
    b = s.bounds  # a test area with no labelled patch in it (a 100 m square in a corner)
    gpd.GeoDataFrame(geometry=[box(b.left, b.top - 100, b.left + 100, b.top)],
                     crs=s.crs).to_file(tmp_path / "corner.gpkg")
    src = open_data(DataRequest(data=str(l8), sensor="landsat8", labels=str(path),
                                label_column="landuse", split=str(tmp_path / "corner.gpkg")))
    with pytest.raises(DataError, match="fold 0 .* has an empty test set"), no_water_patch():
        src.folds(16)


# the runs' probe loaders leave open water out and say so (see no_water_patch)
@pytest.mark.filterwarnings(r"ignore:classes with no usable patch \(left out\)")
def test_pretraining_leaves_the_test_areas_out_and_says_so(brandenburg, tmp_path, capfd):
    l8 = landsat_like(brandenburg, tmp_path / "l8.tif")
    labels = own_labels(brandenburg, tmp_path / "l.gpkg")
    src = open_data(DataRequest(data=str(l8), sensor="landsat8", labels=str(labels),
                                label_column="landuse"))
    allowed = src.pretraining_masks()[0]
    crops = src.crops(32, 300, seed=0)
    for i in range(300):  # every crop lies wholly where pretraining may look
        rng = crops._rng(i)
        r, c = crops._corner(rng, int(rng.choice(1, p=crops._weights)))
        assert allowed[r:r + 32, c:c + 32].all()
    region = np.zeros_like(allowed)
    for f in src.fold_areas(0):
        region |= f.test
    assert not (allowed & region).any()
    run = tmp_path / "run"
    args = ["--cache", str(tmp_path / "c"), "pretrain", "--data", str(l8), "--sensor",
            "landsat8", "--labels", str(labels), "--label-column", "landuse", "--max-steps", "1",
            "--batch-size", "4", "--crop-size", "32", "--out", str(run), "--no-progress"]
    assert main(args) == 0
    pd = json.loads((run / "summary.json").read_text())["pretrain_data"]
    assert pd["excluded_test_areas"] is True and pd["split"]["kind"] == "kfold"
    assert pd["data"] == str(l8.resolve()) and pd["sensor"] == "landsat8-oli"
    import torch

    meta = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["eossl"]
    assert meta["pretrain_data"] == pd
    assert src.pretraining_note(meta) == "pretraining excluded these test areas"
    assert main(args[:-3] + ["--out", str(tmp_path / "all"), "--pretrain-on-test-areas",
                             "--no-progress"]) == 0
    meta = torch.load(tmp_path / "all" / "checkpoints" / "last.ckpt", weights_only=True)["eossl"]
    assert meta["pretrain_data"]["excluded_test_areas"] is False
    assert "SAW the test areas" in src.pretraining_note(meta)


def test_nothing_left_to_pretrain_on_is_a_clear_error(brandenburg, tmp_path, capsys):
    l8 = landsat_like(brandenburg, tmp_path / "l8.tif")
    labels = own_labels(brandenburg, tmp_path / "l.gpkg")
    code = main(["--cache", str(tmp_path / "c"), "pretrain", "--data", str(l8), "--sensor",
                 "landsat8", "--labels", str(labels), "--label-column", "landuse", "--split",
                 "kfold:eval_share=1", "--crop-size", "256", "--max-steps", "1", "--out",
                 str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "--pretrain-on-test-areas" in err and "no 256 px crop fits" in err
    assert not (tmp_path / "r").exists()
