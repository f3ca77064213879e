"""Labelled chips (data/chips.py): an EuroSAT-layout folder and CSV/Parquet tables
(classification, multi-label, regression), cut from the REAL sample scene."""

import numpy as np
import pandas as pd
import pytest

from eossl.cli import main
from eossl.data.chips import ChipSource
from eossl.data.resolve import DataRequest, open_data
from eossl.errors import ConfigError, DataError
from userdata import chip_folder, write_tif


@pytest.fixture(scope="module")
def chips(brandenburg, tmp_path_factory):
    return chip_folder(brandenburg, tmp_path_factory.mktemp("chips") / "eurosat")


def test_class_folders_are_classes(chips):
    src = open_data(DataRequest(data=str(chips)))
    assert isinstance(src, ChipSource) and src.task == "classification"
    assert src.classes == ["farm", "forest", "meadow"] and len(src.bands) == 13
    assert src.sensor == "sentinel2-l1c"
    folds = src.folds()
    assert len(folds) == 5
    tests = [set(f.test.index.tolist()) for f in folds]
    assert not set.intersection(*tests)  # a chip tests in at most one fold
    f = folds[0]
    assert not set(f.test.index) & set(f.train.index)
    x = f.train[0]
    assert x["image"].shape == (13, 16, 16) and x["label"] in (0, 1, 2)
    assert f.test.images().shape[1:] == (13, 16, 16)
    # the label comes from the folder the chip is in
    i = int(f.train.index[0])
    assert src.reader.paths[i].parent.name == src.classes[int(src.targets[i])]
    sub = open_data(DataRequest(data=str(chips), classes="meadow,farm", bands="B04,B08"))
    assert sub.classes == ["meadow", "farm"] and sub.bands == ["B04", "B08"]
    assert sub.folds()[0].train[0]["image"].shape == (2, 16, 16)
    # pretraining leaves the test chips out; crops come from the others
    keep = set(src.pretraining_chips().tolist())
    assert keep and not keep & set(src.split.evaluation_chips().tolist())
    assert src.crops(8, 4, seed=0)[0]["image"].shape == (13, 8, 8)


def test_chips_of_other_sizes_or_band_counts_are_refused(chips, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(chips, bad)
    write_tif(bad / "farm" / "odd.tif", np.ones((13, 20, 20), "uint16"), names=None)
    with pytest.raises(DataError, match=r"odd\.tif: 13 bands of 20 x 20 px, but .* 16 x 16"):
        open_data(DataRequest(data=str(bad)))
    (bad / "farm" / "odd.tif").unlink()
    write_tif(bad / "farm" / "few.tif", np.ones((4, 16, 16), "uint16"))
    with pytest.raises(DataError, match=r"few\.tif: 4 bands"):
        open_data(DataRequest(data=str(bad)))


def test_a_class_with_one_chip_is_refused(chips, tmp_path):
    import shutil

    one = tmp_path / "one"
    shutil.copytree(chips, one)
    for f in sorted((one / "forest").iterdir())[1:]:
        f.unlink()
    with pytest.raises(DataError, match=r"forest \(1\) have fewer than 2 chips"):
        open_data(DataRequest(data=str(one)))


def test_tables_classification_multilabel_regression(chips, tmp_path):
    files = sorted(chips.rglob("*.tif"))
    rel = [str(f.relative_to(chips)) for f in files]
    cls = [f.parent.name for f in files]
    pd.DataFrame({"path": rel, "crop": cls, "split": ["test" if i % 3 == 0 else "train"
                                                      for i in range(len(rel))]}
                 ).to_csv(chips / "table.csv", index=False)
    src = open_data(DataRequest(data=str(chips / "table.csv"), label_column="crop"))
    assert src.task == "classification" and src.classes == ["farm", "forest", "meadow"]
    assert src.split.kind == "column" and len(src.folds()) == 1
    assert len(src.folds()[0].test) == len(rel[::3])
    # several 0/1 columns: multi-label
    ml = pd.DataFrame({"file": rel, "green": [int(c != "farm") for c in cls],
                       "trees": [int(c == "forest") for c in cls]})
    ml.to_parquet(chips / "ml.parquet")
    m = open_data(DataRequest(data=str(chips / "ml.parquet"), label_column="green,trees"))
    assert m.task == "multilabel" and m.classes == ["green", "trees"]
    y = m.folds()[0].train[0]["label"]
    assert y.shape == (2,) and set(y.tolist()) <= {0, 1}
    # numeric targets: regression (the chip's mean B08, which the pixels determine)
    b08 = [float(np.mean(open_data(DataRequest(data=str(f))).scenes[0].read(bands=["B08"])))
           for f in files]
    pd.DataFrame({"path": rel, "nir": b08}).to_csv(chips / "reg.csv", index=False)
    r = open_data(DataRequest(data=str(chips / "reg.csv"), label_column="nir"))
    assert r.task == "regression" and r.classes == ["nir"]
    fold = r.folds()[0]
    k = int(fold.test.index[0])
    assert fold.test[0]["label"].tolist() == [pytest.approx(b08[k], rel=1e-5)]
    with pytest.raises(ConfigError, match="--label-column"):
        open_data(DataRequest(data=str(chips / "ml.parquet")))


def test_pretrain_then_probe_on_a_chip_folder(chips, tmp_path, capfd):
    run = tmp_path / "run"
    assert main(["--cache", str(tmp_path / "c"), "pretrain", "--data", str(chips),
                 "--max-steps", "2", "--batch-size", "4", "--crop-size", "16", "--out", str(run),
                 "--no-progress"]) == 0
    code = main(["probe", "--checkpoint", f"tiny={run / 'checkpoints' / 'last.ckpt'}", "--data",
                 str(chips), "--fractions", "1", "--seeds", "0"])
    out = capfd.readouterr().out
    assert code == 0 and "| tiny |" in out and "random 5-fold of chips" in out
    assert "tiny: pretraining excluded these test chips" in out
    # the same chips as a table of numeric targets (regression) and of 0/1 columns (multi-label)
    files = sorted(chips.rglob("*.tif"))
    rel = [str(f.relative_to(chips)) for f in files]
    nir = [float(np.mean(open_data(DataRequest(data=str(f))).scenes[0].read(bands=["B08"])))
           for f in files]
    pd.DataFrame({"path": rel, "nir": nir}).to_csv(chips / "reg.csv", index=False)
    ckpt = f"tiny={run / 'checkpoints' / 'last.ckpt'}"
    assert main(["evaluate", "regress", "--checkpoint", ckpt, "--data", str(chips / "reg.csv"),
                 "--label-column", "nir", "--no-finetune", "--seeds", "0"]) == 0
    out = capfd.readouterr().out
    assert "chip targets nir" in out and "spectral baseline" in out
    green = [int(f.parent.name != "farm") for f in files]
    pd.DataFrame({"path": rel, "green": green, "farm": [1 - g for g in green]}).to_csv(
        chips / "ml.csv", index=False)
    assert main(["evaluate", "multilabel", "--checkpoint", ckpt, "--data", str(chips / "ml.csv"),
                 "--label-column", "green,farm", "--no-finetune", "--seeds", "0"]) == 0
    assert "micro" in capfd.readouterr().out.lower()
