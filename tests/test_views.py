import pytest
import torch

from eossl.errors import ConfigError, DataError
from eossl.views import BandGrayscale, BandJitter, ContrastiveViews, RandomRot90, build_views


@pytest.mark.parametrize("chans", [1, 3, 13, 200])
def test_shape_any_bands_finite(chans):
    x = torch.randn(4, chans, 40, 40)
    y = ContrastiveViews(16)(x)
    assert y.shape == (4, chans, 16, 16)
    assert torch.isfinite(y).all()


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


def test_band_jitter_per_band_and_grayscale_and_rot90():
    torch.manual_seed(0)
    x = torch.zeros(4, 10, 8, 8)
    shifted = BandJitter(brightness=0.4, contrast=0.4, p=1.0)(x)
    band_means = shifted.mean(dim=(-2, -1))
    assert band_means.std(dim=1).min() > 0      # each band its own shift
    assert band_means.abs().max() <= 0.4 + 1e-6
    assert torch.equal(BandJitter(p=0.0)(x + 1), x + 1)

    g = BandGrayscale(p=1.0)(torch.randn(2, 7, 8, 8))
    assert torch.allclose(g, g[:, :1].expand_as(g))

    img = torch.arange(16.0).view(1, 1, 4, 4).expand(64, 3, -1, -1)
    r = RandomRot90()(img)
    rots = [torch.rot90(img[0], k, dims=(-2, -1)) for k in range(4)]
    ks = [next(k for k in range(4) if torch.equal(r[i], rots[k])) for i in range(64)]
    assert set(ks) == {0, 1, 2, 3}  # exact rotations, all four drawn


def test_bad_input_and_names():
    with pytest.raises(DataError):
        ContrastiveViews(16)(torch.randn(3, 16, 16))
    with pytest.raises(DataError):
        ContrastiveViews(16)(torch.zeros(2, 3, 16, 16, dtype=torch.int64))
    with pytest.raises(ConfigError, match="contrastive"):
        build_views("simclr-ish", size=16)
    with pytest.raises(ConfigError):
        ContrastiveViews(16, scale=(0.5, 0.2))
