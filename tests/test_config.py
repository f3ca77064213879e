"""The one validated run configuration (eossl/config.py): schema, merge order, --print-config.

Tests named after an item of the hostile-user findings say so in their docstring; each of those
fails on the code before the schema existed."""

import pytest
import yaml
from test_hostile import cli_output as cli
from test_hostile import one_line

from eossl.config import (
    DEFAULTS,
    RECIPES_DIR,
    load_config,
    model_schema,
    packaged_recipes,
    validate_config,
)
from eossl.errors import ConfigError


@pytest.mark.parametrize("name", packaged_recipes())
def test_every_packaged_recipe_validates(name):
    cfg = load_config(name)
    assert cfg == validate_config(cfg)  # validated output is a fixed point
    raw = yaml.safe_load((RECIPES_DIR / f"{name}.yaml").read_text())
    assert cfg["method"] == raw["method"]
    for key, value in raw.get("model", {}).items():  # every recipe value reaches the model
        assert cfg["model"][key] == (list(value) if isinstance(value, tuple) else value), key


def test_set_is_not_dropped_by_named_options(capsys, tmp_path):
    """Item 1: --set values for keys that also have a named option survive the merge (the
    named options that were not given used to overwrite them with None)."""
    code, out, err = cli(capsys, "pretrain", "--set", "data.crop_size=48", "--set",
                         "model.lr=0.5", "--set", "data.bands=[B02,B03,B04,B08]",
                         "--max-steps", "1", "--out", tmp_path / "X", "--print-config")
    assert code == 0, err
    cfg = yaml.safe_load(out)
    assert cfg["data"]["crop_size"] == 48 and cfg["model"]["lr"] == 0.5
    assert cfg["data"]["bands"] == ["B02", "B03", "B04", "B08"]
    assert cfg["trainer"]["max_steps"] == 1 and cfg["trainer"]["max_time"] is None
    assert not (tmp_path / "X").exists()  # --print-config makes nothing
    # the same key from --set and from its named option: refused, naming both
    code, _, err = cli(capsys, "pretrain", "--set", "data.crop_size=48", "--crop-size", "64",
                       "--print-config")
    assert code == 2 and one_line(err, "data.crop_size", "--set", "--crop-size", "once")


def test_merge_order_recipe_then_set_then_named(capsys, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"method": "simclr", "data": {"batch_size": 8,
                                      "crop_size": 24}, "trainer": {"max_time": "5m"}}))
    code, out, err = cli(capsys, "pretrain", "--config", recipe, "--set", "data.batch_size=16",
                         "--crop-size", "40", "--print-config")
    assert code == 0, err
    cfg = yaml.safe_load(out)
    assert (cfg["method"], cfg["data"]["batch_size"], cfg["data"]["crop_size"]) == \
        ("simclr", 16, 40)
    assert cfg["trainer"]["max_time"] == "5m" and cfg["trainer"]["max_steps"] is None
    assert cfg["data"]["crops_per_epoch"] == DEFAULTS["data"]["crops_per_epoch"]
    # a budget on the command line replaces the recipe's whole budget
    code, out, _ = cli(capsys, "pretrain", "--config", recipe, "--set", "trainer.max_steps=7",
                       "--print-config")
    cfg = yaml.safe_load(out)
    assert cfg["trainer"]["max_steps"] == 7 and cfg["trainer"]["max_time"] is None


@pytest.mark.parametrize("recipe, needles", [
    ({"data": {"batchsize": 4}}, ["unknown key data.batchsize", "did you mean batch_size"]),
    ({"trainer": {"max_tme": "5s"}}, ["unknown key trainer.max_tme", "did you mean max_time"]),
    ({"model": {"queue_sise": 8}}, ["unknown key model.queue_sise", "did you mean queue_size"]),
    ({"model": {"lr": "fast"}}, ["model.lr='fast'", "valid number"]),
    ({"model": {"lr": -0.1}}, ["model.lr=-0.1", "greater than 0"]),
    ({"data": {"batch_size": "lots"}}, ["data.batch_size='lots'", "valid integer"]),
    ({"method": "simclr", "model": {"queue_size": 8}},
     ["unknown key model.queue_size", "valid model keys"]),
    ({"trainer": {"precision": "bf17"}}, ["trainer.precision='bf17'", "bf16"]),
    ({"model": {"crop_size": 8}}, ["model.crop_size", "data.crop_size"]),
])
def test_misspelt_keys_and_wrong_types_are_one_line(capsys, tmp_path, recipe, needles):
    """Item 4: unknown keys (with the nearest valid name) and wrong types or values in any
    section are one-line errors naming key, value and origin; nothing is created."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, _, err = cli(capsys, "pretrain", "--config", path, "--max-steps", "1", "--out",
                       tmp_path / "run")
    assert code == 2 and one_line(err, path, *needles)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, needles", [
    (["--lr", "-1"], ["model.lr=-1.0 (from --lr)", "greater than 0"]),
    (["--precision", "17-mixed"], ["trainer.precision='17-mixed' (from --precision)"]),
    (["--accelerator", "tpu"], ["accelerator='tpu'", "do not work here"]),
    (["--devices", "lots"], ["trainer.devices='lots' (from --devices)"]),
    (["--max-time", "ten minutes"], ["trainer.max_time='ten minutes'", "cannot read duration"]),
    (["--set", "trainer.compile=fast"], ["trainer.compile='fast' (from --set"]),
    (["--max-steps", "0"], ["trainer.max_steps=0 (from --max-steps)"]),
    (["--max-time", "0s"], ["trainer.max_time='0s' (from --max-time)", "must be positive"]),
    (["--seed", "-5"], ["seed=-5 (from --seed)"]),
    (["--backbone", "resnet81"], ["model.backbone='resnet81' (from --backbone)",
                                  "did you mean: resnet18"]),
    (["--method", "mocoo"], ["method='mocoo' (from --method): unknown method",
                             "did you mean moco"]),
])
def test_bad_option_values_leave_no_folder(capsys, tmp_path, args, needles):
    """Item 5: a start refused for a bad option leaves no folder behind (a plain rerun with the
    corrected option is not blocked)."""
    out = tmp_path / "run"
    code, _, err = cli(capsys, "pretrain", "--max-steps", "1", "--out", out, *args)
    assert code == 2 and one_line(err, *needles)
    assert not out.exists()


def test_non_utf8_config_and_config_folder(capsys, tmp_path):
    """Item 7: a config file that is not UTF-8 text (and a folder given as config)."""
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("method: moco\n# r\xe9sum\xe9\n".encode("latin-1"))
    code, _, err = cli(capsys, "pretrain", "--config", bad, "--print-config")
    assert code == 2 and one_line(err, bad, "not UTF-8")
    code, _, err = cli(capsys, "pretrain", "--config", tmp_path, "--print-config")
    assert code == 2 and one_line(err, tmp_path, "is a folder")


def test_model_schema_is_the_method_signature():
    """The model: section is built from the method class's constructor, through its bases: a
    new keyword argument is a new valid key, with its type checked, and nothing else to edit."""
    from eossl.methods import _METHODS
    from eossl.methods.moco import MoCoV2

    class Probe(MoCoV2):
        def __init__(self, bands, stats, *, extra_knob: int = 3, **kwargs):
            super().__init__(bands, stats, **kwargs)

    _METHODS["probe-method-for-test"] = Probe
    try:
        fields = model_schema("probe-method-for-test").model_fields
        assert {"extra_knob", "queue_size", "lr", "backbone"} <= set(fields)
        assert not {"bands", "stats", "crop_size", "max_steps"} & set(fields)
        cfg = validate_config({"method": "probe-method-for-test",
                               "model": {"extra_knob": "5", "lr": "1e-3"}})
        assert cfg["model"] == {"extra_knob": 5, "lr": 0.001}  # checked and converted
        with pytest.raises(ConfigError, match="model.extra_knob='many'"):
            validate_config({"method": "probe-method-for-test", "model": {"extra_knob": "many"}})
    finally:
        del _METHODS["probe-method-for-test"]


def test_saved_config_is_what_ran_and_print_config_shows_it(capsys, tmp_path, sample_cache):
    args = ["--cache", sample_cache, "pretrain", "--max-steps", "1", "--batch-size", "4",
            "--crop-size", "16", "--set", "model.queue_size=64", "--bands", "B02,B03,B04,B08",
            "--set", "data.crops_per_epoch=16", "--no-progress", "--out", tmp_path / "run"]
    code, printed, err = cli(capsys, *args, "--print-config")
    assert code == 0, err
    code, _, err = cli(capsys, *args)
    assert code == 0, err
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved == yaml.safe_load(printed)
    assert saved["model"]["queue_size"] == 64 and saved["data"]["crop_size"] == 16
    import torch

    hp = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt",
                    weights_only=True)["hyper_parameters"]
    assert hp["queue_size"] == 64 and hp["bands"] == ["B02", "B03", "B04", "B08"]
