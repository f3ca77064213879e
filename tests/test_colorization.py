"""Colorization pretraining: band split by role, Lab target, bottleneck decoder, loss, errors,
and a short real pretraining run whose checkpoint the probes accept."""

import json

import pytest
import torch

from eossl.bands import SENTINEL2_L1C, SENTINEL2_L2A, LANDSAT_ETM
from eossl.normalization import BandStats
from eossl.errors import ConfigError
from eossl.methods import get_method
from eossl.methods.colorization import (AlignedAugmentation, Colorization, ab_target,
                                        colorization_loss, lab_to_rgb, split_bands)
from eossl.models.decoders import ColorizationDecoder


def _stats(bands):
    n = len(bands)
    return BandStats(list(bands), [7.0] * n, [1.0] * n, [500.0] * n, [3000.0] * n).to_dict()


def test_split_uses_registry_roles():
    inputs, rgb = split_bands(SENTINEL2_L2A.band_names)
    # the paper's 9 BigEarthNet L2A input channels
    assert inputs == ["B01", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
    assert rgb == ["B04", "B03", "B02"]
    inputs, rgb = split_bands(["B08", "B02", "B11", "B04", "B03"])  # any order, a subset
    assert inputs == ["B08", "B11"] and rgb == ["B04", "B03", "B02"]
    # Landsat 7: the panchromatic band spans the visible range, so it is hidden too
    inputs, rgb = split_bands(LANDSAT_ETM.band_names)
    assert rgb == ["b3", "b2", "b1"] and "b8" not in inputs and "b4" in inputs


def test_method_encoder_sees_only_non_visible_bands():
    bands = SENTINEL2_L1C.band_names
    m = get_method("colorization")(bands=bands, stats=_stats(bands), crop_size=32)
    assert m.normalizer.bands == [b for b in bands if b not in ("B02", "B03", "B04")]
    assert m.backbone.in_chans == 10
    assert m.eossl_metadata()["bands"] == m.normalizer.bands
    assert m.hparams.bands == bands  # the method itself still takes the full stack
    # changing only the visible bands of the input must not change the encoder's code
    x = torch.rand(2, 13, 32, 32) * 3000
    y = x.clone()
    y[:, [1, 2, 3]] = torch.rand(2, 3, 32, 32) * 3000
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(x), m(y))


def test_errors_without_rgb_or_with_only_rgb():
    with pytest.raises(ConfigError, match="no red band"):
        Colorization(bands=["B08", "B11"], stats=_stats(["B08", "B11"]))
    with pytest.raises(ConfigError, match="only visible bands"):
        Colorization(bands=["B04", "B03", "B02"], stats=_stats(["B04", "B03", "B02"]))


def test_cli_refuses_rgb_less_data(sample_cache, capsys, tmp_path):
    from eossl.cli import main

    rc = main(["--cache", str(sample_cache), "pretrain", "--method", "colorization",
               "--bands", "B08,B11,B12", "--max-steps", "1", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "colorization needs" in err and "no red band" in err
    assert not (tmp_path / "r").exists()


def test_lab_target_range_and_round_trip(brandenburg):
    patches = brandenburg.patches("test")
    raw = torch.from_numpy(patches.images()[:32])
    stats = brandenburg.stats().subset(["B04", "B03", "B02"])
    idx = [brandenburg.bands.index(b) for b in ("B04", "B03", "B02")]
    lo, hi = torch.tensor(stats.q02), torch.tensor(stats.q98)
    L, ab = ab_target(raw[:, idx], lo, hi)
    assert L.shape == (32, 1, 16, 16) and ab.shape == (32, 2, 16, 16)
    assert 0 <= L.min() and L.max() <= 100 and 0 <= ab.min() and ab.max() <= 1
    assert ab.std() > 1e-3  # a real scene has some colour
    rgb = ((raw[:, idx] - lo.view(1, 3, 1, 1)) / (hi - lo).view(1, 3, 1, 1)).clamp(0, 1)
    assert torch.allclose(lab_to_rgb(L, ab), rgb, atol=2e-3)
    # grey has a = b = 0, i.e. 128/255 after scaling; pure red has a > 0
    grey = torch.full((1, 3, 2, 2), 1500.0)
    _, ab_grey = ab_target(grey, torch.zeros(3), torch.full((3,), 3000.0))
    assert torch.allclose(ab_grey, torch.full_like(ab_grey, 128 / 255), atol=1e-3)
    red = torch.tensor([3000.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    _, ab_red = ab_target(red, torch.zeros(3), torch.full((3,), 3000.0))
    assert ab_red[0, 0].mean() > 0.7


@pytest.mark.parametrize("size,reduction", [(16, 16), (32, 16), (24, 16), (64, 32), (32, 1)])
def test_decoder_shape_and_range(size, reduction):
    dec = ColorizationDecoder(512, size, reduction, blocks_per_stage=1)
    out = dec(torch.randn(3, 512) * 10)
    assert out.shape == (3, 2, size, size)
    assert out.min() >= 0 and out.max() <= 1
    # a true bottleneck: the decoder takes the code only
    assert dec.unpool.in_features == 512


def test_loss_gradient_term():
    torch.manual_seed(0)
    target = torch.rand(2, 2, 16, 16)
    pred = target + 0.1  # same gradients, constant offset
    plain, parts = colorization_loss(pred, target)
    assert set(parts) == {"l1"} and torch.isclose(plain, torch.tensor(1.0), atol=1e-5)
    with_grad, parts = colorization_loss(pred, target, gradient_weight=0.01)
    assert "gradient" in parts and parts["gradient"] < 1e-10
    noisy = target + 0.1 * torch.randn_like(target)
    a, _ = colorization_loss(noisy, target)
    b, parts = colorization_loss(noisy, target, gradient_weight=0.01)
    assert parts["gradient"] > 1e-3 and torch.isclose(b, a + 0.01 * parts["gradient"])


def test_augmentation_keeps_input_and_target_aligned():
    torch.manual_seed(1)
    base = torch.rand(64, 1, 16, 16)
    stack = torch.cat([base, base * 2, base * 3], dim=1)  # "bands" that must move together
    out = AlignedAugmentation()(stack)
    assert torch.allclose(out[:, 1], 2 * out[:, 0], atol=1e-5)
    assert torch.allclose(out[:, 2], 3 * out[:, 0], atol=1e-5)
    changed = ~torch.isclose(out, stack).flatten(1).all(1)
    assert 0.5 < changed.float().mean() < 0.95  # about 3/4 of the samples are transformed


def test_pretrain_on_real_scene_picture_checkpoint_probe(brandenburg, sample_cache, tmp_path,
                                                         small_evaluations):
    from eossl.checkpoint import load_encoder
    from eossl.cli import main
    from eossl.train import pretrain

    cfg = {"method": "colorization", "seed": 0,
           "model": {"backbone": "resnet18", "stem_stride": 2, "gradient_weight": 0.01,
                     "decoder_blocks": 1, "picture_patches": 3},
           "data": {"name": "brandenburg", "crop_size": 32, "batch_size": 8,
                    "crops_per_epoch": 64, "probe_patch_size": 16},
           "trainer": {"max_steps": 3, "accelerator": "cpu", "val_every_n_steps": 3}}
    res = pretrain(cfg, tmp_path / "run", cache=sample_cache, progress=False)
    assert res.steps == 3
    picture = tmp_path / "run" / "colorization.png"
    assert picture.stat().st_size > 5000 and picture.read_bytes()[:4] == b"\x89PNG"
    metrics = (tmp_path / "run" / "logs" / "metrics.csv").read_text()
    assert "val/knn_acc" in metrics  # the online kNN probe fed the encoder its own bands

    enc = load_encoder(res.checkpoint)
    assert enc.bands == [b for b in brandenburg.bands if b not in ("B02", "B03", "B04")]
    rc = main(["--cache", str(sample_cache), "probe", "--checkpoint",
               f"colorization={res.checkpoint}", "--fractions", "1", "--seeds", "0",
               "--layers", "last", "--out", str(tmp_path / "probe")])
    assert rc == 0
    records = json.loads((tmp_path / "probe" / "results.json").read_text())["records"]
    linear = [r for r in records if r["table"] == "Linear probe (last stage)"]
    assert {r["model"] for r in linear} == {"spectral baseline", "random init", "colorization"}
    acc = [r["value"] for r in linear if r["model"] == "colorization" and
           r["metric"] == "accuracy"]
    assert acc and all(0 < a <= 1 for a in acc)
    # the random twin reads the same 10 non-visible bands as the colorization encoder
    rows = {r["model"]: r for r in records if r["table"] == "_model"}
    assert rows["random init"]["signature"] == rows["colorization"]["signature"]

    rc = main(["--cache", str(sample_cache), "evaluate", "colorization-picture", "--checkpoint",
               str(res.checkpoint), "--out", str(tmp_path / "pic"), "--patches", "2"])
    assert rc == 0 and (tmp_path / "pic" / "colorization.png").stat().st_size > 5000
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["method"] == "colorization"
