"""Every registered evaluation takes every registered method's encoder (band-wise and
multi-sensor ones included) on the real sample data, at the cheapest settings that still run
it end to end; each record is finite and in range, twins differ from encoders in weights only,
and an evaluation that cannot take an encoder says why."""

import math

import numpy as np
import pytest
from conftest import shrink_evaluation_data

from eossl.checkpoint import load_encoder
from eossl.evaluate.base import Context, compare, get_evaluation
from eossl.methods import available_methods

UNIT_RANGE = {"accuracy", "balanced_accuracy", "macro_f1", "miou", "pixel_accuracy",
              "micro_map", "macro_map", "micro_f1", "f1", "precision", "recall"}

# The cheapest settings that still run each evaluation end to end (the real data, few steps).
TINY = {
    "probe": {"fractions": (0.5,), "C": 1.0},
    "finetune": {"epochs": 1, "batch_size": 16},
    "pixel-probe": {"per_class": 8, "test_per_class": 8, "patch_size": 32},
    "segment": {"fractions": (0.1,), "steps": 1, "batch_size": 2, "probe_steps": 1},
    "regress": {"epochs": 1, "min_labelled": 0.5, "batch_size": 16},
    "multilabel": {"epochs": 1, "batch_size": 8},
    "ensemble": {"epochs": 1, "saliency_patches": 0},
    "per-band": {"probe_bands": ("B04", "B11")},
    "pictures": {"patches": 2, "map_side": 64},
    "change": {"steps": 1, "patch_size": 32, "batch_size": 2},
}


@pytest.fixture(scope="module")
def small_ctx(sample_cache, tmp_path_factory, pair_files):
    """The real data, less of it (conftest.shrink_evaluation_data), so nine encoders x ten
    evaluations run in a test's time."""
    before, after, mask, bands = pair_files
    with pytest.MonkeyPatch.context() as mp:
        shrink_evaluation_data(mp)
        yield Context("brandenburg", cache=sample_cache, root=tmp_path_factory.mktemp("eval-out"),
                      options={"first_seed": 0, "pair": (before, after, mask), "bands": bands})


@pytest.fixture(scope="module")
def pair_files(brandenburg, tmp_path_factory):
    """Two dates of a change pair cut from the real scene (the second with a bright square
    painted in) and its change mask, as GeoTIFFs on the scene's grid (its top-left corner)."""
    import rasterio

    root = tmp_path_factory.mktemp("pair")
    scene = brandenburg.scenes[0]
    a = scene.read((0, 0, 96, 160)).astype(np.float32)
    b = a.copy()
    b[:, 30:60, 40:70] *= 1.8
    b[:, 50:80, 120:150] *= 1.8
    m = np.zeros((1, 96, 160), np.uint8)
    m[0, 30:60, 40:70] = 1
    m[0, 50:80, 120:150] = 1
    paths = []
    for name, arr in (("before", a), ("after", b), ("mask", m)):
        p = root / f"{name}.tif"
        with rasterio.open(p, "w", driver="GTiff", width=160, height=96, count=arr.shape[0],
                           dtype=arr.dtype, crs=scene.crs, transform=scene.transform) as dst:
            dst.write(arr)
        paths.append(str(p))
    return (*paths, list(scene.bands))


def _check(records):
    assert records
    for r in records:
        if r["table"].startswith("_") or r["value"] is None:
            continue
        assert math.isfinite(r["value"]), r
        if r["metric"] in UNIT_RANGE:
            assert 0.0 <= r["value"] <= 1.0, r
        if r["metric"] == "mean_r2":  # (its [-1, 1] bound on whole folds: test_regress.py)
            assert r["value"] <= 1.0, r


@pytest.mark.parametrize("name", [n for n in TINY])
def test_every_evaluation_takes_every_method(name, tiny_checkpoints, small_ctx):
    ev = get_evaluation(name)(**TINY[name])
    encoders = {m: load_encoder(tiny_checkpoints[m]) for m in available_methods()}
    ok = {m: e for m, e in encoders.items() if ev.applies(e) is None}
    skipped = {m: ev.applies(e) for m, e in encoders.items() if m not in ok}
    for m, why in skipped.items():
        assert isinstance(why, str) and len(why) > 20, (m, why)
    expected_skips = {"ensemble": {m for m in encoders if m != "colorization"},
                      "per-band": {m for m in encoders if m != "rsbyol"},
                      "pictures": {m for m in encoders if m not in ("colorization", "dense")}}
    assert set(skipped) == expected_skips.get(name, set()), skipped
    # every method's encoder, then one random twin (the twins' architecture is checked for
    # every method in test_encoder.py; here: that the evaluation runs it as a row)
    ctx = small_ctx
    if ev.default_data != "brandenburg":  # multi-label: the BigEarthNet sample
        ctx = Context(ev.default_data, cache=small_ctx.cache, root=small_ctx.root,
                      options={"first_seed": 0})
    records = compare(ev, ctx, ok, seeds=[0], twins=False)
    first = next(iter(ok))
    twin = {"random init": ok[first].random_twin(0)} if ev.twins else {}
    records += ev.run(ctx, twin, seed=0)
    _check(records)
    if ev.tables:
        rows = {r["model"] for r in records if not r["table"].startswith("_")}
        assert set(ok) | set(twin) <= rows, (set(ok) | set(twin)) - rows
    else:  # pictures: one per method that draws
        pics = [r for r in records if r["table"] == "_figure"]
        assert {r["model"] for r in pics} == set(ok)
        assert all((small_ctx.root / r["path"]).stat().st_size > 5000 for r in pics)
    models = {r["model"]: r for r in records if r["table"] == "_model"}
    assert {m for m, r in models.items() if r["role"] == "encoder"} == set(ok)
