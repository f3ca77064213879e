"""RGB + spectral ensemble on the real labelled patches: three rows per seed, the ensemble is
the logit average of its members, saliency picture written; ImageNet-weights loading."""

import numpy as np
import pytest
import torch

from eossl.errors import ConfigError
from eossl.checkpoint import load_timm_weights
from eossl.evaluate.ensemble import run_ensemble, summarize
from eossl.evaluate.metrics import classification_metrics
from eossl.methods import get_method
from eossl.checkpoint import load_encoder
from eossl.models.backbones import build_backbone


@pytest.fixture(scope="module")
def colorization_ckpt(brandenburg, tmp_path_factory):
    """An (untrained) colorization checkpoint in the format pretraining writes."""
    torch.manual_seed(0)
    stats = brandenburg.stats()
    m = get_method("colorization")(bands=brandenburg.bands, stats=stats.to_dict(), crop_size=32)
    path = tmp_path_factory.mktemp("col") / "colorization.ckpt"
    torch.save({"state_dict": m.state_dict(), "eossl": m.eossl_metadata(),
                "hyper_parameters": dict(m.hparams)}, path)
    return path, stats


def test_ensemble_on_real_patches(brandenburg, colorization_ckpt, tmp_path):
    path, stats = colorization_ckpt
    train, test = brandenburg.patches("train"), brandenburg.patches("test")
    enc = load_encoder(path)
    res = run_ensemble(train, test, enc, stats=stats, seeds=(0,), epochs=1, batch_size=64,
                       saliency_path=tmp_path / "saliency.png", saliency_patches=4)
    assert [r["model"] for r in res.records] == ["rgb", "spectral", "ensemble"]
    assert "random init" in res.rgb_init
    rows = {r["model"]: r for r in res.records}
    lg = res.logits[0]
    assert lg["rgb"].shape == lg["spectral"].shape == (len(test), len(train.classes))
    assert not np.allclose(lg["rgb"], lg["spectral"])  # two different members
    avg = (lg["rgb"] + lg["spectral"]) / 2
    m = classification_metrics(res.labels, avg.argmax(1), train.classes)
    assert rows["ensemble"]["accuracy"] == pytest.approx(m["accuracy"])
    assert rows["ensemble"]["macro_f1"] == pytest.approx(m["macro_f1"])
    for name in ("rgb", "spectral"):
        m = classification_metrics(res.labels, lg[name].argmax(1), train.classes)
        assert rows[name]["balanced_accuracy"] == pytest.approx(m["balanced_accuracy"])
    np.testing.assert_array_equal(res.labels, test.labels)
    assert res.saliency_path.read_bytes()[:4] == b"\x89PNG"
    assert res.saliency_path.stat().st_size > 5000
    s = summarize(res.records)
    assert [r["model"] for r in s] == ["rgb", "spectral", "ensemble"]


def test_spectral_member_must_not_see_rgb(brandenburg):
    from eossl.models.encoder import Encoder

    stats = brandenburg.stats()
    enc = Encoder.random(stats)  # all 13 bands, visible ones included
    with pytest.raises(ConfigError, match="must not see the visible bands"):
        run_ensemble(brandenburg.patches("train"), brandenburg.patches("test"), enc,
                     stats=stats, epochs=1)


def test_load_timm_weights(tmp_path):
    import timm

    torch.manual_seed(3)
    ref = timm.create_model("resnet18", pretrained=False, num_classes=1000)  # with ImageNet fc
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    bb = build_backbone("resnet18", in_chans=3, stem_stride=2)
    load_timm_weights(bb, path)
    assert torch.equal(bb.model.conv1.weight, ref.conv1.weight)
    assert torch.equal(bb.model.layer4[1].bn2.running_var, ref.layer4[1].bn2.running_var)
    other = tmp_path / "resnet34.pth"
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), other)
    with pytest.raises(ConfigError, match="resnet34.pth"):
        load_timm_weights(build_backbone("resnet18", in_chans=3), other)
    with pytest.raises(ConfigError, match="no such file"):
        load_timm_weights(bb, tmp_path / "missing.pth")


def test_cli_missing_weights_file(sample_cache, colorization_ckpt, capsys, tmp_path):
    from eossl.cli import main

    rc = main(["--cache", str(sample_cache), "evaluate", "ensemble", "--checkpoint",
               str(colorization_ckpt[0]), "--rgb-weights", str(tmp_path / "nope.pth"),
               "--seeds", "0", "--epochs", "1"])
    assert rc == 2 and "nope.pth: no such file" in capsys.readouterr().err
