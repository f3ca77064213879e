"""Spectral-spatial method: the mask, the masked loss, any band count, and a real pretrain run."""

import resource

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from eossl.data.sources import open_source
from eossl.errors import BandError, ConfigError
from eossl.methods import get_method
from eossl.checkpoint import load_encoder
from eossl.methods.spectral import BandDropout, masked_mse, spectral_mask


def test_mask_hides_the_asked_share_per_pixel():
    torch.manual_seed(0)
    m = spectral_mask(1000, 13, 0.5)
    assert m.shape == (1000, 13) and m.dtype == torch.bool
    assert (m.sum(1) == 6).all()  # round(0.5 * 13) = 6 for every pixel, not just on average
    # an independent draw per pixel: every band is hidden about half the time
    assert m.float().mean(0).min() > 0.35 and m.float().mean(0).max() < 0.6
    m200 = spectral_mask(50, 200, 0.5)
    assert (m200.sum(1) == 100).all()
    g = spectral_mask(100, 12, 0.5, group_size=4)  # 3 groups of 4 -> 2 groups hidden
    assert (g.sum(1) == 8).all()
    assert (g.view(100, 3, 4).float().std(-1) == 0).all()  # whole groups, contiguous
    assert (spectral_mask(10, 13, 0.99).sum(1) == 12).all()  # something stays visible
    with pytest.raises(ConfigError, match="mask_ratio"):
        spectral_mask(1, 13, 1.0)


def test_loss_counts_only_masked_bands():
    target = torch.zeros(4, 6)
    pred = torch.zeros(4, 6)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, :3] = True
    pred[:, 3:] = 100.0  # huge error on visible bands: must not count
    assert masked_mse(pred, target, mask).item() == 0.0
    pred[:, 0] = 2.0  # error 4 on one of three masked bands
    assert masked_mse(pred, target, mask).item() == pytest.approx(4 / 3)


def test_pixel_loss_gradient_flows_only_through_masked_bands(brandenburg):
    torch.manual_seed(0)
    model = get_method("spectral")(bands=brandenburg.bands, stats=brandenburg.stats().to_dict(),
                                   crop_size=16, pixels_per_image=1)
    x = torch.randn(1, 13, 16, 16)  # one sampled pixel: 6 bands hidden, 7 visible
    loss, mask = model.pixel_loss(x)
    assert mask.shape == (1, 13) and mask.sum() == 6
    loss.backward()
    # the decoder's outputs for visible bands must get no gradient, hidden ones must
    g = model.pixel_decoder[-1].bias.grad
    assert torch.all((g != 0) == mask[0])


def _write_cube(path, bands=200, size=48, seed=0):
    rng = np.random.default_rng(seed)
    wl = np.linspace(400, 2500, bands)
    base = 1000 + 800 * np.sin(wl / 300.0)
    img = (base[:, None, None] * rng.uniform(0.5, 1.5, (1, size, size))
           + rng.normal(0, 30, (bands, size, size))).astype("float32")
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=bands,
                       dtype="float32", crs="EPSG:32633",
                       transform=from_origin(400000, 5800000, 30, 30)) as dst:
        dst.write(img)
    return wl


def _200_band_step(folder) -> float:
    """One training step and one embedding pass on a 200-band cube; returns peak RSS (MiB)."""
    from pathlib import Path

    folder = Path(folder)
    wl = _write_cube(folder / "cube.tif")
    src = open_source(str(folder / "cube.tif"), band_names=[f"{w:.1f}nm" for w in wl])
    assert len(src.bands) == 200 and src.bands[0] == "400.0nm"
    torch.manual_seed(0)
    model = get_method("spectral")(bands=src.bands, stats=src.stats().to_dict(), crop_size=32)
    crops = src.crops(32, 16, seed=0)
    batch = {"image": torch.stack([crops[i]["image"] for i in range(16)])}
    assert batch["image"].shape == (16, 200, 32, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = model.stem.net[0].weight.detach().clone()
    loss = model.training_step(batch, 0)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.stem.net[0].weight)
    enc = model.encoder().eval()
    with torch.no_grad():
        pooled = enc(batch["image"])
        pix = enc.pixel_features(batch["image"])
    assert pooled.shape == (16, 512) and pix.shape == (16, 64, 32, 32)
    # VmHWM, not ru_maxrss: the latter survives exec, so a process started from a big pytest
    # would report pytest's own peak.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def test_200_band_training_step_and_embedding_pass(tmp_path):
    # In a fresh interpreter: inside pytest the peak would also count every earlier test.
    import subprocess
    import sys

    res = subprocess.run([sys.executable, __file__, str(tmp_path)], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    peak_mib = float(res.stdout.strip().splitlines()[-1])
    print(f"peak RSS of the 200-band step + embedding pass: {peak_mib:.0f} MiB")
    assert peak_mib < 6000


def test_geotiff_band_names(tmp_path):
    _write_cube(tmp_path / "c.tif", bands=5, size=20)
    cube = str(tmp_path / "c.tif")
    assert open_source(cube).bands == [f"band00{i}" for i in range(1, 6)]
    with pytest.raises(BandError, match="5 bands but --band-names gives 2"):
        open_source(cube, band_names=["a", "b"])
    sub = open_source(cube, bands="band003,band001")
    assert sub.bands == ["band003", "band001"]
    full = open_source(cube).scenes[0].load()
    np.testing.assert_array_equal(sub.scenes[0].read((0, 0, 4, 4)), full[[2, 0], :4, :4])


def test_band_dropout_zeroes_whole_bands():
    torch.manual_seed(0)
    x = torch.ones(64, 20, 4, 4)
    y = BandDropout(p=1.0, share=0.5)(x)
    per_band = y.mean((2, 3))
    assert set(per_band.unique().tolist()) <= {0.0, 1.0}
    assert 0.3 < (per_band == 0).float().mean() < 0.7


def test_pretrain_real_scene_writes_a_loadable_checkpoint(brandenburg, sample_cache, tmp_path):
    from eossl.config import load_config
    from eossl.train import pretrain

    cfg = load_config(None, {"method": "spectral", "data.batch_size": 8,
                             "data.crops_per_epoch": 32, "trainer.max_steps": 3,
                             "trainer.max_time": None, "trainer.accelerator": "cpu"})
    res = pretrain(cfg, tmp_path / "run", cache=sample_cache, progress=False)
    assert res.steps == 3
    enc = load_encoder(res.checkpoint)
    assert enc.bands == brandenburg.bands and enc.backbone.name == "spectral_resnet18"
    x = torch.from_numpy(brandenburg.patches("test").images()[:4])
    with torch.no_grad():
        assert enc(x).shape == (4, 512)
        assert enc.pixel_features(x).shape == (4, 64, 16, 16)
    ckpt = torch.load(res.checkpoint, weights_only=True)
    assert ckpt["eossl"]["method"] == "spectral"
    assert ckpt["eossl"]["backbone_kwargs"] == {"pixel_dim": 64, "pixel_hidden": 128}


def test_spectral_backbone_feeds_a_unet_through_its_pixel_stem():
    """The segmentation U-Net reads forward_intermediates: for a spectral backbone the ResNet
    stages must see the stem's pixel embeddings (a 13-band input went straight into the
    pixel_dim-channel first conv before, and failed)."""
    from eossl.models.backbones import build_backbone
    from eossl.models.unet import UNet

    torch.manual_seed(0)
    bb = build_backbone("spectral_resnet18", in_chans=13, stem_stride=2)
    x = torch.randn(2, 13, 32, 32)
    maps = bb.pyramid(x)
    assert maps[0].shape[0] == 2 and maps[-1].shape[1] == 512
    # the same feature as forward_features: the deepest map is what the pooled head sees
    bb.eval()
    with torch.no_grad():
        deep = bb.pyramid(x)[-1]
        assert torch.allclose(deep, bb.model.forward_features(x), atol=1e-5)
    net = UNet(bb, 8, mode="logits")
    assert net(x).shape == (2, 8, 32, 32)


if __name__ == "__main__":  # the fresh process of test_200_band_training_step_and_embedding_pass
    import sys

    torch.set_num_threads(2)
    print(_200_band_step(sys.argv[1]))
