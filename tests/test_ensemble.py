"""RGB + spectral ensemble on the real labelled patches: three members per row, the random
twin's row shares the RGB member, saliency picture written; ImageNet-weights loading."""

import pytest
import torch

from eossl.checkpoint import load_encoder, load_timm_weights
from eossl.errors import ConfigError
from eossl.methods import get_method
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
    """Each row (the colorization encoder, its random twin) holds the three members; the RGB
    member is the same for both rows of a seed; the saliency picture is written and recorded."""
    from conftest import first_fold_context
    from eossl.evaluate.ensemble import Ensemble

    path, _ = colorization_ckpt
    enc = load_encoder(path)
    ev = Ensemble(epochs=1, batch_size=64, saliency_patches=3)
    assert ev.applies(enc) is None
    ctx = first_fold_context("brandenburg", source=brandenburg, root=tmp_path,
                             options={"first_seed": 0})
    recs = ev.run(ctx, {"colorization": enc, "twin": enc.random_twin(0)}, seed=0)
    acc = {(r["model"], r["column"]): r["value"] for r in recs if r["metric"] == "accuracy"}
    assert set(acc) == {(m, c) for m in ("colorization", "twin")
                        for c in ("rgb", "spectral", "ensemble")}
    assert acc[("colorization", "rgb")] == acc[("twin", "rgb")]  # one RGB member per seed
    assert all(0 <= v <= 1 for v in acc.values())
    assert "random init" in recs[0]["rgb_init"]
    pics = [r for r in recs if r["table"] == "_figure"]
    assert len(pics) == 2 and all((tmp_path / p["path"]).read_bytes()[:4] == b"\x89PNG"
                                  for p in pics)


def test_spectral_member_must_not_see_rgb(brandenburg):
    from eossl.evaluate.ensemble import Ensemble
    from eossl.models.encoder import Encoder

    enc = Encoder.random(brandenburg.stats())  # all 13 bands, visible ones included
    assert "sees none of the visible bands" in Ensemble().applies(enc)


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
