"""Bad data input on the command line: one line naming the file, band or option and what was
expected, exit status 2, and no run folder left behind (pretrain refuses before it writes)."""

import shutil

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import box

from eossl.cli import main
from userdata import chip_folder, landsat_like, own_labels, write_tif


@pytest.fixture(scope="module")
def user(brandenburg, tmp_path_factory):
    d = tmp_path_factory.mktemp("user")
    return {"tif": landsat_like(brandenburg, d / "l8.tif"),
            "labels": own_labels(brandenburg, d / "fields.gpkg"), "dir": d}


def _pretrain(capsys, tmp_path, *args):
    out = tmp_path / "run"
    code = main(["--cache", str(tmp_path / "c"), "pretrain", *map(str, args), "--max-steps",
                 "1", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("eossl: error: ") and "\n" not in err and "Traceback" not in err
    assert not out.exists()
    return err


def test_labels_that_do_not_overlap_the_imagery(capsys, tmp_path, user):
    gdf = gpd.read_file(user["labels"])
    gdf["geometry"] = gdf.geometry.translate(0, 300_000)
    gdf.to_file(tmp_path / "north.gpkg")
    err = _pretrain(capsys, tmp_path, "--data", user["tif"], "--sensor", "landsat8",
                    "--labels", tmp_path / "north.gpkg", "--label-column", "landuse")
    assert "north.gpkg: the labels do not overlap the imagery (l8.tif" in err


@pytest.mark.filterwarnings("ignore:'crs' was not provided")  # written without one on purpose
def test_label_file_without_crs(capsys, tmp_path, user):
    gpd.read_file(user["labels"]).set_crs(None, allow_override=True).to_file(
        tmp_path / "nocrs.shp")
    err = _pretrain(capsys, tmp_path, "--data", user["tif"], "--sensor", "landsat8",
                    "--labels", tmp_path / "nocrs.shp", "--label-column", "landuse")
    assert "nocrs.shp: the label file has no CRS" in err


def test_class_with_fewer_samples_than_the_split_needs(capsys, tmp_path, user):
    gdf = gpd.read_file(user["labels"])
    x0, y0 = gdf.total_bounds[:2]
    tiny = gpd.GeoDataFrame({"landuse": ["vineyard"], "note": ["x"]},
                            geometry=[box(x0, y0, x0 + 30, y0 + 30)], crs=gdf.crs)
    gpd.pd.concat([gdf, tiny]).to_file(tmp_path / "plus.gpkg")
    err = _pretrain(capsys, tmp_path, "--data", user["tif"], "--sensor", "landsat8",
                    "--labels", tmp_path / "plus.gpkg", "--label-column", "landuse",
                    "--classes", "arable,vineyard")
    assert "vineyard" in err and "a split needs at least 2 per class" in err


# the probe folds of landsat_like's quarter of the scene leave open water out, and say so
@pytest.mark.filterwarnings(r"ignore:classes with no usable patch \(left out\)")
def test_empty_test_fold(capsys, tmp_path, user):
    with __import__("rasterio").open(user["tif"]) as f:
        b, crs = f.bounds, f.crs
    gpd.GeoDataFrame(geometry=[box(b.left, b.top - 100, b.left + 100, b.top)],
                     crs=crs).to_file(tmp_path / "corner.gpkg")
    err = _pretrain(capsys, tmp_path, "--data", user["tif"], "--sensor", "landsat8",
                    "--labels", user["labels"], "--label-column", "landuse", "--split",
                    tmp_path / "corner.gpkg")
    assert "fold 0 of the split" in err and "empty test set" in err


def test_chips_of_different_sizes_in_one_folder(capsys, tmp_path, brandenburg):
    root = chip_folder(brandenburg, tmp_path / "chips", per_class=3)
    write_tif(root / "farm" / "big.tif", np.ones((13, 32, 32), "uint16"))
    err = _pretrain(capsys, tmp_path, "--data", root)
    assert "big.tif: 13 bands of 32 x 32 px, but" in err and "same bands and size" in err
    (root / "farm" / "big.tif").unlink()
    write_tif(root / "farm" / "few.tif", np.ones((3, 16, 16), "uint16"))
    err = _pretrain(capsys, tmp_path, "--data", root)
    assert "few.tif: 3 bands of 16 x 16 px" in err


def test_band_the_sensor_preset_does_not_have(capsys, tmp_path, user):
    err = _pretrain(capsys, tmp_path, "--data", user["tif"], "--sensor", "landsat8",
                    "--bands", "B4,B8A")
    assert "band 'B8A' is not a band of --sensor landsat8-oli" in err
    err = _pretrain(capsys, tmp_path, "--data", user["tif"])  # USGS names, no sensor
    assert "is ambiguous without a sensor" in err and "--sensor" in err


def test_torchgeo_dataset_that_does_not_exist(capsys, tmp_path):
    err = _pretrain(capsys, tmp_path, "--data", "torchgeo:EuroSATT", "--root", tmp_path)
    assert "torchgeo:EuroSATT: no such dataset" in err and "EuroSAT" in err
    err = _pretrain(capsys, tmp_path, "--data", "torchgeo:EuroSAT", "--root", tmp_path)
    assert "not found under --root" in err and "eurosat-{train,val,test}.txt" in err
    shutil.rmtree(tmp_path / "c", ignore_errors=True)
