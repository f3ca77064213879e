"""The evaluate tasks and ``eossl data pack`` end to end through the CLI on the real samples,
with small settings: each writes results that hold what its report claims."""

import json

import numpy as np
import pytest
import rasterio
import torch

from eossl.cli import main

BANDS = ["B02", "B03", "B04", "B08"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, brandenburg):
    from eossl.methods import get_method

    torch.manual_seed(0)
    m = get_method("moco")(bands=BANDS, stats=brandenburg.stats().subset(BANDS).to_dict(),
                           crop_size=32)
    path = tmp_path_factory.mktemp("covcmd") / "moco.ckpt"
    torch.save({"state_dict": m.state_dict(), "eossl": m.eossl_metadata()}, path)
    return path


def _run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _results(folder):
    res = json.loads((folder / "results.json").read_text())
    assert (folder / "report.md").read_text().startswith("# eossl evaluate")
    assert (folder / "report.html").read_text().startswith("<!doctype html>")
    return res


def _values(records, metric):
    return {(r["model"], r["column"]): r for r in records if r.get("metric") == metric}


def test_evaluate_multilabel_on_real_bigearthnet(capsys, ckpt, tmp_path, ben_dir):
    out = _run(capsys, "evaluate", "multilabel", "--checkpoint", f"moco={ckpt}", "--root",
               ben_dir, "--no-finetune", "--seeds", "0", "--out", tmp_path / "ml")
    assert "train + validation train" in out  # the data set's own split, said in the report
    res = _results(tmp_path / "ml")
    rows = {r["model"]: r for r in res["records"] if r["table"] == "_model"}
    assert "filled" not in rows["moco"]["inputs"]  # B02, B03, B04, B08 are all in L2A
    cells = _values(res["records"], "micro_map")
    assert {m for m, _ in cells} == {"spectral baseline", "random init", "moco"}
    for r in cells.values():
        assert r["n_train"] == 16 and r["n_test"] == 8 and 0.0 < r["value"] <= 1.0, r
    # a second run into the same folder is refused, the first results are kept
    assert main(["evaluate", "multilabel", "--checkpoint", str(ckpt), "--root", str(ben_dir),
                 "--no-finetune", "--seeds", "0", "--out", str(tmp_path / "ml")]) == 2
    assert "already holds results.json" in capsys.readouterr().err


def test_evaluate_regress_on_a_table_of_real_targets(capsys, ckpt, tmp_path, brandenburg):
    """A user's table: the target is each patch's mean log B08 reflectance, which the spectral
    baseline's features (per-band mean of log reflectance) determine, so its R^2 is near 1."""
    import pandas as pd

    scene = brandenburg.scenes[0]
    rows = []
    for r in range(0, 768 - 16, 48):
        for c in range(0, 1536 - 16, 48):
            px = scene.read((r, c, 16, 16), bands=["B08"])
            rows.append({"row": r, "col": c, "nir": float(np.log1p(px).mean())})
    table = tmp_path / "targets.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    _run(capsys, "evaluate", "regress", "--checkpoint", f"moco={ckpt}", "--table", table,
         "--no-finetune", "--seeds", "0", "--out", tmp_path / "rg")
    res = _results(tmp_path / "rg")
    assert f"Targets from the table {table}" in res["protocol"]
    cells = _values(res["records"], "mean_r2")
    assert {m for m, _ in cells} == {"spectral baseline", "random init", "moco"}
    assert cells[("spectral baseline", "ridge, last stage")]["r2"]["nir"] > 0.9
    assert all(-1.0 <= r["value"] <= 1.0 for r in cells.values())
    assert all(r["n_train"] + r["n_test"] <= len(rows) for r in cells.values())


def test_evaluate_pixel_probe_and_segment(capsys, ckpt, tmp_path, small_evaluations):
    _run(capsys, "evaluate", "pixel-probe", "--checkpoint", f"moco={ckpt}", "--per-class", "20",
         "--test-per-class", "40", "--seeds", "0", "--split", "west-east", "--out",
         tmp_path / "pp")  # one fold (west/east): a test's time
    cells = _values(_results(tmp_path / "pp")["records"], "accuracy")
    assert {m for m, _ in cells} == {"spectral baseline", "moco", "random init"}
    assert all(0.0 <= r["value"] <= 1.0 for r in cells.values())
    out = _run(capsys, "evaluate", "segment", "--checkpoint", f"moco={ckpt}", "--steps", "1",
               "--probe-steps", "3", "--fractions", "1", "--seeds", "0", "--split", "west-east",
               "--out",
               tmp_path / "sg")
    assert "Segmentation: frozen encoder, linear probe" in out
    cells = _values(_results(tmp_path / "sg")["records"], "miou")
    assert {c for _, c in cells} == {"100% labels"} and len(cells) == 2
    assert all(0.0 <= r["value"] <= 1.0 for r in cells.values())


def test_evaluate_change_on_a_pair_with_a_planted_change(capsys, ckpt, tmp_path, brandenburg):
    """Two dates of real pixels where one block was replaced by another place: a known change."""
    scene = brandenburg.scenes[0]
    before = scene.read((100, 100, 64, 160), bands=BANDS)
    after = before.copy()
    after[:, 16:48, 20:52] = scene.read((600, 1200, 32, 32), bands=BANDS)
    after[:, 16:48, 110:142] = scene.read((650, 1300, 32, 32), bands=BANDS)
    mask = np.zeros((1, 64, 160), "uint8")
    mask[0, 16:48, 20:52] = mask[0, 16:48, 110:142] = 1
    paths = []
    for name, arr in (("before", before), ("after", after), ("mask", mask)):
        p = tmp_path / f"{name}.tif"
        with rasterio.open(p, "w", driver="GTiff", width=160, height=64, count=arr.shape[0],
                           dtype=arr.dtype, crs=scene.crs, transform=scene.transform) as dst:
            dst.write(arr)
        paths.append(p)
    out = _run(capsys, "evaluate", "change", "--checkpoint", f"moco={ckpt}", "--pair", *paths,
               "--band-names", ",".join(BANDS),
               "--steps", "2", "--patch-size", "32", "--batch-size", "2", "--seeds", "0", "--out",
               tmp_path / "ch")
    assert "f1" in out
    cells = _values(_results(tmp_path / "ch")["records"], "f1")
    assert {m for m, _ in cells} == {"moco", "random init"}
    assert all(0.0 <= r["value"] <= 1.0 for r in cells.values())


def test_data_pack_a_folder_of_geotiffs(capsys, tmp_path, brandenburg):
    scene = brandenburg.scenes[0]
    folder = tmp_path / "tifs"
    folder.mkdir()
    for i, (r, c) in enumerate(((0, 0), (300, 700))):
        arr = scene.read((r, c, 64, 64), bands=BANDS).astype("uint16")
        with rasterio.open(folder / f"crop{i}.tif", "w", driver="GTiff", width=64, height=64,
                           count=4, dtype="uint16", crs=scene.crs,
                           transform=scene.transform) as dst:
            dst.write(arr)
    out = _run(capsys, "data", "pack", "--data", folder, "--out", tmp_path / "corpus",
               "--patch-size", "32", "--band-names", ",".join(BANDS))
    assert out.startswith("packed 8 chips")  # 2 files x (64 / 32)^2
    meta = json.loads((tmp_path / "corpus" / "eossl.json").read_text())
    assert meta["count"] == 8 and meta["bands"] == BANDS
    with pytest.raises(SystemExit) as e:  # argparse's check, on one line
        main(["data", "pack", "--data", str(folder), "--out", str(tmp_path / "x"),
              "--patch-size", "4"])
    assert e.value.code == 2
    assert "--patch-size: expected a size in px of at least 8, got 4" in capsys.readouterr().err


def test_data_pack_landsat_series(capsys, tmp_path, sample_cache):
    """The real Landsat series (dates stored as int16 and as uint16) packs into one corpus."""
    out = _run(capsys, "--cache", sample_cache, "data", "pack", "--data", "landsat", "--out",
               tmp_path / "corpus", "--patch-size", "32")
    n = int(out.split("packed ")[1].split()[0])
    meta = json.loads((tmp_path / "corpus" / "eossl.json").read_text())
    assert n > 0 and meta["count"] == n and meta["sensor"] == "landsat5-tm,landsat7-etm"
