import numpy as np
import pytest
import torch

from eossl.bands import (SENTINEL1, SENTINEL2_L1C, SENTINEL2_L2A, band_indices, get_sensor,
                         select_bands, wavelengths)
from eossl.errors import BandError, EosslError


def test_sentinel2_registry_counts_and_roles():
    assert len(SENTINEL2_L1C.bands) == 13
    assert len(SENTINEL2_L2A.bands) == 12 and "B10" not in SENTINEL2_L2A.band_names
    assert SENTINEL2_L1C.rgb() == ["B04", "B03", "B02"]
    assert SENTINEL2_L1C.by_role("swir") == ["B11", "B12"]
    assert SENTINEL1.by_role("sar") == ["VV", "VH"]
    assert get_sensor("landsat5-tm").rgb() == ["b3", "b2", "b1"]
    assert get_sensor("landsat8-oli").rgb() == ["OLI_B4", "OLI_B3", "OLI_B2"]
    assert get_sensor("landsat9").rgb() == ["OLI_B4", "OLI_B3", "OLI_B2"]
    # colorization input: everything but the visible bands (for L2A the paper's 9)
    non_visible = [b.name for b in SENTINEL2_L2A.bands if not b.is_visible]
    assert non_visible == ["B01", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]


def test_wavelengths_are_ordered_and_sar_has_none():
    wl = wavelengths("sentinel2-l1c", SENTINEL2_L1C.band_names)
    assert wl[1] == pytest.approx(492.4) and wl[-1] == pytest.approx(2202.4)
    assert wavelengths("sentinel1", ["VV", "VH"]) == [None, None]


def test_select_and_reorder_by_name_numpy_and_torch():
    names = ["B02", "B03", "B04", "B08"]
    arr = np.arange(4 * 2 * 2).reshape(4, 2, 2)
    out = select_bands(arr, names, ["B08", "B04", "B02"])
    assert np.array_equal(out[0], arr[3]) and np.array_equal(out[1], arr[2])
    t = torch.arange(2 * 4 * 3).reshape(2, 4, 3).float()
    out_t = select_bands(t, names, ["b04", "B08"], axis=1)  # case does not matter
    assert torch.equal(out_t[:, 0], t[:, 2]) and torch.equal(out_t[:, 1], t[:, 3])
    with pytest.raises(BandError, match="'b4'"):  # 'b4' is Landsat TM NIR, never S2 red
        select_bands(t, names, ["b4"], axis=1)


def test_unknown_band_error_names_band_and_choices():
    with pytest.raises(BandError) as e:
        band_indices(["B02", "B03"], ["B02", "B13"], source="scene.tif")
    msg = str(e.value)
    assert "B13" in msg and "scene.tif" in msg and "B02, B03" in msg
    assert isinstance(e.value, EosslError)
    with pytest.raises(BandError, match="unknown band 'B99'"):
        SENTINEL2_L1C.band("B99")
    with pytest.raises(BandError, match="unknown sensor"):
        get_sensor("sentinel3")


def test_landsat_lowercase_names_are_not_mistaken_for_sentinel2():
    tm = get_sensor("landsat5-tm")
    assert tm.band("b3").role == "red" and tm.band("B3").role == "red"
    assert band_indices(["b3", "b4", "b5"], ["b5", "b3"]) == [2, 0]
    assert band_indices(SENTINEL2_L1C.band_names, ["b8a", "B08"]) == [8, 7]
    assert SENTINEL2_L1C.band("B8").name == "B08" and SENTINEL2_L1C.band("b8a").name == "B8A"


def test_equivalent_bands_cross_sensor_by_role_and_wavelength():
    from eossl.bands import SENTINEL2_L1C, equivalent_bands

    s2 = SENTINEL2_L1C.band_names
    # Landsat TM red/NIR/SWIR1 stand in for S2 B04/B08/B11 (nearest centre wavelength)
    assert equivalent_bands(["b3", "b4", "b5"], s2) == ["B04", "B08", "B11"]
    # same sensor: exact name (any case), never a role substitution
    assert equivalent_bands(["B02", "b8a"], s2) == ["B02", "B8A"]
    # Landsat 8 red/NIR/SWIR1 (OLI numbering) stand in for the same S2 bands
    assert equivalent_bands(["OLI_B4", "OLI_B5", "OLI_B6"], s2) == ["B04", "B8A", "B11"]
    with pytest.raises(BandError, match="'VV'.*no sar counterpart"):
        equivalent_bands(["VV"], s2)
    with pytest.raises(BandError, match="'B99' is not in the data"):
        equivalent_bands(["B99"], s2)


def test_usgs_landsat_names_map_by_sensor():
    from eossl.bands import resolve_band_names

    usgs = ["SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B7"]
    tm = resolve_band_names(usgs, "landsat5")
    assert tm.names == ["b1", "b2", "b3", "b4", "b5", "b7"] and tm.sensor == "landsat5-tm"
    etm = resolve_band_names(["B3", "B4", "B8"], "landsat7")
    assert etm.names == ["b3", "b4", "b8"] and etm.sensor == "landsat7-etm"
    oli = resolve_band_names(["B2", "B3", "B4", "B5"], "landsat9")
    assert oli.names == ["OLI_B2", "OLI_B3", "OLI_B4", "OLI_B5"] and oli.sensor == "landsat9-oli"
    # the same file name means another band on another Landsat: red on OLI, NIR on TM
    assert get_sensor("landsat8").band("B4").role == "red"
    assert get_sensor("landsat5").band("B4").role == "nir"


def test_ambiguous_names_without_sensor_are_refused_with_the_choices():
    from eossl.bands import resolve_band_names

    with pytest.raises(BandError) as e:  # USGS names: TM or OLI numbering, never Sentinel-2
        resolve_band_names(["SR_B2", "SR_B3"], where="l.tif")
    assert "landsat5-tm" in str(e.value) and "sentinel2" not in str(e.value)
    with pytest.raises(BandError) as e:
        resolve_band_names(["B1", "B2", "B3", "B4"], where="stack.tif")
    msg = str(e.value)
    assert "stack.tif" in msg and "'B1'" in msg and "--sensor" in msg
    assert "sentinel2-l1c" in msg and "landsat5-tm" in msg and "landsat8-oli" in msg
    # unambiguous lists need no sensor; names no sensor has are kept as they are
    assert resolve_band_names(["B02", "B03", "B8A"]).sensor == "sentinel2-l1c"
    mixed = resolve_band_names(["B02", "B03", "VV", "VH"])
    assert mixed.names == ["B02", "B03", "VV", "VH"] and mixed.sensor is None
    assert resolve_band_names(["band001", "450.0nm"]).names == ["band001", "450.0nm"]


def test_a_band_the_sensor_preset_lacks_is_refused():
    from eossl.bands import resolve_band_names

    with pytest.raises(BandError, match="'B8A' is not a band of --sensor landsat8-oli"):
        resolve_band_names(["B4", "B8A"], "landsat8", where="x.tif")
    with pytest.raises(BandError, match="unknown sensor 'landsat6'"):
        resolve_band_names(["B4"], "landsat6")


def test_landsat7_is_etm_and_sidecar_wavelengths_follow_the_recorded_sensor():
    from eossl.bands import describe_bands, find_sensor

    assert find_sensor(["b3", "b4", "b5"], hint="landsat7-etm").name == "landsat7-etm"
    assert describe_bands(["b4"], "landsat7-etm") == ("landsat7-etm", [835.0])
    assert describe_bands(["b4"])[1] == [830.0]  # TM's centre when nothing says ETM+
    name, waves = describe_bands(["OLI_B4", "OLI_B5"])
    assert name == "landsat8-oli" and waves == [654.5, 865.0]
