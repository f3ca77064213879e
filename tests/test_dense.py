"""Dense contrastive pretraining (Embedding Earth): exact correspondences, loss, U-Net, and a
short real pretraining run through eossl.train.pretrain."""

from __future__ import annotations

import itertools

import pytest
import torch

from eossl.errors import ConfigError, DataError
from eossl.methods.dense import (ViewParams, dense_info_nce, make_view, sample_correspondences,
                                 source_to_view, view_to_source)
from eossl.models.backbones import build_backbone
from eossl.models.unet import UNet


def _coord_image(s: int) -> torch.Tensor:
    """A 2-band image whose pixel values are their own (row, col)."""
    r, c = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    return torch.stack([r, c]).float()


ALL_PARAMS = [ViewParams(t, l, h, v, k) for (t, l), h, v, k in itertools.product(
    [(0, 0), (3, 7), (8, 1)], [False, True], [False, True], range(4))]


@pytest.mark.parametrize("p", ALL_PARAMS, ids=str)
def test_view_to_source_is_exact_on_a_coordinate_image(p):
    src, size = _coord_image(20), 12
    view = make_view(src, p, size)
    i, j = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r, c = view_to_source(i, j, p, size)
    assert torch.equal(view[0], r.float()) and torch.equal(view[1], c.float())
    # and the forward map is its inverse
    i2, j2 = source_to_view(r, c, p, size)
    assert torch.equal(i2, i) and torch.equal(j2, j)


def test_sampled_pairs_see_the_same_ground_pixel():
    src, size = _coord_image(24), 16
    g = torch.Generator().manual_seed(0)
    for p1, p2 in [(ViewParams(0, 0, True, False, 1), ViewParams(5, 8, False, True, 3)),
                   (ViewParams(8, 2, True, True, 2), ViewParams(1, 6, False, False, 1))]:
        a, b = sample_correspondences(p1, p2, size, 50, generator=g)
        assert len(a) == len(b) == 50 and len(set(a.tolist())) == 50
        v1 = make_view(src, p1, size).flatten(1)
        v2 = make_view(src, p2, size).flatten(1)
        assert torch.equal(v1[:, a], v2[:, b])
    with pytest.raises(DataError, match="do not overlap"):
        sample_correspondences(ViewParams(0, 0, False, False, 0),
                               ViewParams(0, 20, False, False, 0), 16, 10)


def test_info_nce_shapes_and_positive_signal():
    torch.manual_seed(0)
    n, p, d = 3, 20, 8
    q = torch.nn.functional.normalize(torch.randn(n, p, d), dim=-1)
    aligned = dense_info_nce(q, q.clone(), temperature=0.1, cross_negatives=16)
    shuffled = dense_info_nce(q, q[:, torch.randperm(p)], temperature=0.1, cross_negatives=16)
    assert aligned.ndim == 0 and torch.isfinite(aligned)
    assert aligned < shuffled  # the loss rewards matching the true positive
    # cross-image negatives: the logit count grows, and never include own-image keys twice
    base = dense_info_nce(q, q.clone(), cross_negatives=0)
    assert base < aligned + 1e-6 or torch.isclose(base, aligned)
    with pytest.raises(DataError, match="one shape"):
        dense_info_nce(q, q[:, :5])


def test_unet_embeds_every_pixel_and_keeps_backbone_keys():
    bb = build_backbone("resnet18", in_chans=5, stem_stride=2)
    unet = UNet(bb, 16).eval()
    with torch.no_grad():
        z = unet(torch.randn(2, 5, 32, 32))
    assert z.shape == (2, 16, 32, 32)
    assert torch.allclose(z.norm(dim=1), torch.ones(2, 32, 32), atol=1e-5)
    assert [f.shape[-1] for f in bb.pyramid(torch.zeros(1, 5, 32, 32))] == [16, 8, 4, 2]
    # the encoder's state dict is the plain backbone's: any eossl checkpoint drops in
    assert set(unet.encoder.state_dict()) == set(build_backbone(
        "resnet18", in_chans=5).state_dict())
    seg = UNet(bb, 4, mode="logits")
    assert seg(torch.randn(1, 5, 32, 32)).shape == (1, 4, 32, 32)
    with pytest.raises(ConfigError, match="decoder_channels"):
        UNet(bb, 4, decoder_channels=(8, 8))


def _scene_window(brandenburg, folder, window=(320, 0, 384, 768)):
    """A (row, col, height, width) window of the real scene (all bands, same grid, same OSM
    labels) as a source of its own. The run's picture and the CLI's embed every pixel of the
    scene through the U-Net, which on the whole scene took most of this test's time; this
    quarter of it still holds patches of all eight classes (the probe loaders need them)."""
    from affine import Affine

    from eossl.data.readers import SceneStack
    from eossl.data.sources import SceneSource
    from userdata import write_tif

    scene = brandenburg.scenes[0]
    r, c, h, w = window
    path = write_tif(folder / "window.tif", scene.read(window).astype(scene.dtype),
                     crs=scene.crs, transform=scene.transform @ Affine.translation(c, r),
                     names=scene.bands, nodata=0)
    return SceneSource("brandenburg", [SceneStack(path, list(scene.bands))], brandenburg.labels,
                       brandenburg.cache)


def test_dense_pretrain_on_the_real_scene(brandenburg, tmp_path, monkeypatch):
    """Three steps through the real pretraining entry point; the checkpoint gives both the
    encoder and, through it, the whole pretrained U-Net, and the run draws its picture."""
    from eossl.config import load_config
    from eossl.checkpoint import load_encoder
    from eossl.train import pretrain

    window = _scene_window(brandenburg, tmp_path)
    cfg = load_config(None, {"method": "dense", "data.crop_size": 32, "data.batch_size": 4,
                             "data.crops_per_epoch": 16, "trainer.max_steps": 3,
                             "trainer.max_time": None, "trainer.val_every_n_steps": 1000,
                             "model.num_pairs": 64, "model.cross_negatives": 32,
                             "model.lr": 0.01})
    from eossl.data import sources
    monkeypatch.setitem(sources.SOURCES, "brandenburg", lambda cache, bands: window)
    res = pretrain(cfg, tmp_path / "run", progress=False)
    assert res.steps == 3
    assert (tmp_path / "run" / "embedding_pca.png").stat().st_size > 10_000
    enc = load_encoder(res.checkpoint)
    assert enc.bands == brandenburg.bands and enc.metadata["method"] == "dense"
    unet = enc.unet(num_classes=8)
    assert unet.mode == "logits" and unet.encoder is enc
    ck = torch.load(res.checkpoint, weights_only=True)["state_dict"]
    # the checkpoint's backbone IS the U-Net's encoder, and its decoder is the pretrained one
    for k, v in enc.backbone.state_dict().items():
        assert torch.equal(v, ck["backbone." + k])
    for k, v in unet.decoder.state_dict().items():
        assert torch.equal(v, ck["decoder." + k])
    embed = enc.unet()  # the pretrained embedding U-Net, head included
    for k, v in embed.head.state_dict().items():
        assert torch.equal(v, ck["head." + k])
    # its random twin has the same U-Net architecture with a fresh decoder
    twin = enc.random_twin(0).unet(num_classes=8)
    assert [p.shape for p in twin.parameters()] == [p.shape for p in unet.parameters()]
    assert not torch.equal(next(iter(twin.decoder.parameters())),
                           next(iter(unet.decoder.parameters())))
    # the CLI task draws the same picture from the checkpoint alone, never overwriting
    from eossl.cli import main
    png = tmp_path / "map.png"
    assert main(["evaluate", "dense-map", "--checkpoint", str(res.checkpoint),
                 "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000
    assert main(["evaluate", "dense-map", "--checkpoint", str(res.checkpoint),
                 "--out", str(png)]) == 2
    with pytest.raises(ConfigError, match="no pretrained U-Net decoder"):
        bad = tmp_path / "bad.ckpt"
        c = torch.load(res.checkpoint, weights_only=True)
        del c["eossl"]["unet"]
        torch.save(c, bad)
        load_encoder(bad).unet()


def test_dense_rejects_views_that_cannot_overlap():
    from eossl.normalization import BandStats
    from eossl.methods.dense import DenseContrast

    stats = BandStats(["B02", "B03"], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0])
    with pytest.raises(ConfigError, match="max_shift"):
        DenseContrast(["B02", "B03"], stats.to_dict(), crop_size=32, max_shift=32)


def test_embedding_picture_of_a_large_scene_uses_a_window(brandenburg, tmp_path):
    """Scenes beyond max_side are drawn from their central window (memory stays bounded)."""
    from eossl.methods.dense import pca_rgb, scene_embeddings, write_embedding_map

    seen = []

    def embed(raw):
        seen.append(tuple(raw.shape[-2:]))
        return torch.nn.functional.normalize(torch.log1p(raw[:, :4].clamp(min=0)), dim=1)

    out = write_embedding_map(embed, brandenburg.scenes[0], brandenburg.label_map(),
                              tmp_path / "w.png", max_side=96)
    assert out.exists() and max(max(s) for s in seen) <= 96 + 31
    emb = scene_embeddings(embed, brandenburg.scenes[0].read((0, 0, 40, 50)), tile=32)
    assert emb.shape == (4, 40, 50)
    rgb = pca_rgb(emb.astype("float32"))
    assert rgb.shape == (40, 50, 3) and rgb.min() >= 0 and rgb.max() <= 1
