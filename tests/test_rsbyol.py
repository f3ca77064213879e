"""RS-BYOL: band/sensor views, pool errors, pretraining on the real BigEarthNet v2 pairs, the
band-wise encoder round trip and the per-band probe on real Brandenburg patches."""

from __future__ import annotations

import pytest
import torch

from eossl.normalization import BandStats
from eossl.errors import BandError, ConfigError
from eossl.methods import get_method
from eossl.methods.rsbyol import DEFAULT_POOL, RSBYOL, BandViews, resolve_pool
from eossl.models.bandwise import BandwiseEncoder

BEN = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12",
       "VV", "VH"]
L1C = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
       "B12"]


def unit_stats(bands):
    n = len(bands)
    return BandStats(list(bands), [0.0] * n, [1.0] * n, [0.0] * n, [1.0] * n, [False] * n)


def small(bands=BEN, **kw):
    kw.setdefault("proj_hidden_dim", 64)
    kw.setdefault("pred_hidden_dim", 64)
    return RSBYOL(bands, unit_stats(bands).to_dict(), crop_size=16, max_steps=10, **kw)


def drawn_bands(model, n=256):
    """Which input bands each view shows: channel c of the batch is the constant c, which the
    spatial augmentation (crop, flip, rotation, blur) keeps constant."""
    c = len(model.hparams.bands)
    x = torch.arange(c, dtype=torch.float32).view(1, c, 1, 1).expand(n, c, 16, 16).contiguous()
    v0, v1 = model.make_views(x)
    assert v0.shape == v1.shape == (n, model.view_channels(), 16, 16)
    labels = v0.mean(dim=(-2, -1)).round().long()
    assert torch.allclose(v0.mean(dim=(-2, -1)), labels.float(), atol=1e-3)
    return [[model.hparams.bands[i] for i in row] for row in labels.tolist()]


def test_registered():
    assert get_method("rsbyol") is RSBYOL


def test_single_band_views_draw_from_default_pool():
    torch.manual_seed(0)
    m = small()
    assert m.view_channels() == 1 and m.backbone.in_chans == 1
    assert m.backbone_momentum.model.conv1.in_channels == 1
    assert m.pool == list(DEFAULT_POOL)
    seen = [b for row in drawn_bands(m) for b in row]
    assert set(seen) == set(DEFAULT_POOL)  # every pool band, optical and radar, is drawn
    assert not {"B01", "B09"} & set(seen)  # 60 m bands are not in the pool


def test_ms_only_never_draws_sar():
    torch.manual_seed(0)
    m = small(ms_only=True)
    seen = {b for row in drawn_bands(m) for b in row}
    assert seen == set(DEFAULT_POOL) - {"VV", "VH"}


def test_three_band_views_are_distinct_triples():
    torch.manual_seed(0)
    m = small(mode="three", pool=["B04", "B08", "B11", "VV"])
    assert m.view_channels() == 3 and m.backbone.in_chans == 3
    rows = drawn_bands(m)
    assert all(len(set(r)) == 3 and set(r) <= {"B04", "B08", "B11", "VV"} for r in rows)
    assert len({tuple(sorted(r)) for r in rows}) == 4  # all C(4, 3) triples occur


def test_band_views_gather_per_sample():
    x = torch.randn(2, 5, 8, 8)
    bv = BandViews([f"b{i}" for i in range(5)], ["b1", "b3"], 1, torch.nn.Identity())
    out = bv(x, index=torch.tensor([[1], [3]]))
    assert torch.equal(out[0, 0], x[0, 1]) and torch.equal(out[1, 0], x[1, 3])


def test_pool_errors_name_the_band():
    # the Brandenburg L1C scene has no SAR: the default pool must say so, ms_only fixes it
    with pytest.raises(ConfigError, match=r"'VV'.*B01, B02.*B12"):
        small(L1C)
    assert "VV" not in small(L1C, ms_only=True).pool
    with pytest.raises(ConfigError, match="'B13'"):
        resolve_pool(BEN, ["B04", "B13"])
    with pytest.raises(ConfigError, match="at least 3"):
        resolve_pool(BEN, "B04,VV", mode="three")
    with pytest.raises(ConfigError, match="mode"):
        small(mode="pairs")
    assert resolve_pool(BEN, "b4, vv") == ["B04", "VV"]  # loose spelling -> data's names


def test_bandwise_encoder_groups_and_reduce():
    torch.manual_seed(0)
    m = small(mode="three", reduce="concat")
    enc = m.encoder().eval()
    d = m.backbone.out_dim
    assert enc.bands == BEN and enc.used_bands == list(DEFAULT_POOL)
    assert enc.out_dim == 4 * d  # 12 pool bands -> 4 triples
    x = torch.rand(3, len(BEN), 16, 16)
    assert enc(x).shape == (3, 4 * d)
    # Band B08 alone, fed from data in another order: the triple is B08 repeated.
    one = enc.for_bands(list(reversed(L1C)), use=["B08"])
    y = torch.rand(2, 13, 16, 16)
    with torch.no_grad():
        got = one(y)
        b08 = y[:, [list(reversed(L1C)).index("B08")]]
        want = m.backbone(b08.expand(-1, 3, -1, -1))
    assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(BandError, match="'VV' is not in the data"):
        enc.for_bands(L1C, use=["VV"])


def test_online_knn_step_accepts_all_bands():
    m = small().eval()
    batch = {"image": torch.rand(4, len(BEN), 16, 16), "label": torch.tensor([0, 1, 0, 1])}
    m.validation_step(batch, 0, 0)
    feats, labels = m._knn[0]
    assert feats[0].shape == (4, m.backbone.out_dim)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, sample_cache):
    """Three RS-BYOL steps on the real BigEarthNet v2 pairs through eossl.train.pretrain."""
    from eossl.config import load_config
    from eossl.train import pretrain

    cfg = load_config("configs/rsbyol-cpu.yaml", {
        "trainer.max_steps": 3, "trainer.max_time": None, "data.batch_size": 8,
        "data.crop_size": 32, "model.proj_hidden_dim": 128, "model.pred_hidden_dim": 128})
    return pretrain(cfg, tmp_path_factory.mktemp("rsbyol") / "run", cache=sample_cache,
                    progress=False)


def test_pretrain_on_real_pairs_and_load_encoder(pretrained):
    from eossl.checkpoint import load_encoder

    assert pretrained.steps == 3
    ckpt = torch.load(pretrained.checkpoint, map_location="cpu", weights_only=True)
    meta = ckpt["eossl"]
    assert meta["method"] == "rsbyol" and meta["in_chans"] == 1
    assert meta["bands"] == BEN and meta["encoder"]["pool"] == list(DEFAULT_POOL)
    assert ckpt["state_dict"]["backbone.model.conv1.weight"].shape[1] == 1
    enc = load_encoder(pretrained.checkpoint)
    assert isinstance(enc, BandwiseEncoder) and not enc.training
    # Same weights and normalisation as the trained module: same embeddings.
    model = RSBYOL.load_from_checkpoint(pretrained.checkpoint, map_location="cpu",
                                        weights_only=True)
    x = pretrained.source.crops(32, 2, seed=0)
    x = torch.stack([x[0]["image"], x[1]["image"]])
    with torch.no_grad():
        assert torch.allclose(enc(x), model.encoder().eval()(x), atol=1e-5)
    # On the L1C scene: the ten optical pool bands are used, SAR is reported absent.
    on_scene = enc.for_bands(L1C)
    assert on_scene.used_bands == list(DEFAULT_POOL[:10])
    assert "absent from the data: VV, VH" in on_scene.describe()


def test_per_band_probe_on_real_patches(pretrained, brandenburg, tmp_path):
    from eossl.checkpoint import load_encoder
    from conftest import first_fold_context
    from eossl.evaluate.perband import ALL, PerBand

    enc = load_encoder(pretrained.checkpoint)
    ev = PerBand(probe_bands=("B04", "B11"), C=0.01)
    assert ev.applies(enc) is None
    ctx = first_fold_context("brandenburg", source=brandenburg)
    recs = ev.run(ctx, {"rsbyol": enc, "random init": enc.random_twin(0)}, seed=0)
    recs += ev.baseline(ctx, seed=0)
    acc = {(r["model"], r["column"]): r for r in recs if r["metric"] == "accuracy"}
    assert set(acc) == {(m, b) for m in ("rsbyol", "random init") for b in ("B04", "B11", ALL)} \
        | {("spectral baseline", b) for b in ("B04", "B11")}
    (fold,) = ctx.patch_folds(16)
    for r in acc.values():
        assert 0.0 <= r["value"] <= 1.0 and r["n_train"] == len(fold.train) and r["fold"] == 0
    # The features really are band-specific: B04 and B11 give different probes.
    b04, b11 = acc[("rsbyol", "B04")], acc[("rsbyol", "B11")]
    f1 = {(r["model"], r["column"]): r["value"] for r in recs if r["metric"] == "macro_f1"}
    assert (b04["value"], f1[("rsbyol", "B04")]) != (b11["value"], f1[("rsbyol", "B11")])
    png = ev.figures(recs, tmp_path)[0][0]
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_per_band_rejects_plain_encoder():
    from eossl.evaluate.perband import PerBand
    from eossl.models.encoder import Encoder

    bands = ["B04", "B08"]
    assert "not a band-wise encoder" in PerBand().applies(Encoder.random(unit_stats(bands)))
