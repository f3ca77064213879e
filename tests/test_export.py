"""eossl export, loaded the way users of each library load weights, on real Sentinel-2 crops:
timm (local-dir, pretrained_cfg_overlay, checkpoint_path), torchgeo (ClassificationTask and
SemanticSegmentationTask with weights=FILE, a WeightsEnum entry), terratorch (where it is
installed), ONNX, TorchScript; every one gives eossl's own features. Non-standard
architectures fail loudly in plain timm and load through eossl; a mismatch is never kept."""

import json

import numpy as np
import pytest
import torch

from eossl.cli import main
from eossl.errors import BandError, ConfigError, ExportCheckError, OutputExistsError
from eossl.export import (TIMM_CONFIG, TIMM_WEIGHTS, check_batch, export, load_exported,
                          read_export_metadata, sidecar_path, timm_model, torchgeo_weights)

BANDS = ["B02", "B03", "B04", "B08"]


def make_checkpoint(path, brandenburg, stem_stride, bands=BANDS, method="moco"):
    """A real-statistics checkpoint in eossl's format, without spending time on training."""
    from eossl.methods import get_method

    torch.manual_seed(0)
    stats = brandenburg.stats().subset(list(bands))
    m = get_method(method)(bands=list(bands), stats=stats.to_dict(), crop_size=32,
                           stem_stride=stem_stride)
    torch.save({"state_dict": m.state_dict(), "eossl": m.eossl_metadata()}, path)
    return path, m.encoder().eval()


@pytest.fixture(scope="module")
def standard(tmp_path_factory, brandenburg):
    """ResNet-18 with timm's own stem (stride 4)."""
    return make_checkpoint(tmp_path_factory.mktemp("std") / "last.ckpt", brandenburg, 4)


@pytest.fixture(scope="module")
def small_stem(tmp_path_factory, brandenburg):
    """ResNet-18 with eossl's small-patch stem (stride 2, no max-pool)."""
    return make_checkpoint(tmp_path_factory.mktemp("s2") / "last.ckpt", brandenburg, 2)


@pytest.fixture(scope="module")
def raw(brandenburg):
    """Real crops (N, 4, 48, 48) of the sample scene."""
    scene = brandenburg.scenes[0]
    return np.stack([scene.read((300 + 50 * i, 400 + 70 * i, 48, 48), bands=BANDS)
                     for i in range(3)])


def normalised(raw, meta_or_cfg_mean, std, log):
    """What a timm/terratorch user computes from the export: log1p where the metadata says
    so, then timm's (x - mean) / std with pretrained_cfg's mean/std."""
    s = (1, -1, 1, 1)
    x = np.where(np.reshape(log, s), np.log1p(np.clip(raw, 0, None)), raw)
    return torch.from_numpy(((x - np.reshape(meta_or_cfg_mean, s)) / np.reshape(std, s))
                            .astype("float32"))


def reference(encoder, raw):
    with torch.no_grad():
        x = torch.from_numpy(raw)
        return encoder(x), encoder.forward_features(x)


# ------------------------------------------------------------------------------------ timm
def test_timm_export_loads_as_is_in_timm(standard, raw, tmp_path):
    import timm

    ckpt, encoder = standard
    res = export(ckpt, "timm", tmp_path / "m")
    folder = res.path
    assert sorted(p.name for p in folder.iterdir()) == [TIMM_CONFIG, TIMM_WEIGHTS]
    cfg = json.loads((folder / TIMM_CONFIG).read_text())
    meta = cfg["eossl"]
    assert meta["bands"] == BANDS and meta["standard"] and meta["architecture"] == "resnet18"
    assert meta["wavelengths_nm"][2] == pytest.approx(665, abs=5)  # B04 red
    assert {c.library for c in res.checks} >= {"timm local-dir", "timm checkpoint_path",
                                                "timm pretrained_cfg_overlay"}
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    pc = model.pretrained_cfg
    # the encoder's own statistics, not ImageNet's
    assert pc["mean"] == pytest.approx(encoder.stats.mean) and pc["input_size"][0] == 4
    x = normalised(raw, pc["mean"], pc["std"], meta["normalization"]["log"])
    pooled, fmap = reference(encoder, raw)
    with torch.no_grad():
        torch.testing.assert_close(model(x), pooled, rtol=0, atol=1e-4)
        for kw in (dict(pretrained=True, pretrained_cfg_overlay=dict(
                file=str(folder / TIMM_WEIGHTS))), dict(checkpoint_path=str(
                folder / TIMM_WEIGHTS))):
            plain = timm.create_model("resnet18", in_chans=4, num_classes=0, **kw).eval()
            torch.testing.assert_close(plain(x), pooled, rtol=0, atol=1e-4)
        np.testing.assert_allclose(load_exported(folder)(raw), pooled.numpy(), atol=1e-4)
        torch.testing.assert_close(timm_model(folder)(x), pooled, rtol=0, atol=1e-4)


def test_terratorch_backbone_gets_the_same_features(standard, raw, tmp_path):
    pytest.importorskip("terratorch")
    from terratorch.registry import BACKBONE_REGISTRY

    ckpt, encoder = standard
    res = export(ckpt, "timm", tmp_path / "m")
    assert "terratorch timm backbone" in {c.library for c in res.checks}
    meta = res.metadata
    backbone = BACKBONE_REGISTRY.build(
        "timm_resnet18", pretrained=True, in_chans=4,
        pretrained_cfg_overlay=dict(file=str(res.path / TIMM_WEIGHTS))).eval()
    x = normalised(raw, meta["normalization"]["mean"], meta["normalization"]["std"],
                   meta["normalization"]["log"])
    with torch.no_grad():
        torch.testing.assert_close(backbone(x)[-1], reference(encoder, raw)[1], rtol=0,
                                   atol=1e-4)


def test_small_stem_export_fails_loudly_in_plain_timm(small_stem, raw, tmp_path):
    import timm
    from safetensors.torch import load_file

    ckpt, encoder = small_stem
    folder = export(ckpt, "timm", tmp_path / "m").path
    meta = read_export_metadata(folder)
    assert not meta["standard"] and "stem stride 2" in meta["nonstandard"][0]
    weights = str(folder / TIMM_WEIGHTS)
    with pytest.raises(RuntimeError, match="Unknown model"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    # timm loads pretrained weights non-strictly once the classifier is dropped: only a
    # shape mismatch stops it, and every tensor of a non-standard export mismatches
    for kw in (dict(pretrained=True, pretrained_cfg_overlay=dict(file=weights)),
               dict(checkpoint_path=weights)):
        with pytest.raises(RuntimeError, match="size mismatch"):
            timm.create_model("resnet18", in_chans=4, num_classes=0, **kw)
    with pytest.raises(RuntimeError, match="size mismatch for layer1.0.bn1.weight"):
        timm.create_model("resnet18", in_chans=4, num_classes=0).load_state_dict(
            load_file(weights), strict=False)
    # eossl's loaders rebuild the stem
    pooled, _ = reference(encoder, raw)
    np.testing.assert_allclose(load_exported(folder)(raw), pooled.numpy(), atol=1e-4)
    model = timm_model(folder)
    assert model.pretrained_cfg["mean"] == pytest.approx(encoder.stats.mean)
    x = normalised(raw, model.pretrained_cfg["mean"], model.pretrained_cfg["std"],
                   meta["normalization"]["log"])
    with torch.no_grad():
        torch.testing.assert_close(model(x), pooled, rtol=0, atol=1e-4)


def test_a_silent_mismatch_is_an_error_and_leaves_nothing(small_stem, tmp_path, monkeypatch,
                                                          capsys):
    """What the old export did: the small-stem weights under plain names, as if standard.
    The check in timm finds the other features; the export is not kept."""
    import eossl.export as ex

    monkeypatch.setattr(ex, "nonstandard_reasons", lambda encoder: [])
    ckpt, _ = small_stem
    with pytest.raises(ExportCheckError, match="timm local-dir computes other features"):
        export(ckpt, "timm", tmp_path / "m")
    out = tmp_path / "cli"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nothing was written" in err
    assert list(tmp_path.iterdir()) == []  # no folder, no temporary .part left


# -------------------------------------------------------------------------------- torchgeo
def test_torchgeo_export_loads_in_its_tasks(standard, raw, tmp_path):
    from torchgeo.trainers import ClassificationTask, SemanticSegmentationTask

    ckpt, encoder = standard
    path = export(ckpt, "torchgeo", tmp_path / "m.ckpt").path
    meta = json.loads(sidecar_path(path).read_text())
    x = normalised(raw, meta["normalization"]["mean"], meta["normalization"]["std"],
                   meta["normalization"]["log"])
    pooled, fmap = reference(encoder, raw)
    cls = ClassificationTask(model="resnet18", weights=str(path), in_channels=4,
                             num_classes=5).eval()
    seg = SemanticSegmentationTask(model="unet", backbone="resnet18", weights=str(path),
                                   in_channels=4, num_classes=5).eval()
    w = torchgeo_weights(path)
    # a torchgeo weights entry, as torchgeo's own carry theirs
    assert w.meta["bands"] == BANDS and w.meta["in_chans"] == 4 and w.meta["model"] == "resnet18"
    assert w.meta["ssl_method"] == "moco"
    from_enum = ClassificationTask(model=w.meta["model"], weights=w,
                                   in_channels=w.meta["in_chans"], num_classes=5).eval()
    with torch.no_grad():
        m = cls.model
        torch.testing.assert_close(m.forward_head(m.forward_features(x), pre_logits=True),
                                   pooled, rtol=0, atol=1e-4)
        torch.testing.assert_close(seg.model.encoder(x)[-1], fmap, rtol=0, atol=1e-4)
        torch.testing.assert_close(w.transforms(torch.from_numpy(raw)), x, rtol=0, atol=1e-5)
        m = from_enum.model
        torch.testing.assert_close(m.forward_head(m.forward_features(w.transforms(
            torch.from_numpy(raw))), pre_logits=True), pooled, rtol=0, atol=1e-4)
    np.testing.assert_allclose(load_exported(path)(raw), pooled.numpy(), atol=1e-4)


def test_torchgeo_refuses_a_non_standard_stem(small_stem, tmp_path):
    ckpt, _ = small_stem
    with pytest.raises(ConfigError, match="torchgeo builds timm's standard resnet18.*stem "
                                          "stride 2"):
        export(ckpt, "torchgeo", tmp_path / "m.ckpt")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ ONNX, TorchScript
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_onnx_and_torchscript_match_pytorch(small_stem, brandenburg, tmp_path, fmt):
    ckpt, encoder = small_stem
    out = export(ckpt, fmt, tmp_path / f"m.{fmt}").path
    loaded = load_exported(out)
    scene = brandenburg.scenes[0]
    for size in (32, 48):  # dynamic spatial axes
        raw = np.stack([scene.read((200, 300 + 60 * i, size, size), bands=BANDS)
                        for i in range(2)])
        with torch.no_grad():
            want = encoder(torch.from_numpy(raw)).numpy()
        np.testing.assert_allclose(loaded(raw), want, atol=1e-4, rtol=0)
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        x = loaded.normalize(raw)
        np.testing.assert_allclose(sess.run(None, {"image": x})[0], want, atol=1e-4)


# ----------------------------------------------------------------- other architectures
@pytest.mark.parametrize("method", ["spectral", "rsbyol"])
def test_spectral_and_bandwise_encoders_load_through_eossl(tiny_checkpoints, method, tmp_path,
                                                           brandenburg):
    from eossl.checkpoint import load_encoder

    ckpt = tiny_checkpoints[method]
    encoder = load_encoder(ckpt)
    res = export(ckpt, "timm", tmp_path / "m")
    meta = res.metadata
    assert not meta["standard"]
    assert ("spectral stem" if method == "spectral" else "bandwise encoder") in \
        meta["nonstandard"][0]
    assert any(c.library == "plain timm" and c.max_diff is None for c in res.checks)
    raw, _ = check_batch(encoder.bands, encoder.stats, 32, n=2)
    with torch.no_grad():
        want = encoder(torch.from_numpy(raw)).numpy()
    np.testing.assert_allclose(load_exported(res.path)(raw), want, atol=1e-4)
    if method == "rsbyol":
        with pytest.raises(ConfigError, match="no single timm model"):
            timm_model(res.path)
        with pytest.raises(ConfigError, match="bandwise encoder, which runs its backbone on one"):
            export(ckpt, "onnx", tmp_path / "m.onnx")


def test_check_batch_reads_the_scene_and_never_downloads(brandenburg, sample_cache, tmp_path):
    stats = brandenburg.stats().subset(BANDS)
    raw, note = check_batch(BANDS, stats, 32, n=2, cache=sample_cache)
    assert "real 32 px crops of the Sentinel-2 sample scene" in note
    scene = brandenburg.scenes[0]
    r, c = int(scene.height * 0.3), int(scene.width * 0.3)
    np.testing.assert_array_equal(raw[0], scene.read((r, c, 32, 32), bands=BANDS))
    raw, note = check_batch(BANDS, stats, 32, n=2, cache=tmp_path / "empty")
    assert "drawn from the band statistics" in note and raw.shape == (2, 4, 32, 32)
    assert not (tmp_path / "empty").exists()


# ------------------------------------------------------------------------------- loading
def test_loader_checks_bands_by_name(small_stem, brandenburg, raw, tmp_path):
    ckpt, _ = small_stem
    out = export(ckpt, "onnx", tmp_path / "m.onnx").path
    with pytest.raises(BandError, match="lack B08"):
        load_exported(out, bands=["B02", "B03", "B04", "B05"])
    with pytest.raises(BandError, match="reorder"):
        load_exported(out, bands=["B04", "B03", "B02", "B08"])
    all_bands = brandenburg.bands
    scene = brandenburg.scenes[0]
    raw_all = np.stack([scene.read((300, 400 + 50 * i, 48, 48), bands=all_bands)
                        for i in range(2)])
    loaded = load_exported(out, bands=all_bands, reorder=True)
    raw4 = raw_all[:, [all_bands.index(b) for b in BANDS]]
    np.testing.assert_allclose(loaded(raw_all), load_exported(out)(raw4), atol=1e-6)
    rev = list(reversed(BANDS))
    np.testing.assert_allclose(load_exported(out, bands=rev, reorder=True)(raw4[:, ::-1]),
                               load_exported(out)(raw4), atol=1e-6)
    with pytest.raises(BandError, match="has 13 bands; the export expects 4"):
        load_exported(out)(raw_all)


def test_cli_export_never_overwrites(small_stem, tmp_path, capsys):
    ckpt, _ = small_stem
    out = tmp_path / "e"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "plain timm: refuses it" in printed and f"exported timm: {out}" in printed
    before = (out / TIMM_WEIGHTS).read_bytes()
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and str(out) in err
    assert (out / TIMM_WEIGHTS).read_bytes() == before
    with pytest.raises(OutputExistsError):
        export(ckpt, "timm", out)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]  # no temporary files left
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(mine), "--overwrite"]) == 2
    assert "not an eossl timm export" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep"


def test_foreign_checkpoint_is_refused(tmp_path, capsys):
    bad = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, bad)
    assert main(["export", "--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not an eossl pretraining checkpoint" in err and str(bad) in err
