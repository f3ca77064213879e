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


# ------------------------------------------------------------------ more readers
def _band_file(path, arr, res, crs="EPSG:32633"):
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[1], height=arr.shape[0],
                       count=1, dtype=arr.dtype, crs=crs,
                       transform=from_origin(300000, 5800000, res, res)) as dst:
        dst.write(arr[None])


@pytest.fixture(scope="module")
def band_folder(tmp_path_factory, brandenburg):
    """Real pixels as per-band files at 10, 20 and 60 m (one tile: 120 x 180 m x 10)."""
    scene = brandenburg.scenes[0]
    folder = tmp_path_factory.mktemp("bandfiles")
    a = scene.read((100, 100, 60, 90), bands=["B02", "B05", "B09"]).astype("uint16")
    _band_file(folder / "T_B02.tif", a[0], 10)
    _band_file(folder / "T_B05.tif", a[1, ::2, ::2].copy(), 20)
    _band_file(folder / "T_B09.tif", a[2, ::6, ::6].copy(), 60)
    return folder


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 61), order=st.permutations(["B02", "B05", "B09"]))
def test_stacking_in_blocks_equals_one_whole_read(band_folder, tmp_path_factory, rows, order):
    """The block-by-block stack builder gives exactly the pixels of one whole-band resampled
    read, for any block height (blocks cut 20 and 60 m pixels at fractional rows) and band
    order."""
    from rasterio.enums import Resampling

    from eossl.data.readers import find_band_files, write_band_stack

    files = find_band_files(band_folder)
    out = tmp_path_factory.mktemp("blk") / "s.tif"
    write_band_stack(files, list(order), out, block_rows=rows)
    with rasterio.open(out) as s:
        got, names = s.read(), s.descriptions
        assert (s.height, s.width, s.res) == (60, 90, (10.0, 10.0))
    assert list(names) == list(order)
    for i, b in enumerate(order):
        with rasterio.open(files[b]) as src:
            want = src.read(1, out_shape=(60, 90), resampling=Resampling.bilinear)
        np.testing.assert_array_equal(got[i], want)


@FAST
@given(data=st.data())
def test_valid_mask_is_finite_and_not_nodata(tmp_path_factory, data):
    h, w = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 12))
    vals = st.sampled_from([0.0, 1.5, 7.0, float("nan"), -3.0])
    arr = np.array(data.draw(st.lists(vals, min_size=2 * h * w, max_size=2 * h * w)),
                   np.float32).reshape(2, h, w)
    path = tmp_path_factory.mktemp("vm") / "v.tif"
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=2, dtype="float32",
                       transform=from_origin(0, 0, 10, 10)) as dst:
        dst.write(arr)
    s = SceneStack(path, ["B02", "B03"], nodata=0.0)
    want = np.isfinite(arr).all(axis=0) & (arr != 0).all(axis=0)
    np.testing.assert_array_equal(s.valid_mask(), want)


# ------------------------------------------------------------------ more view builders
def _band_constant(n, c, size):
    """(n, c, size, size): channel i holds the value i everywhere (which band is which)."""
    return torch.arange(c, dtype=torch.float32)[None, :, None, None].expand(n, c, size,
                                                                              size).contiguous()


@settings(max_examples=20, deadline=None)
@given(c=st.integers(2, 14), data=st.data(), seed=st.integers(0, 2**16))
def test_band_views_draw_distinct_pool_bands_and_never_mix_them(c, data, seed):
    from eossl.methods.rsbyol import BandViews, spatial_views

    names = [f"b{i}" for i in range(c)]
    pool = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=c, unique=True))
    k = data.draw(st.integers(1, len(pool)))
    torch.manual_seed(seed)
    views = BandViews(names, pool, k, spatial_views(size=8))
    v = views(_band_constant(3, c, 16))
    assert v.shape == (3, k, 8, 8)
    # crops, flips, rotations and blur move pixels, never values between bands
    flat = v.reshape(3, k, -1)
    torch.testing.assert_close(flat, flat[:, :, :1].expand_as(flat), rtol=0, atol=1e-4)
    drawn = flat[:, :, 0].round().long()
    allowed = {names.index(b) for b in pool}
    for row in drawn.tolist():
        assert len(set(row)) == k and set(row) <= allowed


@settings(max_examples=15, deadline=None)
@given(c=st.integers(1, 14), size=st.sampled_from([8, 16]), seed=st.integers(0, 2**16))
def test_seasonal_views_any_band_count(c, size, seed):
    from eossl.methods.seco import SeasonalViews

    torch.manual_seed(seed)
    t = [torch.randn(2, c, 24, 24) for _ in range(3)]
    out = SeasonalViews(size=size)(*t)
    assert len(out) == 4 and all(o.shape == (2, c, size, size) for o in out)
    assert all(torch.isfinite(o).all() for o in out)
    # the query is a crop only: no band mixing, values stay per-band constants
    q = SeasonalViews(size=size)(_band_constant(2, c, 24), *t[1:])[0]
    torch.testing.assert_close(q, _band_constant(2, c, size), rtol=0, atol=1e-4)


def _dihedral(img):
    """The 8 rotations and reflections of a (..., S, S) image."""
    rots = [torch.rot90(img, r, dims=(-2, -1)) for r in range(4)]
    return rots + [r.flip(-1) for r in rots]


@settings(max_examples=20, deadline=None)
@given(size=st.integers(1, 12), n=st.integers(1, 5), seed=st.integers(0, 2**16),
       rot90=st.booleans())
def test_whole_image_view_is_a_rotation_or_reflection(size, n, seed, rot90):
    """A view whose crop is the whole image is the image turned by one element of the
    dihedral group (without rot90: the identity or a flip), exactly up to float rounding."""
    torch.manual_seed(seed)
    x = torch.randn(n, 3, size, size)
    y = ContrastiveViews(size, scale=(1.0, 1.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0,
                         rot90=rot90)(x)
    for i in range(n):
        allowed = _dihedral(x[i])
        allowed = allowed if rot90 else [allowed[0], allowed[2], allowed[4], allowed[6]]
        assert any(torch.allclose(y[i], a, atol=1e-5) for a in allowed)


@settings(max_examples=15, deadline=None)
@given(c=st.integers(1, 14), seed=st.integers(0, 2**16))
def test_geometric_contrastive_views_keep_bands_apart(c, seed):
    """With jitter, grayscale and blur off, a contrastive view is pure geometry: each output
    band comes from the same input band."""
    torch.manual_seed(seed)
    v = ContrastiveViews(size=8, jitter_p=0.0, gray_p=0.0, blur_p=0.0)(_band_constant(3, c, 20))
    torch.testing.assert_close(v, _band_constant(3, c, 8), rtol=0, atol=1e-4)
