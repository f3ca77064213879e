"""The recipes' stem is ONE setting (methods.base.DEFAULT_STEM_STRIDE): no small-patch recipe
sets its own, so switching the default switches them all; a run trained under the old default
is not resumed with the new one."""

import inspect
from pathlib import Path

import pytest
import yaml

from eossl.config import RECIPES_DIR, load_config
from eossl.errors import ConfigError
from eossl.methods.base import DEFAULT_STEM_STRIDE, PretextMethod
from eossl.train import _check_same_stem


def test_small_patch_recipes_follow_the_one_default():
    assert inspect.signature(PretextMethod.__init__).parameters["stem_stride"].default \
        == DEFAULT_STEM_STRIDE
    own = {}
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        model = yaml.safe_load(path.read_text()).get("model") or {}
        if "stem_stride" in model:
            own[path.name] = model["stem_stride"]
    # a recipe either leaves the stem to the default or keeps timm's own (120-224 px inputs)
    assert set(own.values()) == {4}
    assert "moco-cpu.yaml" not in own and own["moco.yaml"] == 4
    assert "stem_stride" not in load_config("moco-cpu")["model"]


def test_resume_refuses_a_stem_the_default_changed():
    cfg = load_config("moco-cpu")
    other = 4 if DEFAULT_STEM_STRIDE != 4 else 2
    with pytest.raises(ConfigError, match=f"trained with stem stride {other}.*'stem_stride: "
                                          f"{other}' under model:"):
        _check_same_stem(Path("run/checkpoints/last.ckpt"), {"stem_stride": other}, cfg)
    _check_same_stem(Path("x"), {"stem_stride": DEFAULT_STEM_STRIDE}, cfg)
    cfg["model"]["stem_stride"] = other
    _check_same_stem(Path("x"), {"stem_stride": other}, cfg)
