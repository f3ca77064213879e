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
