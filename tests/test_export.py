"""eossl export: safetensors into plain timm, ONNX under onnxruntime, TorchScript; the sidecar;
band checks when loading; never overwriting."""

import json

import numpy as np
import pytest
import torch

from eossl.cli import main
from eossl.errors import BandError, OutputExistsError
from eossl.export import export, load_exported, sidecar_path


def make_checkpoint(path, brandenburg, bands=("B02", "B03", "B04", "B08"), method="moco",
                    stem_stride=2):
    """A real-statistics checkpoint in eossl's format, without spending time on training."""
    from eossl.methods import get_method

    torch.manual_seed(0)
    stats = brandenburg.stats().subset(list(bands))
    m = get_method(method)(bands=list(bands), stats=stats.to_dict(), crop_size=32,
                           stem_stride=stem_stride)
    torch.save({"state_dict": m.state_dict(), "eossl": m.eossl_metadata()}, path)
    return m


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, brandenburg):
    path = tmp_path_factory.mktemp("export") / "last.ckpt"
    model = make_checkpoint(path, brandenburg)
    return path, model.encoder().eval()


def real_crops(brandenburg, bands, n=3, size=32):
    scene = brandenburg.scenes[0]
    return np.stack([scene.read((100 + 40 * i, 200 + 60 * i, size, size), bands=bands)
                     for i in range(n)])


def test_safetensors_loads_into_plain_timm(ckpt, brandenburg, tmp_path):
    import timm
    from safetensors.torch import load_file

    path, encoder = ckpt
    out = export(path, "safetensors", tmp_path / "m.safetensors")
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["bands"] == ["B02", "B03", "B04", "B08"]
    assert meta["wavelengths_nm"][2] == pytest.approx(665, abs=5)  # B04 red
    assert meta["timm_model"] == "resnet18" and meta["stem_stride"] == 2
    assert meta["method"] == "moco" and meta["patch_size"] == 32 and meta["eossl_version"]
    assert len(meta["normalization"]["mean"]) == 4
    # exactly what a user without eossl does, from the sidecar alone
    model = timm.create_model(meta["timm_model"], in_chans=meta["in_chans"], num_classes=0)
    for line in meta["stem_recipe"]:
        exec(line, {"torch": torch, "model": model})
    model.load_state_dict(load_file(str(out)))
    model.eval()
    raw = real_crops(brandenburg, meta["bands"])
    x = torch.from_numpy(load_exported(out).normalize(raw))
    with torch.no_grad():
        got = model(x)
        want = encoder(torch.from_numpy(raw))
    assert got.shape == (3, meta["embedding_dim"])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # without the stem recipe the model computes something else: the sidecar line matters
    plain = timm.create_model(meta["timm_model"], in_chans=4, num_classes=0).eval()
    plain.load_state_dict(load_file(str(out)))
    with torch.no_grad():
        assert not torch.allclose(plain(x), want, atol=1e-3)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_onnx_and_torchscript_match_pytorch(ckpt, brandenburg, tmp_path, fmt):
    path, encoder = ckpt
    out = export(path, fmt, tmp_path / f"m.{fmt}")
    loaded = load_exported(out)
    for size in (32, 48):  # dynamic spatial axes
        raw = real_crops(brandenburg, loaded.bands, n=2, size=size)
        with torch.no_grad():
            want = encoder(torch.from_numpy(raw)).numpy()
        got = loaded(raw)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        assert sess.get_inputs()[0].name == "image"


def test_loader_checks_bands_by_name(ckpt, brandenburg, tmp_path):
    path, encoder = ckpt
    out = export(path, "safetensors", tmp_path / "m.safetensors")
    with pytest.raises(BandError, match="lack B08"):
        load_exported(out, bands=["B02", "B03", "B04", "B05"])
    with pytest.raises(BandError, match="reorder"):
        load_exported(out, bands=["B04", "B03", "B02", "B08"])
    # all 13 bands in sensor order, mapped by name onto the export's 4
    all_bands = brandenburg.bands
    loaded = load_exported(out, bands=all_bands, reorder=True)
    raw_all = real_crops(brandenburg, all_bands, n=2)
    raw4 = real_crops(brandenburg, loaded.bands, n=2)
    np.testing.assert_allclose(loaded(raw_all), load_exported(out)(raw4), atol=1e-6)
    rev = list(reversed(loaded.bands))
    np.testing.assert_allclose(load_exported(out, bands=rev, reorder=True)(raw4[:, ::-1]),
                               load_exported(out)(raw4), atol=1e-6)
    with pytest.raises(BandError, match="has 13 bands; the export expects 4"):
        load_exported(out)(raw_all)


def test_cli_export_never_overwrites(ckpt, tmp_path, capsys):
    path, _ = ckpt
    out = tmp_path / "e.onnx"
    assert main(["export", str(path), "--format", "onnx", "--out", str(out)]) == 0
    before = out.read_bytes()
    assert main(["export", str(path), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and str(out) in err
    assert out.read_bytes() == before
    with pytest.raises(OutputExistsError):
        export(path, "onnx", out)
    assert main(["export", str(path), "--format", "onnx", "--out", str(out), "--overwrite"]) == 0
    assert not list(tmp_path.glob(".*part"))  # no temporary files left behind


def test_foreign_checkpoint_is_refused(tmp_path, capsys):
    bad = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, bad)
    assert main(["export", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not an eossl pretraining checkpoint" in err and str(bad) in err
