import kornia.augmentation as K
import pytest
import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d

from eossl.errors import ConfigError, DataError
from eossl.views import (BandGrayscale, BandJitter, ContrastiveViews, build_views, crop_affine,
                         gaussian_blur, sampling_grid)


@pytest.mark.parametrize("chans", [1, 3, 13, 200])
def test_shape_any_bands_finite(chans):
    x = torch.randn(4, chans, 40, 40)
    y = ContrastiveViews(16)(x)
    assert y.shape == (4, chans, 16, 16)
    assert torch.isfinite(y).all()
    v0, v1 = ContrastiveViews(16).pair(x)
    assert v0.shape == v1.shape == (4, chans, 16, 16) and v0.is_contiguous()
    assert not torch.allclose(v0, v1)  # independent draws


def test_dtype_and_device_kept():
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        for dtype in (torch.float32, torch.float64):
            x = torch.randn(3, 5, 24, 24, device=dev, dtype=dtype)
            y = build_views("contrastive", size=16)(x)
            assert y.device == x.device and y.dtype == dtype


def test_independent_params_per_sample():
    torch.manual_seed(0)
    x = torch.randn(1, 6, 32, 32).expand(8, -1, -1, -1).contiguous()
    y = ContrastiveViews(16)(x)
    flat = y.flatten(1)
    assert all(not torch.allclose(flat[0], flat[i]) for i in range(1, 8))


def test_deterministic_under_a_seed_and_precision_independent():
    x = torch.randn(8, 4, 24, 24)
    views = ContrastiveViews(16)
    torch.manual_seed(3)
    a = views.pair(x)
    torch.manual_seed(3)
    b = views.pair(x)
    torch.manual_seed(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a bf16 run gets the same views
        c = views.pair(x)
    torch.manual_seed(4)
    d = views.pair(x)
    for u, v, w in zip(a, b, c):
        assert torch.equal(u, v) and torch.equal(u, w) and w.dtype == torch.float32
    assert not torch.allclose(a[0], d[0])


@pytest.mark.parametrize("shape", [(64, 64, 64), (40, 52, 16), (20, 20, 8)])
def test_crop_reads_what_kornias_random_resized_crop_reads(shape):
    """The fused resampling, given kornia's boxes, gives kornia's crop (slice + bilinear
    resize, align_corners=True), up to float rounding of the positions."""
    h, w, s = shape
    torch.manual_seed(0)
    x = torch.randn(32, 5, h, w)
    rrc = K.RandomResizedCrop((s, s), scale=(0.08, 1.0))
    params = rrc.forward_parameters(x.shape)
    grid = sampling_grid(crop_affine(params["src"], h, w).float(), s)
    ours = F.grid_sample(x, grid, align_corners=True, padding_mode="border")
    torch.testing.assert_close(ours, rrc(x, params=params), rtol=0, atol=1e-4)


def _ramps(n, size):
    """(n, 2, size, size): band 0 is the column index, band 1 the row index."""
    r = torch.arange(size, dtype=torch.float32)
    return torch.stack(torch.meshgrid(r, r, indexing="xy"))[None].expand(n, -1, -1,
                                                                          -1).contiguous()


def test_crop_areas_and_shapes_follow_kornias_random_resized_crop():
    """On position ramps a view's value range is its crop box: the areas and aspect ratios
    have kornia's RandomResizedCrop distribution (a box sampler bug would shift them)."""
    n, size = 2000, 33
    x = _ramps(n, size)

    def boxes(v):
        ext = (v.amax(dim=(-2, -1)) - v.amin(dim=(-2, -1))) / (size - 1)  # (n, 2) extents
        return ext.prod(1), (ext.max(1).values / ext.min(1).values.clamp_min(1e-6))

    torch.manual_seed(0)
    ours = boxes(ContrastiveViews(16, scale=(0.2, 1.0), jitter_p=0, gray_p=0, blur_p=0)(x))
    torch.manual_seed(1)
    ref = boxes(K.RandomResizedCrop((16, 16), scale=(0.2, 1.0))(x))
    for a, b in zip(ours, ref):
        assert abs(a.mean() - b.mean()) < 0.02 and abs(a.median() - b.median()) < 0.03
    assert ours[0].min() > 0.15 and ours[0].max() <= 1.0


def test_each_op_is_drawn_at_its_rate():
    """jitter 0.8, grayscale 0.2, blur 0.5 per sample, independently (binomial bounds, 1500
    samples: each rate within about 4 standard deviations)."""
    n, c, size = 1500, 4, 12
    torch.manual_seed(0)
    const = torch.arange(c, dtype=torch.float32)[None, :, None, None].expand(n, c, size, size)
    v = ContrastiveViews(size, scale=(1.0, 1.0), blur_p=0.0)(const.contiguous())
    gray = (v.std(dim=1) < 1e-5).all(-1).all(-1)
    moved = (v.mean(dim=(-2, -1)) - torch.arange(c)).abs().amax(1) > 1e-5
    assert abs(gray.float().mean() - 0.2) < 0.045
    assert abs(moved[~gray].float().mean() - 0.8) < 0.045  # jitter changes the band values
    noise = torch.randn(n, 1, size, size)
    b = ContrastiveViews(size, scale=(1.0, 1.0), jitter_p=0, gray_p=0,
                         blur_sigma=(1.0, 1.0))(noise)
    smoothed = b.std(dim=(-2, -1)).flatten() < 0.8 * noise.std(dim=(-2, -1)).flatten()
    assert abs(smoothed.float().mean() - 0.5) < 0.055


def test_blur_is_kornias_gaussian_blur():
    torch.manual_seed(0)
    for m, c, s, k in [(9, 13, 64, 7), (5, 3, 9, 3), (3, 40, 32, 5)]:
        x, sigma = torch.randn(m, c, s, s), torch.rand(m) * 1.9 + 0.1
        ref = gaussian_blur2d(x, (k, k), sigma[:, None].expand(-1, 2), border_type="reflect")
        torch.testing.assert_close(gaussian_blur(x, sigma, k), ref, rtol=0, atol=1e-5)


def test_band_jitter_per_band_and_grayscale():
    torch.manual_seed(0)
    x = torch.zeros(4, 10, 8, 8)
    shifted = BandJitter(brightness=0.4, contrast=0.4, p=1.0)(x)
    band_means = shifted.mean(dim=(-2, -1))
    assert band_means.std(dim=1).min() > 0      # each band its own shift
    assert band_means.abs().max() <= 0.4 + 1e-6
    assert torch.equal(BandJitter(p=0.0)(x + 1), x + 1)
    # the fused form is the contrast change around the band mean, then the shift
    y = torch.randn(6, 5, 8, 8)
    jit = BandJitter(p=0.5)
    torch.manual_seed(1)
    gain, shift = jit.draw(6, 5)
    mean = y.mean(dim=(-2, -1), keepdim=True)
    torch.manual_seed(1)
    torch.testing.assert_close(jit(y), (y - mean) * gain + mean + shift)

    src = torch.randn(2, 7, 8, 8)
    g = BandGrayscale(p=1.0)(src)
    assert torch.allclose(g, g[:, :1].expand_as(g)) and not torch.equal(g, src)
    assert torch.equal(BandGrayscale(p=0.0)(src), src)


def test_bad_input_and_names():
    with pytest.raises(DataError):
        ContrastiveViews(16)(torch.randn(3, 16, 16))
    with pytest.raises(DataError):
        ContrastiveViews(16)(torch.zeros(2, 3, 16, 16, dtype=torch.int64))
    with pytest.raises(ConfigError, match="contrastive"):
        build_views("simclr-ish", size=16)
    with pytest.raises(ConfigError):
        ContrastiveViews(16, scale=(0.5, 0.2))
    with pytest.raises(ConfigError, match="blur"):
        ContrastiveViews(1)
