"""The resolver (data/resolve.py): every imagery form --data takes, band names found by name,
nodata in any band, on a window of the REAL sample scene written the way a user's file is."""

import numpy as np
import pytest
import rasterio

from eossl.data.resolve import DataRequest, open_data
from eossl.data.sources import SceneSource
from eossl.errors import BandError, ConfigError, DataError
from userdata import OLI_FROM_S2, landsat_like, write_tif


def test_multiband_geotiff_of_another_sensor_reads_by_name(brandenburg, tmp_path):
    tif = landsat_like(brandenburg, tmp_path / "l8.tif")
    src = open_data(DataRequest(data=str(tif), sensor="landsat8"))
    assert isinstance(src, SceneSource) and len(src.scenes) == 1
    assert src.bands == ["OLI_B2", "OLI_B3", "OLI_B4", "OLI_B5", "OLI_B6", "OLI_B7"]
    assert src.sensor == "landsat8-oli"
    # read in place (no copy into the cache), pixel for pixel the S2 bands it was written from
    assert src.scenes[0].path == tif
    s2 = brandenburg.scenes[0].read((0, 0, 8, 8))
    red = src.scenes[0].read((0, 0, 8, 8), bands=["OLI_B4"])[0]
    assert np.array_equal(red, s2[brandenburg.bands.index("B04")].astype("uint16"))
    # --bands picks and orders by name, in any of the sensor's spellings
    sub = open_data(DataRequest(data=str(tif), sensor="landsat8", bands="B5,SR_B4"))
    assert sub.bands == ["OLI_B5", "OLI_B4"]
    assert np.array_equal(sub.scenes[0].read((0, 0, 8, 8))[1], red)


def test_ambiguous_band_names_without_a_sensor_are_refused(brandenburg, tmp_path):
    tif = landsat_like(brandenburg, tmp_path / "l8.tif", names=["B2", "B3", "B4", "B5", "B6",
                                                                "B7"])
    with pytest.raises(BandError) as e:
        open_data(DataRequest(data=str(tif)))
    assert str(tif) in str(e.value) and "--sensor" in str(e.value)
    with pytest.raises(BandError, match="'B8A' is not a band of --sensor landsat8-oli"):
        open_data(DataRequest(data=str(tif), sensor="landsat8", bands="B4,B8A"))


def test_files_without_band_descriptions(brandenburg, tmp_path):
    tif = landsat_like(brandenburg, tmp_path / "plain.tif", names=[])
    assert open_data(DataRequest(data=str(tif))).bands == [f"band00{i}" for i in range(1, 7)]
    named = open_data(DataRequest(data=str(tif), sensor="landsat8",
                                  band_names="B2,B3,B4,B5,B6,B7"))
    assert named.bands[2] == "OLI_B4"
    with pytest.raises(BandError, match="holds 6 bands but --band-names gives 2"):
        open_data(DataRequest(data=str(tif), band_names="B02,B03"))
    with pytest.raises(BandError, match="no band descriptions.*--band-names"):
        open_data(DataRequest(data=str(tif), sensor="landsat8"))  # 11 preset bands, 6 in file


def test_tif_path_that_does_not_exist_says_file(tmp_path):
    with pytest.raises(DataError, match=r"missing\.tif: no such file; expected an image"):
        open_data(DataRequest(data=str(tmp_path / "missing.tif")))
    with pytest.raises(ConfigError, match="no such file or folder"):
        open_data(DataRequest(data=str(tmp_path / "nothing")))


def test_folder_and_glob_of_scenes_on_other_crs_and_sizes(brandenburg, tmp_path):
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    landsat_like(brandenburg, tmp_path / "scenes" / "a.tif")
    b = landsat_like(brandenburg, tmp_path / "scenes" / "b.tif", window=(384, 768, 200, 300))
    # scene b moved to another UTM zone, as a neighbouring scene would be
    with rasterio.open(b) as src:
        t, w, h = calculate_default_transform(src.crs, "EPSG:32632", src.width, src.height,
                                              *src.bounds)
        out = np.zeros((src.count, h, w), "uint16")
        reproject(src.read(), out, src_transform=src.transform, src_crs=src.crs,
                  dst_transform=t, dst_crs="EPSG:32632", resampling=Resampling.nearest)
        names = list(src.descriptions)
    write_tif(b, out, crs="EPSG:32632", transform=t, names=names, nodata=0)
    for form in (tmp_path / "scenes", tmp_path / "scenes" / "*.tif"):
        src = open_data(DataRequest(data=str(form), sensor="landsat8"))
        assert [s.path.name for s in src.scenes] == ["a.tif", "b.tif"]
        assert src.scenes[0].shape == (6, 384, 768) and src.scenes[1].crs.to_epsg() == 32632
    crops = src.crops(32, 64, seed=0)
    picked = {int(crops._rng(i).choice(2, p=crops._weights)) for i in range(64)}
    assert picked == {0, 1}  # crops come from both scenes, each cropped on its own grid
    assert all(crops[i]["image"].shape == (6, 32, 32) for i in range(8))
    with pytest.raises(DataError, match="pattern matches no file"):
        open_data(DataRequest(data=str(tmp_path / "none*.tif")))


def test_scenes_with_other_bands_are_refused(brandenburg, tmp_path):
    landsat_like(brandenburg, tmp_path / "s" / "a.tif")
    landsat_like(brandenburg, tmp_path / "s" / "b.tif",
                 names=["SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B1"])
    with pytest.raises(DataError, match="b.tif: bands .* differ from a.tif"):
        open_data(DataRequest(data=str(tmp_path / "s"), sensor="landsat8"))


def test_nodata_from_the_file_or_the_option(brandenburg, tmp_path):
    tif = landsat_like(brandenburg, tmp_path / "l8.tif", nodata=7)
    assert open_data(DataRequest(data=str(tif), sensor="landsat8")).scenes[0].nodata == 7
    src = open_data(DataRequest(data=str(tif), sensor="landsat8", nodata=0))
    assert src.scenes[0].nodata == 0


def test_crops_skip_pixels_invalid_in_any_band(brandenburg, tmp_path):
    """The crop filter counts a pixel invalid when ANY band is nodata: a stack where one band
    has extra nodata (the left 60% of band 2) must give no crop over 10% invalid, and no
    nodata value may reach a crop."""
    scene = brandenburg.scenes[0]
    idx = [scene.bands.index(b) for b in OLI_FROM_S2.values()]
    arr = scene.read((0, 0, 256, 512))[idx].astype("uint16")
    arr[1, :, :300] = 0
    tif = write_tif(tmp_path / "holes.tif", arr, names=list(OLI_FROM_S2), nodata=0,
                    crs=scene.crs)
    src = open_data(DataRequest(data=str(tif), sensor="landsat8"))
    crops = src.crops(32, 200, seed=1)
    s = src.scenes[0]
    for i in range(200):
        img = crops[i]["image"].numpy()
        assert (img != 0).all() and np.isfinite(img).all()
    # the crops that were kept hold at most 10% invalid pixels of the raw file
    shares = []
    for i in range(200):
        rng = crops._rng(i)
        for _ in range(50):
            k = int(rng.choice(1, p=crops._weights))
            r, c = crops._corner(rng, k)
            share = s.invalid(s.read((r, c, 32, 32))).mean()
            if share <= 0.1:
                shares.append(share)
                break
    assert max(shares) <= 0.1 and len(shares) == 200
    with pytest.raises(DataError, match="invalid pixels.*--nodata"):
        arr[2] = 0  # a band with no data at all: every crop is invalid
        tif2 = write_tif(tmp_path / "empty.tif", arr, names=list(OLI_FROM_S2), nodata=0)
        open_data(DataRequest(data=str(tif2), sensor="landsat8")).crops(32, 4, seed=0)[0]
