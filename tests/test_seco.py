"""SeCo and MoCo-TP: the three-subspace loss construction, queues, EMA, gradients, data, and a
short pretraining run on the real Landsat series."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from eossl.errors import ConfigError, DataError
from eossl.methods import available_methods, get_method
from eossl.methods.seco import MoCoTemporal, SeasonalContrast, seco_logits

BANDS = ["b3", "b4", "b5"]
STATS = {"bands": BANDS, "mean": [6.5, 7.8, 7.1], "std": [1.0, 0.4, 0.5],
         "q02": [200.0, 1000.0, 400.0], "q98": [9000.0, 6500.0, 3000.0]}


def _unit(*shape):
    return F.normalize(torch.randn(*shape), dim=-1)


def _model(**kw):
    kw = {"queue_size": 16, "crop_size": 16, "backbone": "resnet18", "bn_splits": 1, **kw}
    torch.manual_seed(0)
    return SeasonalContrast(BANDS, STATS, **kw)


def _batch(n=4, t=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(n, t, 3, size, size, generator=g) * 3000 + 100}


def test_registered():
    assert {"seco", "moco-tp", "moco"} <= set(available_methods())
    assert get_method("seco") is SeasonalContrast and get_method("moco-tp") is MoCoTemporal
    m = _model(queue_size=16384)
    hp = m.hparams
    assert (hp.temperature, hp.ema_momentum, hp.ema_schedule) == (0.07, 0.999, "constant")
    assert all(q.bank.shape == (16384, 128) for q in m.queues) and len(m.heads) == 3


def test_logits_shapes_positive_column_and_batch_negatives():
    n, k, d, T = 4, 10, 8, 0.07
    q = [_unit(n, d) for _ in range(3)]
    keys = [[_unit(n, d) for _ in range(3)] for _ in range(3)]
    queues = [_unit(k, d) for _ in range(3)]
    lg = seco_logits(q, keys, queues, T)
    assert [tuple(x.shape) for x in lg] == [(n, 1 + k), (n, 1 + k + 2 * n), (n, 1 + k + 2 * n)]
    for i in range(3):
        assert torch.allclose(lg[i][:, 0], (q[i] * keys[i][i]).sum(1) / T)  # positive k_i
        assert torch.allclose(lg[i][:, 1:1 + k], q[i] @ queues[i].T / T)
    # subspace 1: the batch's k0 and k2 projected by head 1; subspace 2: k0 and k1 by head 2
    assert torch.allclose(lg[1][:, 1 + k:], q[1] @ torch.cat([keys[1][0], keys[1][2]]).T / T)
    assert torch.allclose(lg[2][:, 1 + k:], q[2] @ torch.cat([keys[2][0], keys[2][1]]).T / T)
    # the sample's own other keys are among its negatives (what makes Z1/Z2 variant)
    assert torch.allclose(lg[1][0, 1 + k], q[1][0] @ keys[1][0][0] / T)


def test_training_step_queue_fifo_and_no_current_keys_in_negatives():
    m = _model(queue_size=8)  # two batches of 4 fill the ring
    enq, seen = [[] for _ in range(3)], [[] for _ in range(3)]
    for i, bank in enumerate(m.queues):
        orig = bank.forward

        def spy(output, labels=None, update=False, _i=i, _orig=orig):
            enq[_i].append(output.detach().clone())
            out = _orig(output, labels, update)
            seen[_i].append(out[1].clone())
            return out
        bank.forward = spy
    for step in range(3):
        loss = m.training_step(_batch(seed=step), step)
        assert torch.isfinite(loss)
    for i in range(3):
        b = m.queues[i].bank
        # ring: step 2's keys overwrote step 0's in rows 0-3; step 1's stay in rows 4-7
        assert torch.equal(b[:4], enq[i][2]) and torch.equal(b[4:], enq[i][1])
        assert torch.allclose(enq[i][0].norm(dim=1), torch.ones(4))  # L2-normalised keys
        # the bank read at step 1 held step 0's keys, not step 1's own positives
        assert torch.equal(seen[i][1][:4], enq[i][0])
        assert not torch.equal(seen[i][1][4:], enq[i][1])


def test_ema_updates_key_encoder_and_key_heads():
    m = _model(ema_momentum=0.9)
    with torch.no_grad():  # make the key side differ from the query side
        for p in list(m.backbone_momentum.parameters()) + list(m.heads_momentum.parameters()):
            p.add_(0.5)
    before_k = [p.clone() for p in m.backbone_momentum.parameters()]
    before_h = [p.clone() for p in m.heads_momentum.parameters()]
    q_bb = [p.clone() for p in m.backbone.parameters()]
    q_h = [p.clone() for p in m.heads.parameters()]
    m.training_step(_batch(), 0)
    for new, old, q in zip(m.backbone_momentum.parameters(), before_k, q_bb):
        assert torch.allclose(new, 0.9 * old + 0.1 * q, atol=1e-6)
    for new, old, q in zip(m.heads_momentum.parameters(), before_h, q_h):
        assert torch.allclose(new, 0.9 * old + 0.1 * q, atol=1e-6)
    assert m.current_ema_momentum() == 0.9
    cos = _model(ema_momentum=0.99, ema_schedule="cosine", max_steps=10)
    assert cos.current_ema_momentum() == pytest.approx(0.99)  # progress 0: start value


def test_only_query_side_gets_gradients():
    m = _model()
    loss = m.training_step(_batch(), 0)
    loss.backward()
    q_params = list(m.backbone.parameters()) + list(m.heads.parameters())
    assert all(p.grad is not None for p in q_params)
    assert sum(float(p.grad.abs().sum()) for p in m.heads.parameters()) > 0
    k_params = list(m.backbone_momentum.parameters()) + list(m.heads_momentum.parameters())
    assert all(p.grad is None and not p.requires_grad for p in k_params)
    assert all(not q.bank.requires_grad for q in m.queues)
    opt = m.configure_optimizers()["optimizer"]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in in_opt for p in k_params)


def test_each_head_gets_its_own_gradient():
    m = _model()
    m.training_step(_batch(), 0).backward()
    for head in m.heads:
        grads = [p.grad.abs().sum() for p in head.parameters()]
        assert all(float(g) > 0 for g in grads)


def test_bad_input():
    m = _model()
    with pytest.raises(DataError, match=r"multi-date images \(N, T>=3"):
        m.training_step({"image": torch.rand(4, 3, 16, 16)}, 0)
    with pytest.raises(DataError, match="T>=3"):
        m.training_step(_batch(t=2), 0)
    for bad in ({"queue_size": 0}, {"temperature": 0}, {"ema_schedule": "step"}):
        with pytest.raises(ConfigError):
            _model(**bad)

    class NoDates:
        name = "brandenburg"
    for cls in (SeasonalContrast, MoCoTemporal):
        with pytest.raises(ConfigError, match="multi-date source.*'brandenburg' has no dates"):
            cls.train_dataset(NoDates(), {"crop_size": 16, "crops_per_epoch": 8})


def test_views_follow_the_recipe():
    """q and k1 are plain crops of t0 and t2; k0 and k2 are augmented (here: flip only)."""
    m = _model(views={"jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0, "flip_p": 1.0,
                      "scale": (1.0, 1.0)})
    x = torch.arange(16.0).repeat(16, 1)[None, None].expand(2, 1, 16, 16)
    t0, t1, t2 = x.repeat(1, 3, 1, 1), x.repeat(1, 3, 1, 1) + 100, x.repeat(1, 3, 1, 1) + 200
    with torch.random.fork_rng():
        torch.manual_seed(0)
        q, k0, k1, k2 = m.views(t0, t1, t2)
    # full-scale crops with ratio 1 may still resample; compare orientation and level
    assert q[0, 0, 0, 0] < q[0, 0, 0, -1] and k1[0, 0, 0, 0] < k1[0, 0, 0, -1]  # not flipped
    assert k0[0, 0, 0, 0] > k0[0, 0, 0, -1] and k2[0, 0, 0, 0] > k2[0, 0, 0, -1]  # flipped
    assert 100 <= float(k0.mean()) < 200 and float(k1.mean()) >= 200 and float(k2.mean()) < 100


def test_moco_tp_uses_two_dates():
    torch.manual_seed(0)
    m = MoCoTemporal(BANDS, STATS, crop_size=16, queue_size=16, views={
        "jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0})
    x = torch.cat([torch.zeros(4, 1, 3, 16, 16), torch.ones(4, 1, 3, 16, 16)], dim=1)
    v0, v1 = m.make_views(x)
    assert v0.shape == v1.shape == (4, 3, 16, 16)
    assert float(v0.abs().max()) == 0.0 and torch.allclose(v1, torch.ones_like(v1))
    loss = m.training_step(_batch(t=2), 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in m.backbone_momentum.parameters())


@pytest.mark.parametrize("method", ["seco", "moco-tp"])
def test_pretrain_on_real_landsat_and_load_encoder(method, tmp_path, sample_cache):
    from eossl.config import load_config
    from eossl.checkpoint import load_encoder
    from eossl.train import pretrain

    cfg = load_config(None, {"method": method, "data.name": "landsat", "data.crop_size": 16,
                             "data.batch_size": 8, "data.crops_per_epoch": 64,
                             "trainer.max_time": None, "trainer.max_steps": 2,
                             "model.queue_size": 32, "model.backbone": "resnet18"})
    res = pretrain(cfg, tmp_path / "run", cache=sample_cache, progress=False)
    assert res.steps == 2 and res.checkpoint.is_file()
    assert (tmp_path / "run" / "metrics.csv").exists() or (tmp_path / "run" / "logs").exists()
    enc = load_encoder(res.checkpoint)
    assert enc.bands == BANDS and enc.name == method
    with torch.no_grad():
        z = enc(torch.rand(2, 3, 16, 16) * 3000)
    assert z.shape == (2, enc.out_dim) and torch.isfinite(z).all()
    ckpt = torch.load(res.checkpoint, weights_only=True)
    # the encoder is the query backbone, not the key copy
    sd = ckpt["state_dict"]
    w = next(k for k in sd if k.startswith("backbone.") and k.endswith("weight"))
    assert torch.equal(enc.backbone.state_dict()[w[len("backbone."):]], sd[w])
    assert not torch.equal(sd[w], sd["backbone_momentum." + w[len("backbone."):]])
