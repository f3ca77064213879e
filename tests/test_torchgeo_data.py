"""torchgeo's datasets on disk as eossl sources (data/torchgeo_data.py): tiny files the tests
write in each dataset's exact on-disk layout (as torchgeo's own tests do), read through
torchgeo's classes with download=False."""

import json

import numpy as np
import pytest

from eossl.data.chips import ChipSource
from eossl.data.resolve import DataRequest, open_data
from eossl.data.timeseries_source import MultiDateSource
from eossl.errors import ConfigError, DataError
from userdata import write_tif

EUROSAT_TIF = "ds/images/remote_sensing/otherDatasets/sentinel_2/tif"


def write_eurosat(root, classes=("AnnualCrop", "Forest", "River"), per_split=(2, 1, 1)):
    """ROOT/eurosat-{train,val,test}.txt (file names as .jpg, as the release lists them) and
    ROOT/ds/.../tif/<Class>/<Class>_<n>.tif, 13-band 64 px chips."""
    rng = np.random.default_rng(0)
    lists = {"train": [], "val": [], "test": []}
    for c in classes:
        n = 0
        for split, k in zip(lists, per_split):
            for _ in range(k):
                name = f"{c}_{n}"
                arr = rng.integers(1, 4000, (13, 64, 64)).astype("uint16")
                write_tif(root / EUROSAT_TIF / c / f"{name}.tif", arr)
                lists[split].append(f"{name}.jpg")
                n += 1
    for split, names in lists.items():
        (root / f"eurosat-{split}.txt").write_text("\n".join(names) + "\n")
    return root


def test_eurosat_13_bands_with_its_own_split(tmp_path):
    write_eurosat(tmp_path)
    src = open_data(DataRequest(data="torchgeo:EuroSAT", root=str(tmp_path)))
    assert isinstance(src, ChipSource) and src.classes == ["AnnualCrop", "Forest", "River"]
    assert len(src.bands) == 13 and src.bands[-1] == "B8A" and src.sensor == "sentinel2-l1c"
    fold = src.folds()[0]
    assert len(fold.train) == 9 and len(fold.test) == 3  # train + val train, test scores
    assert fold.test[0]["image"].shape == (13, 64, 64)
    assert "EuroSAT's own split" in src.split_note
    rgb = open_data(DataRequest(data="torchgeo:eurosat", root=str(tmp_path), bands="B04,B03"))
    assert rgb.bands == ["B04", "B03"] and rgb.folds()[0].train[0]["image"].shape[0] == 2
    assert sorted(src.pretraining_chips()) == list(range(9))  # the test split is left out


def test_not_on_disk_and_unknown_names(tmp_path):
    with pytest.raises(DataError) as e:
        open_data(DataRequest(data="torchgeo:EuroSAT", root=str(tmp_path)))
    msg = str(e.value)
    assert "not found under --root" in msg and "eurosat-{train,val,test}.txt" in msg
    assert "\n" not in msg
    with pytest.raises(ConfigError, match="torchgeo:EuroSATT: no such dataset.*EuroSAT, "):
        open_data(DataRequest(data="torchgeo:EuroSATT", root=str(tmp_path)))
    with pytest.raises(ConfigError, match="needs --root"):
        open_data(DataRequest(data="torchgeo:BigEarthNet"))


def write_bigearthnet_v1(root):
    """ROOT/bigearthnet-{train,val,test}.csv (S2 folder, S1 folder per line) and the patch
    folders with per-band files and *_labels_metadata.json (43-class names)."""
    rng = np.random.default_rng(1)
    s2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
    side = {"B01": 20, "B09": 20, "B05": 60, "B06": 60, "B07": 60, "B8A": 60, "B11": 60,
            "B12": 60}
    labels = [["Pastures", "Coniferous forest"], ["Non-irrigated arable land"],
              ["Sea and ocean", "Pastures"]]
    for split, k in zip(("train", "val", "test"), range(3)):
        s2name = f"S2A_MSIL2A_20170613T101031_{k}_45"
        s1name = f"S1A_IW_GRDH_1SDV_20170613T165043_33UUP_{k}_45"
        for b in s2:
            px = side.get(b, 120)
            write_tif(root / "BigEarthNet-v1.0" / s2name / f"{s2name}_{b}.tif",
                      rng.integers(1, 5000, (1, px, px)).astype("uint16"))
        for b in ("VV", "VH"):
            write_tif(root / "BigEarthNet-S1-v1.0" / s1name / f"{s1name}_{b}.tif",
                      rng.uniform(-25, 0, (1, 120, 120)).astype("float32"))
        for folder, name in (("BigEarthNet-v1.0", s2name), ("BigEarthNet-S1-v1.0", s1name)):
            (root / folder / name / f"{name}_labels_metadata.json").write_text(
                json.dumps({"labels": labels[k]}))
        (root / f"bigearthnet-{split}.csv").write_text(f"{s2name},{s1name}\n")
    return root


def test_bigearthnet_v1_folders_multilabel(tmp_path):
    write_bigearthnet_v1(tmp_path)
    src = open_data(DataRequest(data="torchgeo:BigEarthNet", root=str(tmp_path)))
    assert src.task == "multilabel" and len(src.classes) == 19 and len(src.bands) == 12
    fold = src.folds()[0]
    assert len(fold.train) == 2 and len(fold.test) == 1
    y = fold.test[0]["label"]  # Sea and ocean -> Marine waters, Pastures -> Pastures
    assert y.shape == (19,) and {src.classes[i] for i in np.flatnonzero(y.numpy())} == {
        "Marine waters", "Pastures"}
    assert fold.train[0]["image"].shape == (12, 120, 120)
    both = open_data(DataRequest(data="torchgeo:BigEarthNet", root=str(tmp_path),
                                 sensor="sentinel2-l2a,sentinel1"))
    assert both.bands[:2] == ["VV", "VH"] and len(both.bands) == 14


def test_bigearthnet_v1_lmdb_gets_a_pointer_to_the_folders(tmp_path, ben_dir):
    """A BigEarthNet v1 LMDB (values that are not safetensors dicts) is named as such."""
    import shutil

    import lmdb

    from eossl.data.bigearthnet import LMDB_DIR

    root = tmp_path / "ben"
    shutil.copytree(ben_dir, root)
    env = lmdb.open(str(root / LMDB_DIR), map_size=64 << 20)
    with env.begin(write=True) as t:
        for k, _ in list(t.cursor()):
            t.put(k, b"\x80\x04pickled-v1-entry")
    env.close()
    with pytest.raises(DataError, match="not a BigEarthNet v2 .*torchgeo:BigEarthNet"):
        src = open_data(DataRequest(data=str(root)))
        src.folds()[0].test[0]


def test_sen12ms_majority_igbp_chips(tmp_path):
    from test_pairs import write_sen12ms

    write_sen12ms(tmp_path)
    src = open_data(DataRequest(data="torchgeo:SEN12MS", root=str(tmp_path)))
    assert src.bands[:3] == ["VV", "VH", "B01"] and len(src.bands) == 15
    fold = src.folds()[0]
    assert len(fold.train) == 2 and len(fold.test) == 1
    from eossl.data.torchgeo_data import IGBP

    # the label of a patch is the IGBP class covering most of it (first lc band, 1-17)
    import rasterio
    from eossl.data.pairs import sen12ms_path

    with rasterio.open(sen12ms_path(tmp_path, "ROIs2017_winter_lc_3_p5.tif", "lc")) as f:
        lc = f.read(1).ravel()
    want = IGBP[int(np.bincount(lc - 1).argmax())]
    assert set(src.classes) <= set(IGBP) and src.classes[int(fold.test.labels[0])] == want


def test_oscd_as_a_two_date_series(tmp_path):
    from test_change import write_oscd

    write_oscd(tmp_path, {"abudhabi": "Train", "paris": "Test"})
    src = open_data(DataRequest(data="torchgeo:OSCD", root=str(tmp_path)))
    assert isinstance(src, MultiDateSource) and len(src.locations) == 2
    assert len(src.bands) == 13 and src.locations[0].images.shape[:2] == (2, 13)
    assert src.multi_date(2, 16, 1, seed=0)[0]["image"].shape == (2, 13, 16, 16)


def test_ssl4eo_six_digit_folders_are_not_taken_for_seco(tmp_path):
    from test_timeseries_source import _write

    base = tmp_path / "seasonal_contrast_100k"
    from torchgeo.datasets import SSL4EOS12

    for k, st in enumerate(("20210301T101021_20210301T101022_T32TQM",
                            "20200601T101021_20200601T101022_T32TQM")):
        for b, name in enumerate(SSL4EOS12.metadata["s2c"]["bands"]):
            _write(base / "000000" / st / f"{name}.tif", np.full((8, 8), b, np.uint16))
    with pytest.raises(DataError, match="B10.tif.*Level-1C.*torchgeo:SSL4EOS12"):
        open_data(DataRequest(data="torchgeo:SeasonalContrastS2", root=str(tmp_path)))
    (tmp_path / "s2c").mkdir()
    (base / "000000").rename(tmp_path / "s2c" / "000000")
    with pytest.raises(DataError, match="6-digit names.*SeasonalContrastS2"):
        open_data(DataRequest(data="torchgeo:SSL4EOS12", root=str(tmp_path)))
