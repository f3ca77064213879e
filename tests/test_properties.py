"""Property-based tests (hypothesis): readers, band selection, view builders and the geometric
correspondence used by dense pretraining hold for any shape, window and band list."""

import numpy as np
import pytest
import rasterio
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.transform import from_origin

from eossl.bands import get_sensor, select_bands
from eossl.data.readers import SceneStack
from eossl.errors import DataError
from eossl.export import match_bands
from eossl.views import ContrastiveViews

S2 = get_sensor("sentinel2-l1c").band_names
FAST = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory, brandenburg):
    """A 5-band crop of the real scene, tiled 16 px so windows cross tile edges."""
    scene = brandenburg.scenes[0]
    arr = scene.read((300, 500, 70, 90), bands=["B02", "B03", "B04", "B08", "B11"])
    path = tmp_path_factory.mktemp("props") / "s.tif"
    with rasterio.open(path, "w", driver="GTiff", width=90, height=70, count=5, dtype="float32",
                       crs=scene.crs, transform=from_origin(0, 0, 10, 10), tiled=True,
                       blockxsize=16, blockysize=16) as dst:
        dst.write(arr)
    return path, arr


@FAST
@given(data=st.data())
def test_window_reads_equal_slices_of_the_full_read(stack_file, data):
    path, arr = stack_file
    bands = ["B02", "B03", "B04", "B08", "B11"]
    s = SceneStack(path, bands)
    r = data.draw(st.integers(0, 69))
    c = data.draw(st.integers(0, 89))
    h = data.draw(st.integers(1, 70 - r))
    w = data.draw(st.integers(1, 90 - c))
    pick = data.draw(st.permutations(bands).flatmap(
        lambda p: st.integers(1, 5).map(lambda n: p[:n])))
    got = s.read((r, c, h, w), bands=list(pick))
    idx = [bands.index(b) for b in pick]
    np.testing.assert_array_equal(got, arr[idx, r:r + h, c:c + w])
    s.load()  # the in-memory path must agree with the windowed file path
    np.testing.assert_array_equal(s.read((r, c, h, w), bands=list(pick)), got)


@settings(max_examples=60, deadline=None)
@given(perm=st.permutations(S2), n=st.integers(1, len(S2)))
def test_band_selection_round_trips(perm, n):
    wanted = list(perm[:n])
    x = np.arange(len(S2) * 2, dtype=np.float32).reshape(len(S2), 2)
    sel = select_bands(x, S2, wanted)
    assert sel.shape == (n, 2)
    # selecting back in the original order of the chosen bands inverts the permutation
    back = select_bands(sel, wanted, [b for b in S2 if b in wanted])
    np.testing.assert_array_equal(back, x[[S2.index(b) for b in S2 if b in wanted]])
    t = select_bands(torch.from_numpy(x), S2, wanted)
    np.testing.assert_array_equal(t.numpy(), sel)
    # the export loader's mapping picks the same channels by name
    idx = match_bands(wanted, S2, reorder=True)
    np.testing.assert_array_equal(x[idx] if idx is not None else x, sel)


@settings(max_examples=15, deadline=None)
@given(bands=st.integers(1, 14), size=st.sampled_from([8, 16, 24]),
       n=st.integers(2, 4), seed=st.integers(0, 2**16))
def test_contrastive_views_any_band_count(bands, size, n, seed):
    torch.manual_seed(seed)
    x = torch.randn(n, bands, 32, 32)
    v = ContrastiveViews(size=size)(x)
    assert v.shape == (n, bands, size, size)
    assert torch.isfinite(v).all()


try:  # the dense-pretraining helper's geometric correspondence (methods/dense.py)
    from eossl.methods.dense import (ViewParams, make_view, sample_correspondences,
                                     source_to_view, view_to_source)
except ImportError:  # pragma: no cover
    ViewParams = None

view_params = st.builds(lambda top, left, hf, vf, k: (top, left, hf, vf, k),
                        st.integers(0, 8), st.integers(0, 8), st.booleans(), st.booleans(),
                        st.integers(0, 7))


@pytest.mark.skipif(ViewParams is None, reason="methods/dense.py has no correspondence helpers")
@settings(max_examples=80, deadline=None)
@given(a=view_params, b=view_params, size=st.integers(8, 16))
def test_dense_correspondences_point_at_the_same_ground_pixel(a, b, size):
    src_size = size + 8
    p1, p2 = ViewParams(*a), ViewParams(*b)
    # an image whose two channels are the row and column of each source pixel
    rr, cc = torch.meshgrid(torch.arange(src_size), torch.arange(src_size), indexing="ij")
    src = torch.stack([rr, cc]).float()
    v1, v2 = make_view(src, p1, size), make_view(src, p2, size)
    if abs(p1.top - p2.top) >= size or abs(p1.left - p2.left) >= size:
        with pytest.raises(DataError, match="do not overlap"):  # no shared ground pixel
            sample_correspondences(p1, p2, size, n=50)
        return
    i1, i2 = sample_correspondences(p1, p2, size, n=50, generator=torch.Generator().manual_seed(0))
    assert len(i1) == len(i2) > 0
    f1, f2 = v1.reshape(2, -1), v2.reshape(2, -1)
    assert torch.equal(f1[:, i1], f2[:, i2])  # same source pixel under both views
    # the two maps are inverse to each other on every view pixel
    r, c = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    sr, sc = view_to_source(r, c, p1, size)
    assert torch.equal(torch.stack([sr, sc]).float(), v1)
    br, bc = source_to_view(sr, sc, p1, size)
    assert torch.equal(br, r) and torch.equal(bc, c)
