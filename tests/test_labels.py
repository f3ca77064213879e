"""A user's labels (data/labels.py): any column, any classes, polygons, points or a label
raster, on any CRS; classes are never dropped silently. Built from the REAL sample scene."""

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import Point, box

from eossl.data.resolve import DataRequest, open_data
from eossl.errors import ConfigError, DataError
from userdata import OWN_CLASSES, label_raster, landsat_like, own_labels


@pytest.fixture(scope="module")
def l8(brandenburg, tmp_path_factory):
    return landsat_like(brandenburg, tmp_path_factory.mktemp("img") / "l8.tif")


def _src(l8, labels, **kw):
    return open_data(DataRequest(data=str(l8), sensor="landsat8", labels=str(labels), **kw))


def test_own_column_and_classes_on_another_crs(brandenburg, l8, tmp_path):
    native = own_labels(brandenburg, tmp_path / "native.gpkg")
    wgs84 = own_labels(brandenburg, tmp_path / "wgs84.geojson", crs="EPSG:4326")
    a = _src(l8, native, label_column="landuse")
    b = _src(l8, wgs84, label_column="landuse")
    assert a.classes == sorted(OWN_CLASSES.values())  # inferred from the values, sorted
    # reprojected to the imagery's CRS: the same pixels (up to edge effects of the warp)
    la, lb = a.label_map(), b.label_map()
    assert la.shape == (384, 768) and (la == lb).mean() > 0.99
    # the sample's own label map, renamed, is what the user's file burns
    ref = brandenburg.label_map()[:384, :768]
    names = {i: OWN_CLASSES.get(c) for i, c in enumerate(brandenburg.classes)}
    mine = np.array([names.get(v) if v != 255 else None for v in ref.ravel()], object)
    got = np.array([a.classes[v] if v != 255 else None for v in la.ravel()], object)
    both = mine != None  # noqa: E711 (elementwise)
    assert (got[both] == mine[both]).mean() > 0.99
    with pytest.raises(ConfigError, match="--label-column.*columns: landuse, note"):
        _src(l8, native)  # two candidate columns: say which


def test_classes_option_orders_and_subsets(brandenburg, l8, tmp_path):
    path = own_labels(brandenburg, tmp_path / "l.gpkg")
    src = _src(l8, path, label_column="landuse", classes="woodland,arable")
    assert src.classes == ["woodland", "arable"]
    fold = src.folds(16)[0]
    assert set(fold.train.classes) == {"woodland", "arable"}
    assert set(np.unique(np.r_[fold.train.labels, fold.test.labels])) <= {0, 1}
    with pytest.raises(DataError, match="--classes corn not found in column 'landuse'"):
        _src(l8, path, label_column="landuse", classes="corn,arable")
    with pytest.raises(DataError, match="no column 'crop'; columns are landuse, note"):
        _src(l8, path, label_column="crop")


def test_classes_without_usable_patch_are_said_not_dropped_silently(brandenburg, l8, tmp_path):
    path = own_labels(brandenburg, tmp_path / "l.gpkg")
    gdf = gpd.read_file(path)
    tiny = gpd.GeoDataFrame({"landuse": ["vineyard"], "note": ["x"]},
                            geometry=[box(*gdf.total_bounds[:2], gdf.total_bounds[0] + 30,
                                          gdf.total_bounds[1] + 30)], crs=gdf.crs)
    gpd.pd.concat([gdf, tiny]).to_file(tmp_path / "plus.gpkg")
    src = _src(l8, tmp_path / "plus.gpkg", label_column="landuse")
    with pytest.warns(UserWarning, match="vineyard"):
        fold = src.folds(16)[0]
    assert "vineyard" in src.classes and "vineyard" not in fold.train.classes
    assert any("vineyard" in n and "--min-share" in n for n in src.notes)
    # asked for by name: refused with the reason instead
    with pytest.raises(DataError, match="vineyard.*at least 2 per class"):
        _src(l8, tmp_path / "plus.gpkg", label_column="landuse",
             classes="arable,vineyard").folds(16)


@pytest.mark.filterwarnings("ignore:'crs' was not provided")  # written without one on purpose
def test_label_file_without_crs_and_labels_elsewhere(brandenburg, l8, tmp_path):
    path = own_labels(brandenburg, tmp_path / "l.gpkg")
    gdf = gpd.read_file(path)
    gdf.set_crs(None, allow_override=True).to_file(tmp_path / "nocrs.shp")  # no .prj
    with pytest.raises(DataError, match="nocrs.shp: the label file has no CRS"):
        _src(l8, tmp_path / "nocrs.shp", label_column="landuse")
    # GeoJSON is WGS84 by definition: projected metres in it mean a missing/wrong CRS
    gdf.set_crs(None, allow_override=True).to_file(tmp_path / "metres.geojson")
    with pytest.raises(DataError, match="metres.geojson: coordinates .* are not degrees"):
        _src(l8, tmp_path / "metres.geojson", label_column="landuse")
    far = gdf.copy()
    far["geometry"] = far.geometry.translate(500_000, 0)
    far.to_file(tmp_path / "far.gpkg")
    with pytest.raises(DataError, match="far.gpkg: the labels do not overlap the imagery"):
        _src(l8, tmp_path / "far.gpkg", label_column="landuse")


def test_point_labels_give_patches_centred_on_them(brandenburg, l8, tmp_path):
    src0 = open_data(DataRequest(data=str(l8), sensor="landsat8"))
    s = src0.scenes[0]
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(20, 360, 60), rng.integers(20, 740, 60)
    pts = [Point(*(s.transform @ (c + 0.5, r + 0.5))) for r, c in zip(rows, cols)]
    crop = ["corn" if c < 384 else "soy" for c in cols]
    gpd.GeoDataFrame({"crop": crop}, geometry=pts, crs=s.crs).to_file(tmp_path / "p.gpkg")
    src = _src(l8, tmp_path / "p.gpkg", split="kfold:k=2,block=64,eval_share=1")
    folds = src.folds(16)
    assert src.classes == ["corn", "soy"]
    items = [it for f in folds for it in f.test.items]
    # a point tests in at most one fold (patches across a block border test in none)
    assert len(set(items)) == len(items) and 30 <= len(items) <= 60
    for f in folds:
        assert not set(f.test.items) & set(f.train.items)
    for _, r, c, k in items:  # the patch holds its point near its centre
        hit = [(rr, cc) for rr, cc in zip(rows, cols) if r <= rr < r + 16 and c <= cc < c + 16]
        assert hit and src.classes[k] == ("corn" if hit[0][1] < 384 else "soy")


def test_label_raster_aligned_or_not_with_code_names(brandenburg, l8, tmp_path):
    aligned = label_raster(brandenburg, tmp_path / "codes.tif")
    src = _src(l8, aligned, classes="10=farm,20=meadow,30=forest")
    assert src.classes == ["farm", "meadow", "forest"]
    ref = brandenburg.label_map()[:384, :768]
    lm = src.label_map()
    keep = np.isin(ref, [0, 1, 2])
    assert np.array_equal(lm[keep], ref[keep]) and (lm[~keep] == 255).all()
    plain = _src(l8, aligned)  # codes named by their numbers
    assert plain.classes[:3] == ["10", "20", "30"]
    # on another CRS at 20 m: resampled (nearest) onto the imagery grid
    warped = label_raster(brandenburg, tmp_path / "coarse.tif", scale=2, crs="EPSG:4326")
    other = _src(l8, warped, classes="10=farm,20=meadow,30=forest").label_map()
    both = (other != 255) & keep
    assert both.sum() > 0.85 * keep.sum() and (other[both] == ref[both]).mean() > 0.9
    with pytest.raises(DataError, match="code\\(s\\) \\[99\\] do not occur"):
        _src(l8, aligned, classes="10=farm,99=rice")
    with pytest.raises(ConfigError, match="label raster.*no columns"):
        _src(l8, aligned, label_column="x")
