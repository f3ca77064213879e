import math
import warnings

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from eossl.normalization import BandStats
from eossl.errors import ConfigError, DataError
from eossl.methods import available_methods, get_method
from eossl.checkpoint import load_encoder
from eossl.methods.moco import MoCoV2
from eossl.models.encoder import Encoder

BANDS = ["B02", "B03", "B04", "B08"]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning warns about self.log() without a Trainer
        yield


def stats():
    return BandStats(BANDS, [6.5] * 4, [1.0] * 4, [100.0] * 4, [3000.0] * 4).to_dict()


def raw(n, size=20):
    return torch.rand(n, len(BANDS), size, size) * 3000


def tiny(**kw):
    kw = {"crop_size": 16, "queue_size": 64, **kw}
    return MoCoV2(BANDS, stats(), **kw)


class RandomImages(Dataset):
    def __init__(self, n, labels=False):
        g = torch.Generator().manual_seed(n)
        self.x = torch.rand(n, len(BANDS), 20, 20, generator=g) * 3000
        self.y = torch.arange(n) % 3
        self.labels = labels

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.y[i]} if self.labels else {"image": self.x[i]}


@pytest.mark.parametrize("symmetric, enqueued", [(False, 32), (True, 64)])
def test_training_step_finite_loss_and_key_encoder_not_trained(symmetric, enqueued):
    torch.manual_seed(0)
    model = tiny(bn_splits=2, queue_size=128, symmetric=symmetric)
    loss = model.training_step({"image": raw(32)}, 0)  # 2 BN splits of 16
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None and not p.requires_grad
               for p in model.backbone_momentum.parameters())
    assert any(p.grad is not None for p in model.backbone.parameters())
    # one key per image (paper), or both views' keys once (symmetric)
    assert int(model.criterion.memory_bank.bank_ptr) == enqueued


def test_key_encoder_moves_by_ema():
    model = tiny(ema_momentum=0.9)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)  # stands in for an optimiser step
    before = [p.clone() for p in model.backbone_momentum.parameters()]
    model.training_step({"image": raw(8)}, 0)
    for old, new, online in zip(before, model.backbone_momentum.parameters(),
                                model.backbone.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * online, atol=1e-6)


def test_registry():
    assert get_method("moco") is MoCoV2 and "moco" in available_methods()
    with pytest.raises(ConfigError, match="unknown method 'mocoo'; expected one of: .*moco"):
        get_method("mocoo")


def test_budget_schedules():
    model = tiny(max_time_s=100.0, warmup_fraction=0.1)
    model._elapsed_synced = 50.0
    assert model.progress() == pytest.approx(0.5)
    assert model.lr_factor() == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.4 / 0.9)))
    assert 0.99 < model.current_ema_momentum() < 1.0
    model._elapsed_synced = 5.0
    assert model.lr_factor() == pytest.approx(0.5)  # warmup
    with pytest.raises(ConfigError, match="optimizer"):
        tiny(optimizer="lamb")


def test_checkpoint_roundtrip_and_knn_probe(tmp_path):
    torch.manual_seed(0)
    model = tiny(max_steps=2, knn_k=5)
    train = DataLoader(RandomImages(16), batch_size=8, shuffle=True)
    val = [DataLoader(RandomImages(12, labels=True), batch_size=6),
           DataLoader(RandomImages(9, labels=True), batch_size=6)]
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(model, train, val)
    assert trainer.global_step == 2
    acc = trainer.callback_metrics["val/knn_acc"]
    assert 0.0 <= float(acc) <= 1.0

    path = tmp_path / "moco.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    meta = ckpt["eossl"]
    assert {"method", "bands", "stats", "backbone", "stem_stride", "crop_size",
            "eossl_version"} <= set(meta)
    assert meta["method"] == "moco" and meta["bands"] == BANDS and meta["elapsed_s"] > 0

    resumed = tiny()
    resumed.on_load_checkpoint(ckpt)  # the wall clock survives a resume
    assert resumed.elapsed_s() == pytest.approx(meta["elapsed_s"])

    enc = load_encoder(path)
    assert isinstance(enc, Encoder) and enc.bands == BANDS and enc.name == "moco"
    x = raw(3, 32)
    original = model.encoder().eval()
    with torch.no_grad():
        assert torch.allclose(enc(x), original(x), atol=1e-5)


def test_load_encoder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_encoder(tmp_path / "none.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="corrupt"):
        load_encoder(bad)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(DataError, match="not an eossl"):
        load_encoder(other)


@pytest.mark.parametrize("momentum, channels_last", [(0.1, False), (None, False), (0.1, True)],
                         ids=["ema", "cumulative", "channels-last"])
def test_batched_split_batchnorm_equals_the_per_group_loop(momentum, channels_last):
    """SplitBatchNorm2d normalises s groups (sample i in group i % s) in one BatchNorm call; it
    must equal s separate BatchNorm2d calls, group 0 first: outputs, gradients, and the running
    statistics those calls leave behind (train mode), and plain BatchNorm in eval mode."""
    import copy

    from eossl.methods.moco import SplitBatchNorm2d, batchnorm_groups, convert_split_batchnorm

    torch.manual_seed(0)
    s, n, c = 4, 32, 6
    plain = torch.nn.BatchNorm2d(c, momentum=momentum)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
        plain.bias.uniform_(-0.5, 0.5)
        plain.running_mean.uniform_(-1, 1)
        plain.running_var.uniform_(0.5, 2)
    plain.num_batches_tracked.fill_(3)
    split = convert_split_batchnorm(torch.nn.Sequential(copy.deepcopy(plain)))[0]
    assert type(split) is SplitBatchNorm2d
    x = torch.randn(n, c, 5, 5) * 3 + 1
    if channels_last:  # --channels-last batches: same numbers, and the layout is kept
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    upstream = torch.randn(n, c, 5, 5)

    with batchnorm_groups(split, s):
        out = split(x)
    ref = torch.empty_like(out)
    for g in range(s):
        ref[g::s] = plain(x2[g::s])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last
                             else torch.contiguous_format)
    # each group really has its own statistics: not what one BatchNorm over the batch gives
    assert not torch.allclose(out, torch.nn.functional.batch_norm(x, None, None, training=True),
                              atol=1e-3)
    (out * upstream).sum().backward()
    (ref * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(split.weight.grad, plain.weight.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(split.bias.grad, plain.bias.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(split.running_mean, plain.running_mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(split.running_var, plain.running_var, atol=1e-6, rtol=1e-5)
    assert int(split.num_batches_tracked) == int(plain.num_batches_tracked) == 3 + s

    # outside the context: plain BatchNorm over the whole batch
    torch.testing.assert_close(split(x.detach()), plain(x.detach()), atol=1e-5, rtol=1e-5)
    # eval mode, groups or not: the running statistics
    split.eval(), plain.eval()
    with batchnorm_groups(split, s):
        torch.testing.assert_close(split(x.detach()), plain(x.detach()))
    # state dicts keep BatchNorm2d's keys and shapes (checkpoints load into a plain encoder)
    assert {k: v.shape for k, v in split.state_dict().items()} == \
        {k: v.shape for k, v in plain.state_dict().items()}


def test_moco_key_forward_is_the_per_group_loop_through_the_backbone():
    """MoCo's key encoder forward with 4 shuffled BatchNorm groups equals running each group
    through the backbone on its own (the loop it replaces), in the original sample order."""
    import copy

    from eossl.methods.moco import split_bn_forward

    torch.manual_seed(1)
    model = tiny(bn_splits=4)
    model.train()
    x = model.views(model.normalizer(raw(64)))
    reference = copy.deepcopy(model.backbone_momentum)  # same weights and statistics
    torch.manual_seed(5)
    with torch.no_grad():
        got = split_bn_forward(model.backbone_momentum, x, 4, shuffle=True)
    torch.manual_seed(5)
    perm = torch.randperm(64)  # the permutation split_bn_forward drew
    with torch.no_grad():
        want = torch.empty_like(got)
        for g in range(4):
            idx = perm[g::4]
            want[idx] = reference(x[idx])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    for a, b in zip(model.backbone_momentum.buffers(), reference.buffers()):
        torch.testing.assert_close(a.float(), b.float(), atol=1e-5, rtol=1e-4)


def test_collapse_monitor_flags_identical_embeddings_and_warns(recwarn):
    """A collapsed run (every embedding nearly the same: spread 0.06 of a healthy one) is
    flagged in the checkpoint metadata and warned about when training ends; a healthy spread
    is not; a handful of steps is too few to judge."""
    model = tiny()
    assert model.collapse_status()["collapsed"] is None  # nothing logged yet
    g = torch.Generator().manual_seed(0)
    for _ in range(30):  # 128-d embeddings that all point nearly the same way
        model.log_collapse(torch.ones(64, 128) + 0.003 * torch.randn(64, 128, generator=g))
    status = model.collapse_status()
    assert status["collapsed"] is True and status["embed_std_ratio"] < 0.1
    assert status["embed_cos"] > 0.99
    assert model.eossl_metadata()["collapse"]["collapsed"] is True
    with pytest.warns(UserWarning, match="COLLAPSED"):
        model.on_fit_end()
    healthy = tiny()
    for _ in range(30):
        healthy.log_collapse(torch.randn(64, 128, generator=g))
    assert healthy.collapse_status()["collapsed"] is False
    # the loaded encoder carries the verdict; its random twin carries none
    enc = model.encoder()
    assert enc.collapsed and not enc.random_twin(0).collapsed


def test_pretraining_warns_of_collapse_on_the_console_and_in_summary(sample_cache, tmp_path,
                                                                       monkeypatch):
    """A run whose monitor trips says so when it ends (a warning on the console) and in its
    summary.json, not only in the checkpoint metadata (here every spread counts as collapsed)."""
    import json

    from eossl.cli import main
    from eossl.methods import base

    monkeypatch.setattr(base, "COLLAPSE_RATIO", 1e6)
    monkeypatch.setattr(base, "COLLAPSE_MIN_STEPS", 1)
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="COLLAPSED"):
        assert main(["--cache", str(sample_cache), "pretrain", "--max-steps", "2",
                     "--batch-size", "4", "--crop-size", "32", "--out", str(run),
                     "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["collapse"]["collapsed"] is True
    assert "COLLAPSED" in summary["warnings"][0]


def test_sync_batchnorm_on_a_split_batchnorm_method_is_named():
    """Lightning's sync_batchnorm turns every BatchNorm subclass into SyncBatchNorm, split
    BatchNorm included; pretraining says so instead of changing the method silently."""
    from eossl.methods.simclr import SimCLR
    from eossl.train import split_batchnorm_note

    note = split_batchnorm_note(tiny(bn_splits=4))
    assert note and "split BatchNorm" in note and "bn_splits: 4" in note
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(tiny(bn_splits=4))
    assert split_batchnorm_note(converted) is None  # what the note warns about does happen
    assert split_batchnorm_note(SimCLR(BANDS, stats())) is None
