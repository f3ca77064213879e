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
    assert get_sensor("landsat8-oli").rgb() == ["b4", "b3", "b2"]
    # colorization input: everything but the visible bands (for L2A the 9 of methods.md)
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
    out_t = select_bands(t, names, ["b4", "B8"], axis=1)  # loose spellings are accepted
    assert torch.equal(out_t[:, 0], t[:, 2]) and torch.equal(out_t[:, 1], t[:, 3])


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
    assert band_indices(SENTINEL2_L1C.band_names, ["b8a", "B8"]) == [8, 7]


def test_equivalent_bands_cross_sensor_by_role_and_wavelength():
    from eossl.bands import SENTINEL2_L1C, equivalent_bands

    s2 = SENTINEL2_L1C.band_names
    # Landsat TM red/NIR/SWIR1 stand in for S2 B04/B08/B11 (nearest centre wavelength)
    assert equivalent_bands(["b3", "b4", "b5"], s2) == ["B04", "B08", "B11"]
    # same sensor: exact or loose spelling, never a role substitution
    assert equivalent_bands(["B02", "b8a"], s2) == ["B02", "B8A"]
    with pytest.raises(BandError, match="'VV'.*no sar counterpart"):
        equivalent_bands(["VV"], s2)
    with pytest.raises(BandError, match="'B99' is not in the data"):
        equivalent_bands(["B99"], s2)
