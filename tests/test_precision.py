"""Mixed precision, memory layout and torch.compile on CPU.

- every registered method trains under Lightning's ``precision="bf16-mixed"`` (CPU autocast to
  bfloat16), and its first loss stays close to the float32 one from the same weights and views;
- the losses that need float32 get it: InfoNCE logits reach cross-entropy as float32 with
  autocast off, queues (lightly's MemoryBankModule in MoCo, SeCo's three) stay float32 and
  unit-norm, EMA copies stay float32;
- ``trainer.channels_last`` converts weights and batches, and gives the same outputs;
- ``trainer.compile`` runs, and its checkpoint loads into a plain encoder (no ``_orig_mod.``).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from eossl.methods import available_methods, get_method

BANDS = ["B02", "B03", "B04", "B08", "B11"]  # visible + NIR/SWIR: every method can use them
CROP = 16
BATCH = 4

# Tiny settings per method; a newly registered method fails test_every_method_has_settings
# until it gets an entry here.
SETTINGS: dict[str, dict] = {
    "byol": {"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 32},
    "colorization": {"decoder_channels": [32, 16, 16, 8], "decoder_blocks": 1,
                     "picture_patches": 0},
    "dense": {"embed_dim": 16, "num_pairs": 64, "cross_negatives": 64, "max_shift": 4,
              "decoder_channels": [32, 16, 16, 8], "map_at_end": False},
    "moco": {"queue_size": 16, "proj_dim": 16},
    "moco-tp": {"queue_size": 16, "proj_dim": 16},
    "rsbyol": {"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 32,
               "pool": ["B02", "B03", "B04", "B08", "B11"]},
    "seco": {"queue_size": 16, "proj_dim": 16, "proj_hidden_dim": 32},
    "simclr": {"proj_hidden_dim": 32, "proj_dim": 16},
    "spectral": {"pixels_per_image": 16, "pixel_dim": 16, "pixel_hidden": 16, "proj_dim": 16},
}
DATES = {"seco": 3, "moco-tp": 2}  # multi-date methods: batches (N, T, C, H, W)
MARGIN = {"dense": 4}  # dense cuts two shifted views from a larger source crop
INFO_NCE = {"moco", "moco-tp", "simclr", "seco", "dense", "spectral"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is as fast, and on a busy 2-core machine OpenMP's spinning
    threads made a 0.1 s step take up to 9 s."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _stats():
    from eossl.normalization import BandStats

    n = len(BANDS)
    return BandStats(BANDS, [6.5] * n, [1.0] * n, [100.0] * n, [3000.0] * n).to_dict()


def _model(name: str, **extra):
    torch.manual_seed(0)
    return get_method(name)(BANDS, _stats(), crop_size=CROP, max_steps=2,
                            **{**SETTINGS[name], **extra})


def _batch(name: str, n: int = BATCH, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    side = CROP + MARGIN.get(name, 0)
    shape = (n, DATES[name]) if name in DATES else (n,)
    return {"image": torch.rand(*shape, len(BANDS), side, side, generator=g) * 3000 + 10}


class _Samples(torch.utils.data.Dataset):
    def __init__(self, name: str, n: int) -> None:
        self.x = _batch(name, n)["image"]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i]}


def _fit(model, name: str, precision: str, steps: int = 2, callbacks=()):
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    class Losses(Callback):
        def __init__(self) -> None:
            self.values: list[torch.Tensor] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.values.append(outputs["loss"].detach().float())

    rec = Losses()
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision, max_steps=steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[rec, *callbacks])
    loader = torch.utils.data.DataLoader(_Samples(name, BATCH * steps), batch_size=BATCH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, loader)
    return torch.stack(rec.values)


def test_every_method_has_settings():
    assert set(available_methods()) <= set(SETTINGS), "add tiny settings for the new method"


@pytest.fixture
def spy_cross_entropy(monkeypatch):
    """Every F.cross_entropy call's (logits dtype, autocast on?) during the test."""
    calls = []
    real = F.cross_entropy

    def spy(input, *args, **kwargs):
        calls.append((input.dtype, torch.is_autocast_enabled("cpu")))
        return real(input, *args, **kwargs)

    monkeypatch.setattr(F, "cross_entropy", spy)
    return calls


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_bf16_mixed_trains_every_method(name, spy_cross_entropy):
    model = _model(name)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    losses = _fit(model, name, "bf16-mixed")
    assert losses.shape == (2,) and torch.isfinite(losses).all(), losses
    after = model.state_dict()
    # the master weights and every buffer stay float32 (autocast casts on the fly only)
    for k, v in after.items():
        if v.is_floating_point():
            assert v.dtype == torch.float32, f"{name}: {k} is {v.dtype}"
    moved = [k for k in before if k.startswith("backbone.") and before[k].is_floating_point()
             and not torch.equal(before[k], after[k])]
    assert moved, f"{name}: no backbone weight changed in two bf16 steps"
    for k, v in after.items():
        if v.is_floating_point():
            assert torch.isfinite(v).all(), f"{name}: {k} is not finite"
    if name in INFO_NCE:
        # the logits: float32, computed outside autocast (InfoNCE at T=0.07-0.2 divides
        # cosines by the temperature; bf16's 8-bit mantissa would round them to ~0.4 %)
        assert spy_cross_entropy, f"{name}: no InfoNCE cross-entropy seen"
        assert set(spy_cross_entropy) == {(torch.float32, False)}, spy_cross_entropy
    # queues: float32, finite, unit-norm rows (keys are L2-normalised before enqueueing)
    banks = [m.bank for m in model.modules() if type(m).__name__ == "MemoryBankModule"
             and m.size[0] > 0]
    if name in ("moco", "moco-tp", "seco"):
        assert banks, f"{name}: no queue found"
    for bank in banks:
        assert bank.dtype == torch.float32
        torch.testing.assert_close(bank.norm(dim=1), torch.ones(len(bank)), atol=1e-2,
                                   rtol=0)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_bf16_first_loss_is_close_to_float32(name):
    """Same weights, same views (same seed): bf16 autocast changes the first loss by well under
    a percent-level tolerance, so mixed precision trains the same objective."""
    import lightning as L

    import copy

    base = _model(name)
    base.train()
    batch = _batch(name, n=8, seed=3)  # BN over 4 samples would amplify rounding
    losses = {}
    for precision in ("32-true", "bf16-mixed"):
        model = copy.deepcopy(base)  # a step updates queues and EMA copies in place
        torch.manual_seed(5)
        plugin = L.Trainer(accelerator="cpu", precision=precision, logger=False,
                           enable_progress_bar=False).precision_plugin
        with warnings.catch_warnings(), torch.no_grad(), plugin.forward_context():
            warnings.simplefilter("ignore")
            losses[precision] = float(model.training_step(batch, 0))
    ref, got = losses["32-true"], losses["bf16-mixed"]
    assert abs(got - ref) <= 0.03 * abs(ref) + 1e-3, losses


def test_float32_losses_helper_turns_autocast_off():
    from eossl.methods.base import float32_loss

    a = torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ a.T).dtype == torch.bfloat16
        out = float32_loss(lambda x, y: (x @ y.T, torch.is_autocast_enabled("cpu")),
                           a.bfloat16(), a)
    logits, on = out
    assert logits.dtype == torch.float32 and on is False


def test_channels_last_converts_weights_and_batches_and_matches():
    from eossl.train import ChannelsLast

    model = _model("simclr").eval()
    x = _batch("simclr")["image"]
    with torch.no_grad():
        ref = model.backbone(model.normalizer(x))
    cb = ChannelsLast()
    cb.setup(None, model, "fit")
    w = model.backbone.model.conv1.weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    batch = {"image": x.clone(), "label": torch.zeros(BATCH)}
    cb.on_train_batch_start(None, model, batch, 0)
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    assert not batch["image"].is_contiguous()
    with torch.no_grad():
        feats = model.backbone.model.forward_features(model.normalizer(batch["image"]))
        got = model.backbone(model.normalizer(batch["image"]))
    assert feats.is_contiguous(memory_format=torch.channels_last)  # NHWC all the way
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_channels_last_bf16_pretrain_records_options(sample_cache, tmp_path):
    """The CLI options reach the Trainer: a two-step bf16 + channels-last run from the
    command line."""
    import json

    import yaml

    from eossl.cli import main

    out = tmp_path / "run"
    code = main(["--cache", str(sample_cache), "pretrain", "--method", "simclr",
                 "--precision", "bf16-mixed", "--channels-last", "--max-steps", "2",
                 "--batch-size", "4", "--crop-size", "32", "--bands", "B02,B03,B04,B08",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    t = yaml.safe_load((out / "config.yaml").read_text())["trainer"]
    assert t["precision"] == "bf16-mixed" and t["channels_last"] is True
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


def test_compile_trains_and_checkpoint_loads_into_plain_encoder(tmp_path):
    """torch.compile (inductor, on CPU) of the backbone: two steps run, the checkpoint's keys
    are the plain ``backbone.*`` ones, and ``load_encoder`` rebuilds an eager encoder that
    computes what the trained module computes."""
    import lightning as L

    from eossl.checkpoint import load_encoder
    from eossl.train import CompileBackbone

    model = _model("simclr", backbone="test_resnet", stem_stride=4)
    cb = CompileBackbone()
    _fit(model, "simclr", "32-true", steps=2, callbacks=[cb])
    assert cb.compiled == ["backbone"]
    assert model.backbone._compiled_call_impl is not None  # really compiled
    path = tmp_path / "c.ckpt"
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    keys = torch.load(path, weights_only=True)["state_dict"].keys()
    assert not [k for k in keys if "_orig_mod" in k]
    assert [k for k in keys if k.startswith("backbone.model.")]
    enc = load_encoder(path)
    x = _batch("simclr", seed=9)["image"]
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(enc(x), model.backbone(model.normalizer(x)), rtol=1e-4,
                                   atol=1e-4)


def test_cli_options_reach_the_config():
    from eossl.cli import build_parser

    p = build_parser()
    a = p.parse_args(["pretrain", "--compile", "--channels-last"])
    assert a.compile is True and a.channels_last is True
    assert p.parse_args(["pretrain", "--compile", "max-autotune"]).compile == "max-autotune"
    a = p.parse_args(["pretrain"])
    assert a.compile is None and a.channels_last is None  # the recipe decides
