"""Multi-date sources: the real Landsat series, a folder of dated GeoTIFFs, and torchgeo's
SeasonalContrastS2 / SSL4EOS12 layouts written here as small files in their exact layout."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine

from eossl.data.sources import available_sources, open_source
from eossl.data.timeseries import FMASK_CLOUD, FMASK_FILL, FMASK_SHADOW
from eossl.data.timeseries_source import (
    MemoryLocation,
    MultiDateSource,
    seco_source,
    ssl4eo_s12_source,
    timeseries_folder,
)
from eossl.errors import BandError, ConfigError, DataError


@pytest.fixture(scope="module")
def landsat(sample_cache):
    return open_source("landsat", sample_cache)


def _write(path, arr, descriptions=None, nodata=None, dtype=None):
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1],
                       count=arr.shape[0], dtype=dtype or arr.dtype, nodata=nodata,
                       crs="EPSG:32633", transform=Affine(10, 0, 400000, 0, -10, 5800000)) as ds:
        ds.write(arr.astype(dtype or arr.dtype))
        if descriptions:
            for i, d in enumerate(descriptions, 1):
                ds.set_band_description(i, d)


# ------------------------------------------------------------------------------ real Landsat


def test_landsat_registered_and_real(landsat):
    assert "landsat" in available_sources()
    assert landsat.name == "landsat" and landsat.polygons is None
    assert landsat.bands == ["b3", "b4", "b5"]
    loc = landsat.locations[0]
    assert len(loc) == 105 and loc.shape == (61, 61)
    assert loc.dates == sorted(loc.dates) and loc.dates[0] == dt.date(2008, 4, 19)
    st = landsat.stats()
    assert st.bands == ["b3", "b4", "b5"] and np.isfinite(st.mean).all()
    # unusable = Fmask cloud, shadow or fill, nothing else (snow and water are kept)
    fm = landsat.series.masks
    assert torch.equal(loc.masks, (fm == FMASK_CLOUD) | (fm == FMASK_SHADOW) | (fm == FMASK_FILL))
    assert 0 < len(landsat.usable_dates(0)) < 105  # the real series has cloudy dates


def test_landsat_multi_date_views_are_colocated_clear_and_distinct(landsat):
    ds = landsat.multi_date(3, 24, 40, seed=1)
    loc = landsat.locations[0]
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (3, 3, 24, 24) and s["image"].dtype == torch.float32
        t = s["time_index"].tolist()
        assert len(set(t)) == 3
        r, c = s["window"].tolist()
        for k, ti in enumerate(t):
            # the crop is that date's pixels at one shared window, its fill (-9999: Landsat
            # 7's scan-line gaps) at the band's mean
            want = loc.images[ti][:, r:r + 24, c:c + 24]
            fill = want == loc.nodata
            assert torch.equal(s["image"][k][~fill], want[~fill])
            assert (s["image"][k] != loc.nodata).all()
            assert loc.masks[ti][r:r + 24, c:c + 24].float().mean() <= 0.5
    a, b = ds[3], landsat.multi_date(3, 24, 40, seed=1)[3]
    assert torch.equal(a["image"], b["image"])  # seeded draws repeat


def test_pixels_without_a_value_reach_the_model_at_the_band_mean(landsat):
    """10% of the real series' pixels are fill (-9999); the normaliser would put them 7-18
    standard deviations below the mean. Crops carry the band's mean there instead (which
    standardises to 0), and a NaN in a memory series is treated the same way."""
    from eossl.normalization import Normalizer

    assert (landsat.series.images == landsat.locations[0].nodata).float().mean() > 0.05
    norm = Normalizer(landsat.stats())
    crops = torch.stack([landsat.multi_date(2, 32, 64, seed=0)[i]["image"] for i in range(64)])
    z = norm(crops.flatten(0, 1))
    assert z.abs().max() < 7  # no fill outliers left
    images = torch.full((2, 2, 8, 8), 500.0)
    images[0, 1, 2, 3] = float("nan")
    images[1, 0, 4, 4] = -1.0  # this location's nodata
    src = MultiDateSource("toy", ["b3", "b4"], [MemoryLocation("a", images, [None, None],
                                                               nodata=-1.0)])
    views = src.multi_date(2, 8, 4, seed=0)
    x = views[0]["image"]
    assert torch.isfinite(x).all() and (x != -1.0).all()
    mean = views._fill_values()
    assert torch.allclose(norm_of(src)(mean.view(1, 2, 1, 1)), torch.zeros(1, 2, 1, 1),
                          atol=1e-5)


def norm_of(source):
    from eossl.normalization import Normalizer

    return Normalizer(source.stats())


def test_landsat_single_date_crops_and_band_subset(sample_cache):
    src = open_source("landsat", sample_cache, bands="b5,b3")
    assert src.bands == ["b5", "b3"]
    x = src.crops(16, 5, seed=0)[0]["image"]
    assert x.shape == (2, 16, 16)
    with pytest.raises(BandError, match="b9"):
        open_source("landsat", sample_cache, bands="b9")


def test_window_larger_than_tile(landsat):
    with pytest.raises(ConfigError, match="larger than location"):
        landsat.multi_date(3, 64, 4)


# ------------------------------------------------------------------------------ cloud filter


def _cloudy_series(n_dates=6, cloudy=(1, 3), size=16):
    """Dates in ``cloudy`` are cloud over the top half only (so they pass the tile-level
    check at max_cloud 0.5 but fail for windows in the top rows)."""
    images = torch.arange(n_dates, dtype=torch.float32)[:, None, None, None].expand(
        n_dates, 2, size, size).clone()
    bad = torch.zeros(n_dates, size, size, dtype=torch.bool)
    for t in cloudy:
        bad[t, : size // 2] = True
    dates = [dt.date(2020, 1, 1) + dt.timedelta(days=30 * i) for i in range(n_dates)]
    return MultiDateSource("synthetic", ["B04", "B08"],
                           [MemoryLocation("field-7", images, dates, bad)])


def test_cloud_filter_redraws_cloudy_crops():
    src = _cloudy_series()
    ds = src.multi_date(3, 6, 300, seed=0, max_cloud=0.5)
    seen_cloudy_dates = set()
    for i in range(len(ds)):
        s = ds[i]
        r, _ = s["window"].tolist()
        t = s["time_index"].tolist()
        # the image really is the date's (values = date index)
        assert s["image"][:, 0, 0, 0].tolist() == [float(x) for x in t]
        top_share = max(0, min(8, r + 6) - r) / 6  # rows of the window inside the cloud
        if top_share > 0.5:
            assert not {1, 3} & set(t), (r, t)
        else:
            seen_cloudy_dates |= {1, 3} & set(t)
    assert ds.redrawn > 0 and ds.fallbacks == 0
    assert seen_cloudy_dates == {1, 3}  # per window, not per date: clear windows keep them


def test_too_few_usable_dates_names_location_and_counts():
    src = _cloudy_series(n_dates=4, cloudy=(0, 1, 2))
    src.locations[0].masks[:3] = True  # three dates entirely cloud: one usable date of four
    src.locations[0]._fractions.clear()
    with pytest.raises(DataError, match=r"field-7.*1 usable dates \(of 4.*3 views"):
        src.multi_date(3, 8, 10)
    assert len(src.multi_date(1, 8, 10)) == 10  # one view is fine


# ------------------------------------------------------------------------------ dated folder


def test_timeseries_folder_layout(tmp_path, monkeypatch):
    names = ["B04", "B08", "B11"]
    for loc, offset in (("farm-a", 0), ("farm-b", 100)):
        for k, day in enumerate(("2021-07-01", "2021-01-15", "2021-04-02")):
            arr = np.full((3, 20, 20), offset + 10 * k, np.uint16) + np.arange(3)[:, None, None]
            _write(tmp_path / loc / f"{day}.tif", arr, names)
    mask = np.zeros((20, 20), np.uint8)
    mask[:, :15] = 1
    _write(tmp_path / "farm-a" / "2021-04-02_mask.tif", mask)
    (tmp_path / "farm-a" / "notes.txt").write_text("ignored")

    src = timeseries_folder(tmp_path)
    assert src.bands == names and len(src) == 2
    a = src.locations[0]
    assert a.name == "farm-a"
    assert a.dates == [dt.date(2021, 1, 15), dt.date(2021, 4, 2), dt.date(2021, 7, 1)]
    assert a.image(0)[:, 0, 0].tolist() == [10.0, 11.0, 12.0]  # 2021-01-15 was written k=1
    assert src.usable_dates(0) == [0, 2]  # 2021-04-02 is 75% masked
    with pytest.raises(DataError, match="farm-a.*2 usable dates"):
        src.multi_date(3, 8, 4)
    ok = src.multi_date(2, 8, 4, seed=0)[0]
    assert ok["image"].shape == (2, 3, 8, 8)

    sub = timeseries_folder(tmp_path, bands=["B11", "B04"])
    assert sub.bands == ["B11", "B04"] and sub.locations[1].image(0)[:, 0, 0].tolist() == [
        112.0, 110.0]
    with pytest.raises(BandError, match="B02"):
        timeseries_folder(tmp_path, bands="B02")

    # the folder itself is a --data form; the registered name takes it with --root
    assert open_source(str(tmp_path)).bands == names
    assert open_source("timeseries", root=str(tmp_path)).bands == names
    with pytest.raises(ConfigError, match="--data timeseries needs --root"):
        open_source("timeseries")


def test_timeseries_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no dated GeoTIFFs"):
        timeseries_folder(tmp_path)
    _write(tmp_path / "p" / "2020-01-01.tif", np.zeros((2, 8, 8), np.float32))
    _write(tmp_path / "p" / "2020-02-01.tif", np.zeros((2, 9, 8), np.float32))
    with pytest.raises(DataError, match="2020-02-01.tif.*share bands and grid"):
        timeseries_folder(tmp_path)
    (tmp_path / "p" / "2020-02-01.tif").unlink()
    _write(tmp_path / "p" / "2020-03-01_mask.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match="2020-03-01_mask.tif has no image"):
        timeseries_folder(tmp_path)
    (tmp_path / "p" / "2020-03-01_mask.tif").unlink()
    _write(tmp_path / "q" / "2020-01-01.tif", np.zeros((3, 8, 8), np.float32))
    with pytest.raises(DataError, match="same bands"):
        timeseries_folder(tmp_path)
    (tmp_path / "q" / "2020-13-01.tif").write_bytes(b"")
    with pytest.raises(DataError, match="2020-13-01.*calendar date"):
        timeseries_folder(tmp_path)


def test_nodata_counts_as_unusable(tmp_path):
    arr = np.ones((2, 10, 10), np.int16)
    arr[:, :6] = -9999
    _write(tmp_path / "2020-01-01.tif", arr, nodata=-9999)
    _write(tmp_path / "2020-02-01.tif", np.ones((2, 10, 10), np.int16), nodata=-9999)
    src = timeseries_folder(tmp_path)  # ROOT itself is the one location
    assert src.locations[0].name == tmp_path.name
    assert src.usable_dates(0) == [1]
    assert src.bands == ["band001", "band002"]
    # a crop that keeps some nodata (max_cloud 1) carries the band mean there, never -9999
    x = src.multi_date(2, 10, 4, seed=0, max_cloud=1.0)  # both dates in every sample
    got = torch.stack([x[i]["image"] for i in range(4)])
    assert torch.isfinite(got).all() and (got != -9999).all()


# ------------------------------------------------------------------------------ torchgeo layouts

SECO_FILES = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12")
SECO_RES = {"B1": 60, "B9": 60, "B5": 20, "B6": 20, "B7": 20, "B8A": 20, "B11": 20, "B12": 20}


def _write_seco(root, n_locations=2, stamps=("20200611T103031_20200611T103026_T32UNU",
                                              "20190317T103021_20190317T103018_T32UNU",
                                              "20191105T103201_20191105T103203_T32UNU")):
    base = root / "seasonal_contrast_100k"
    for loc in range(n_locations):
        for k, st in enumerate(stamps):
            for b, name in enumerate(SECO_FILES):
                px = {10: 24, 20: 12, 60: 4}[SECO_RES.get(name, 10)]
                _write(base / f"{loc:06d}" / st / f"{name}.tif",
                       np.full((px, px), 1000 * loc + 100 * k + b, np.uint16))
    return base


def test_seco_layout(tmp_path, monkeypatch):
    _write_seco(tmp_path)
    src = seco_source(tmp_path)
    assert src.bands == ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09",
                         "B11", "B12"]
    loc = src.locations[1]
    assert loc.name == "000001" and loc.shape == (24, 24)
    assert loc.dates == [dt.date(2019, 3, 17), dt.date(2019, 11, 5), dt.date(2020, 6, 11)]
    img = loc.image(0)  # 2019-03-17 was stamp k=1; 20 m and 60 m bands upsampled to 24 px
    assert img.shape == (12, 24, 24)
    assert torch.allclose(img[:, 5, 7], torch.tensor([1100.0 + b for b in range(12)]))
    s = src.multi_date(3, 16, 2, seed=0)[0]
    assert s["image"].shape == (3, 12, 16, 16)

    sub = seco_source(tmp_path / "seasonal_contrast_100k", bands="B4,B8,B11")
    assert sub.bands == ["B04", "B08", "B11"]
    assert sub.locations[0].image(2)[:, 0, 0].tolist() == [3.0, 7.0, 10.0]
    with pytest.raises(BandError, match="B10"):
        seco_source(tmp_path, bands="B10")  # L2A: no cirrus band
    assert len(open_source("torchgeo:SeasonalContrastS2", root=str(tmp_path))) == 2
    assert len(open_source("seco", root=str(tmp_path))) == 2
    with pytest.raises(DataError, match="seasonal_contrast_1m"):
        seco_source(tmp_path, version="1m")


def test_seco_layout_too_few_dates(tmp_path):
    _write_seco(tmp_path, n_locations=1, stamps=("20200611T103031_20200611T103026_T32UNU",
                                                  "20190317T103021_20190317T103018_T32UNU"))
    with pytest.raises(DataError, match=r"000000.*has 2 date\(s\) but 3 views.*single-date"):
        seco_source(tmp_path).multi_date(3, 8, 1)


def test_ssl4eo_layout(tmp_path, monkeypatch):
    from torchgeo.datasets import SSL4EOS12

    bands = SSL4EOS12.metadata["s2c"]["bands"]
    for k, st in enumerate(("20210301T101021_20210301T101022_T32TQM",
                            "20200601T101021_20200601T101022_T32TQM")):
        for b, name in enumerate(bands):
            _write(tmp_path / "s2c" / "0000000" / st / f"{name}.tif",
                   np.full((16, 16), 100 * k + b, np.uint16))
    for k, st in enumerate(("S1A_IW_GRDH_1SDV_20200601T052238_20200601T052303_032823_03CD3F_C0C2",
                            "S1A_IW_GRDH_1SDV_20200301T052238_20200301T052303_032823_03CD3F_C0C2")):
        for b, name in enumerate(("VV", "VH")):
            _write(tmp_path / "s1" / "0000000" / st / f"{name}.tif",
                   np.full((16, 16), -10.0 * (k + 1) - b, np.float32))
    src = ssl4eo_s12_source(tmp_path, "s2c")
    assert len(src.bands) == 13 and "B10" in src.bands and src.name == "ssl4eo-s12-s2c"
    loc = src.locations[0]
    assert loc.shape == (SSL4EOS12.size, SSL4EOS12.size)  # read at 264 px, as torchgeo
    assert loc.dates == [dt.date(2020, 6, 1), dt.date(2021, 3, 1)]
    assert loc.image(0)[:, 100, 100].tolist() == [100.0 + b for b in range(13)]
    s1 = ssl4eo_s12_source(tmp_path, "s1")
    assert s1.bands == ["VV", "VH"]
    assert s1.locations[0].dates == [dt.date(2020, 3, 1), dt.date(2020, 6, 1)]
    assert s1.locations[0].image(0)[:, 0, 0].tolist() == [-20.0, -21.0]
    with pytest.raises(ConfigError, match="s3"):
        ssl4eo_s12_source(tmp_path, "s3")
    with pytest.raises(DataError, match="s2a"):
        ssl4eo_s12_source(tmp_path, "s2a")
    tg = open_source("torchgeo:SSL4EOS12", root=str(tmp_path), sensor="sentinel1")
    assert tg.bands == ["VV", "VH"]
    # a missing band file is named
    (tmp_path / "s1" / "0000000").iterdir().__next__().joinpath("VH.tif").unlink()
    with pytest.raises(DataError, match="VH.tif"):
        ssl4eo_s12_source(tmp_path, "s1")
