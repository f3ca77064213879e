"""SimCLR and BYOL baselines: loss construction, EMA target, gradients, recipes, and real
training runs on the Sentinel-2 scene that leave a loadable encoder."""

import math
import warnings
from pathlib import Path

import pytest
import torch
from lightly.loss import NTXentLoss

from eossl.config import load_config
from eossl.normalization import BandStats
from eossl.errors import ConfigError
from eossl.methods import get_method
from eossl.checkpoint import load_encoder
from eossl.methods.byol import BYOL
from eossl.methods.simclr import SimCLR
from eossl.models.encoder import Encoder

BANDS = ["B02", "B03", "B04", "B08"]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning warns about self.log() without a Trainer
        yield


def stats():
    return BandStats(BANDS, [6.5] * 4, [1.0] * 4, [100.0] * 4, [3000.0] * 4).to_dict()


def raw(n, size=20):
    return torch.rand(n, len(BANDS), size, size) * 3000 + 10


def simclr(**kw):
    return SimCLR(BANDS, stats(), **{"crop_size": 16, "proj_dim": 32, **kw})


def byol(**kw):
    kw = {"crop_size": 16, "proj_hidden_dim": 64, "proj_dim": 32, "pred_hidden_dim": 64, **kw}
    return BYOL(BANDS, stats(), **kw)


# ------------------------------------------------------------------------------------ SimCLR
def test_simclr_registered_with_paper_temperature():
    assert get_method("simclr") is SimCLR and get_method("byol") is BYOL
    model = simclr()
    assert model.criterion.temperature == 0.5  # the paper's small-batch value
    assert model.criterion.memory_bank.size == (0,)  # in-batch negatives only
    assert model.projection_head(torch.randn(4, model.backbone.out_dim)).shape == (4, 32)
    for bad in ({"temperature": 0.0}, {"proj_dim": 0}):
        with pytest.raises(ConfigError, match="simclr"):
            simclr(**bad)


def test_simclr_step_is_ntxent_of_the_two_views():
    torch.manual_seed(0)
    model = simclr(temperature=0.2)
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    seen = []
    model.make_views = lambda x: seen.append(x) or (x[..., :16, :16], x[..., -16:, -16:])
    x = raw(6)
    loss = model.training_step({"image": x}, 0)
    # the same projections through lightly's loss give the same number: the step adds nothing
    # one forward per view (each view its own BatchNorm statistics)
    z0, z1 = (model.projection_head(model.backbone(v))
              for v in (seen[0][..., :16, :16], seen[0][..., -16:, -16:]))
    assert z0.shape == z1.shape == (6, 32)
    assert torch.allclose(loss, NTXentLoss(temperature=0.2)(z0, z1), atol=1e-6)
    # 2N-way classification with a random encoder: near log(2N - 1)
    assert abs(float(loss) - math.log(11)) < 1.0
    assert logged["train/loss"] == pytest.approx(float(loss)) and "train/embed_std" in logged
    loss.backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.projection_head.parameters())
    # the views really are normalised (standardised log reflectance), not raw counts
    assert seen[0].abs().max() < 20


def test_simclr_identical_views_give_lower_loss_than_unrelated_ones():
    torch.manual_seed(0)
    model = simclr().eval()  # BN in eval: per-sample outputs, so identical views -> equal z
    x = raw(8)
    model.make_views = lambda v: (v[..., :16, :16], v[..., :16, :16])
    same = float(model.training_step({"image": x}, 0))
    model.make_views = lambda v: (v[..., :16, :16], v.flip(0)[..., :16, :16])
    other = float(model.training_step({"image": x}, 0))
    assert same < other


# ------------------------------------------------------------------------------------ BYOL
def test_byol_loss_range_and_symmetry():
    model = byol()
    t = torch.randn(5, 32)
    assert float(model.byol_loss(t, t, t, t)) == pytest.approx(0.0, abs=1e-6)  # aligned
    assert float(model.byol_loss(-t, -t, t, t)) == pytest.approx(4.0, abs=1e-5)  # opposite
    p0, p1, t0, t1 = torch.randn(4, 5, 32)
    # mean of the two directions of 2 - 2 cos(p_i, t_j)
    cos = torch.nn.functional.cosine_similarity
    expected = 0.5 * ((2 - 2 * cos(p0, t1)).mean() + (2 - 2 * cos(p1, t0)).mean())
    assert torch.allclose(model.byol_loss(p0, p1, t0, t1), expected, atol=1e-6)
    with pytest.raises(ConfigError, match="ema_momentum"):
        byol(ema_momentum=1.5)


def test_byol_only_online_side_gets_gradients():
    torch.manual_seed(0)
    model = byol()
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    loss = model.training_step({"image": raw(8)}, 0)
    assert logged["train/loss"] == pytest.approx(float(loss))
    assert {"train/ema_momentum", "train/embed_std"} <= set(logged)
    assert loss.ndim == 0 and 0.0 <= float(loss) <= 4.0
    loss.backward()
    for target in (model.backbone_momentum, model.projection_head_momentum):
        assert all(p.grad is None and not p.requires_grad for p in target.parameters())
    for online in (model.backbone, model.projection_head, model.prediction_head):
        assert all(p.grad is not None for p in online.parameters())
    opt = model.configure_optimizers()["optimizer"]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in in_opt for p in model.backbone_momentum.parameters())
    assert all(id(p) in in_opt for p in model.prediction_head.parameters())


@pytest.mark.parametrize("elapsed, tau", [(0.0, 0.9), (50.0, 0.95), (100.0, 1.0)])
def test_byol_target_moves_toward_online_by_cosine_schedule(elapsed, tau):
    model = byol(ema_momentum=0.9, max_time_s=100.0)
    model._elapsed_synced = elapsed  # progress 0, 0.5, 1: tau = 1 - 0.1 (cos(pi p) + 1) / 2
    assert model.current_ema_momentum() == pytest.approx(tau)
    with torch.no_grad():
        for p in list(model.backbone.parameters()) + list(model.projection_head.parameters()):
            p.add_(1.0)  # stands in for an optimiser step
    pairs = [(model.backbone, model.backbone_momentum),
             (model.projection_head, model.projection_head_momentum)]
    before = [[p.clone() for p in t.parameters()] for _, t in pairs]
    model.training_step({"image": raw(8)}, 0)
    for (online, target), old in zip(pairs, before):
        for o, new, on in zip(old, target.parameters(), online.parameters()):
            assert torch.allclose(new, tau * o + (1 - tau) * on, atol=1e-6)
            if tau < 1:
                assert (new - on).abs().sum() < (o - on).abs().sum()  # moved toward online


def test_byol_view_channels_contract_for_subclasses():
    """RS-BYOL's hook: views with other channels than the data get a matching encoder."""

    class FirstBand(BYOL):
        def view_channels(self):
            return 1

        def make_views(self, x):
            return x[:, :1, :16, :16], x[:, :1, -16:, -16:]

    model = FirstBand(BANDS, stats(), crop_size=16, proj_hidden_dim=32, proj_dim=16,
                      pred_hidden_dim=32)
    assert model.backbone.in_chans == model.backbone_momentum.in_chans == 1
    assert byol().backbone.in_chans == len(BANDS)  # default: every band
    loss = model.training_step({"image": raw(4)}, 0)
    assert torch.isfinite(loss)


# ------------------------------------------------------------------------------------ recipes
@pytest.mark.parametrize("name", ["simclr", "simclr-cpu", "byol", "byol-cpu"])
def test_recipes_build_their_method(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg["method"] == name.split("-")[0]
    model_kw = dict(cfg["model"], backbone="resnet18")  # same options, a cheaper backbone
    model = get_method(cfg["method"])(BANDS, stats(), crop_size=16, **model_kw)
    if cfg["method"] == "simclr":
        assert model.criterion.temperature == cfg["model"]["temperature"]
    else:
        assert model.hparams.proj_hidden_dim == cfg["model"]["proj_hidden_dim"]


# ------------------------------------------------------------------------------ real training
@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_pretrain_on_real_scene_writes_loadable_encoder(brandenburg, sample_cache, tmp_path,
                                                        method):
    from eossl.train import pretrain

    cfg = load_config(CONFIGS / f"{method}-cpu.yaml", {
        "data.crop_size": 16, "data.batch_size": 8, "data.crops_per_epoch": 64,
        "trainer.max_steps": 3, "trainer.max_time": None, "trainer.accelerator": "cpu"})
    cfg["trainer"]["max_time"] = None
    out = tmp_path / method
    res = pretrain(cfg, out, cache=sample_cache, progress=False)
    assert res.steps == 3 and res.checkpoint.is_file()
    assert (out / "summary.json").is_file() and (out / "config.yaml").is_file()
    enc = load_encoder(res.checkpoint)
    assert isinstance(enc, Encoder) and enc.bands == brandenburg.bands and enc.name == method
    x = torch.from_numpy(brandenburg.patches("test").images()[:4])
    ckpt = torch.load(res.checkpoint, weights_only=False)
    assert ckpt["global_step"] == 3
    model = get_method(method)(**ckpt["hyper_parameters"]).eval()
    model.load_state_dict(ckpt["state_dict"])
    with torch.no_grad():
        f = enc(x)
        assert torch.allclose(f, model.backbone(model.normalizer(x)), atol=1e-5)
    assert f.shape == (4, 512) and torch.isfinite(f).all() and f.std(0).mean() > 0
