"""External encoders: weight files in torchgeo's and timm's formats, written here, read as
eossl encoders (band mapping by name, their own normalisation) and probed on the real scene."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from eossl.checkpoint import checkpoint_metadata, load_encoder
from eossl.cli import main
from eossl.errors import ConfigError

# torchgeo's file name for ResNet18_Weights.SENTINEL2_ALL_MOCO (SSL4EO-S12): a file downloaded
# from its URL keeps it, which is how eossl recognises it without a sidecar
TORCHGEO_FILE = "resnet18_sentinel2_all_moco-59bfdff9.pth"
S2_TORCHGEO = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8a", "B9", "B10", "B11", "B12"]
S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def _timm_resnet18(in_chans: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("resnet18", in_chans=in_chans, num_classes=0).eval()


@pytest.fixture(scope="module")
def torchgeo_file(tmp_path_factory):
    """A state dict as torchgeo ships SSL4EO-S12 ResNet-18 weights: timm's resnet18 keys,
    13 input channels, no classifier; weights drawn here, not downloaded."""
    model = _timm_resnet18(13, seed=7)  # not the random twin's draw (seed 0)
    path = tmp_path_factory.mktemp("tg") / TORCHGEO_FILE
    torch.save(model.state_dict(), path)
    return path, model


def test_torchgeo_file_is_read_by_its_name_with_torchgeo_bands_and_normalisation(
        torchgeo_file, brandenburg):
    path, model = torchgeo_file
    enc = load_encoder(path)
    assert enc.bands == S2  # torchgeo's B1 ... B8a read as eossl's Sentinel-2 names
    assert enc.backbone.stem_stride == 4  # timm's own stem, as the weights were trained
    meta = checkpoint_metadata(path)
    assert meta["pretrain_data"]["data"] == "SSL4EO-S12"
    # the same features as timm's own model fed as torchgeo feeds it (raw / 10000), on a real
    # batch of the scene in another band order: bands are picked by name, not position
    scene = brandenburg.scenes[0]
    raw = torch.from_numpy(scene.read((200, 200, 64, 64)))[None]
    order = list(reversed(scene.bands))
    shuffled = raw[:, [scene.bands.index(b) for b in order]]
    with torch.no_grad():
        want = model(raw[:, [scene.bands.index(b) for b in S2]] / 10000)
        got = enc.for_bands(order)(shuffled)
    assert torch.allclose(got, want, atol=1e-5)
    twin = enc.random_twin(0)
    assert twin.bands == enc.bands and not torch.allclose(twin(raw), enc(raw))


def test_timm_safetensors_with_a_sidecar_is_probed_on_the_real_scene(
        tmp_path, brandenburg, sample_cache, capsys, small_evaluations):
    """A timm-format safetensors file of four bands, described by a sidecar, is a probe row
    beside the spectral baseline and its random twin."""
    from safetensors.torch import save_file

    model = _timm_resnet18(4, seed=1)
    path = tmp_path / "rgbn.safetensors"
    save_file(model.state_dict(), str(path))
    (tmp_path / "rgbn.safetensors.json").write_text(json.dumps({
        "architecture": "resnet18", "bands": ["red", "green", "blue", "nir"],
        "sensor": "sentinel2-l2a", "normalization": {"mean": [1000, 900, 800, 2500],
                                                     "std": 1500}}))
    enc = load_encoder(path)
    assert enc.bands == ["B04", "B03", "B02", "B08"]
    assert enc.stats.mean == [1000, 900, 800, 2500] and enc.stats.std == [1500] * 4
    out = tmp_path / "probe"
    code = main(["--cache", str(sample_cache), "probe", "--checkpoint", f"rgbn={path}",
                 "--seeds", "0", "--fractions", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "rgbn: pretrained on other data" in printed
    records = json.loads((out / "results.json").read_text())["records"]
    rows = {r["model"] for r in records}
    assert {"rgbn", "random init", "spectral baseline"} <= rows
    acc = [r["value"] for r in records if r["model"] == "rgbn" and r["metric"] == "accuracy"]
    assert acc and all(0 <= a <= 1 for a in acc)


def _write(tmp_path, spec, in_chans=4, name="w.pth"):
    path = tmp_path / name
    torch.save(_timm_resnet18(in_chans).state_dict(), path)
    if spec is not None:
        (tmp_path / f"{name}.json").write_text(spec if isinstance(spec, str) else
                                               json.dumps(spec))
    return path


GOOD = {"architecture": "resnet18", "bands": ["B02", "B03", "B04", "B08"],
        "normalization": {"mean": 0, "std": 10000}}


@pytest.mark.parametrize("spec,in_chans,needle", [
    ({**GOOD, "bands": ["B02", "B03", "B04"]}, 4,
     "first convolution (conv1) takes 4 channels, but its description names 3 bands"),
    ({k: v for k, v in GOOD.items() if k != "bands"}, 4, "no 'bands'"),
    ({**GOOD, "normalization": {"mean": [0, 0], "std": 1}}, 4, "2 values for 4 bands"),
    ({**GOOD, "bands": ["B02", "B03", "B04", "B4"]}, 4, "name B04 twice"),
    ({**GOOD, "architecture": "resnet34"}, 4, "tensors of resnet34"),
    ({**GOOD, "mean": 0}, 4, "unknown key(s) mean"),
    ("{not json", 4, "not valid JSON"),
    (None, 4, "need a sidecar w.pth.json"),
])
def test_bad_descriptions_are_one_line_errors(tmp_path, capsys, spec, in_chans, needle):
    path = _write(tmp_path, spec, in_chans)
    if spec is None:  # no sidecar: a plain state dict is no eossl checkpoint either
        code = main(["export", "--checkpoint", str(path)])
        err = capsys.readouterr().err
        assert code == 2 and "sidecar w.pth.json" in err and err.count("\n") == 1
        return
    with pytest.raises(ConfigError) as e:
        load_encoder(path)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg, msg
    # the CLI says the same on one line (embed reads the checkpoint before the data)
    code = main(["embed", "--checkpoint", str(path), "--data", str(tmp_path / "none.tif"),
                 "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1


def test_data_without_the_encoders_bands_is_refused(tmp_path):
    from eossl.errors import BandError

    enc = load_encoder(_write(tmp_path, GOOD))
    with pytest.raises(BandError, match="none of the bands"):
        enc.for_bands(["VV", "VH"])


def test_eossl_exports_serve_as_checkpoints(torchgeo_file, tiny_checkpoints, tmp_path,
                                            brandenburg):
    """A timm folder and a torchgeo file written by ``eossl export`` are read back as the
    encoder they came from, wherever a checkpoint is taken; ONNX is refused in one line."""
    from eossl.export import export

    scene = brandenburg.scenes[0]
    raw = torch.from_numpy(scene.read((300, 300, 32, 32)))[None]
    path, _ = torchgeo_file
    for fmt, src in (("torchgeo", path), ("timm", tiny_checkpoints["moco"])):
        out = export(src, fmt, tmp_path / f"{fmt}-export").path
        enc, back = load_encoder(src), load_encoder(out)
        assert back.bands == enc.bands
        with torch.no_grad():
            assert torch.allclose(back.for_bands(scene.bands)(raw),
                                  enc.for_bands(scene.bands)(raw), atol=1e-5), fmt
    onnx = export(path, "onnx", tmp_path / "m.onnx").path
    with pytest.raises(ConfigError, match="an onnx export runs only as itself"):
        load_encoder(onnx)


def test_a_torchgeo_name_reads_the_file_torchgeo_would_keep(torchgeo_file, tmp_path,
                                                            monkeypatch):
    """--checkpoint torchgeo:NAME is that entry's file in torch's hub cache; a missing file
    is one line with the URL to fetch (eossl downloads nothing)."""
    import shutil

    from eossl.commands._options import parse_checkpoints

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    name = "torchgeo:ResNet18_Weights.SENTINEL2_ALL_MOCO"
    with pytest.raises(ConfigError) as e:
        parse_checkpoints([name])
    assert "resnet18_sentinel2_all_moco-59bfdff9.pth" in str(e.value)
    assert "https://" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    shutil.copy(torchgeo_file[0], tmp_path / "hub" / "checkpoints" / TORCHGEO_FILE)
    got = parse_checkpoints([f"ssl4eo={name}"])
    assert got == {"ssl4eo": str(tmp_path / "hub" / "checkpoints" / TORCHGEO_FILE)}
    assert load_encoder(name).bands == S2
    with pytest.raises(ConfigError, match="torchgeo has no weights 'ResNet18_Weights.NOPE'"):
        load_encoder("torchgeo:ResNet18_Weights.NOPE")


def test_a_folder_that_is_no_export_is_named_as_such(tmp_path):
    from eossl.errors import DataError

    with pytest.raises(DataError, match="is a folder; expected a checkpoint file"):
        load_encoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "resnet18"}))
    with pytest.raises(ConfigError, match="not an eossl export names no bands"):
        load_encoder(tmp_path)


def test_probe_takes_a_folder_as_checkpoint(capsys, tmp_path, sample_cache):
    """An export's timm folder is a checkpoint for the evaluations too: the folder reaches the
    encoder loader (here an empty one, refused there as no export) instead of being refused
    up front as a missing file."""
    folder = tmp_path / "export"
    folder.mkdir()
    code = main(["--cache", str(sample_cache), "probe", "--checkpoint", f"x={folder}",
                 "--seeds", "0", "--fractions", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "is a folder; expected a checkpoint file" in err, err
    assert "does not exist" not in err
