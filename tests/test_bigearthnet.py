"""BigEarthNetV2 on the real reBEN LMDB sample shipped with configilm (24 S2/S1 pairs)."""

from __future__ import annotations

import ast
import importlib.util
import shutil
from pathlib import Path

import lmdb
import pandas as pd
import pytest
import torch
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from eossl.data.bigearthnet import CLASSES_19, LMDB_DIR, METADATA, METADATA_SNOW_CLOUD, BigEarthNetV2
from eossl.errors import BandError, ConfigError, DataError

# Facts of the real sample: metadata.parquet lists 18 patches (6 per split), the snow / cloud /
# shadow table 6 more (2 per split); the LMDB holds all 24 S2 patches and their 24 S1 partners.
PER_SPLIT, PER_SPLIT_CLEAN = 8, 6
PATCH = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57"          # test split
PATCH_LABELS = {"Arable land", "Broad-leaved forest", "Mixed forest", "Pastures"}
CLOUDY = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_38_58"         # test, cloud/shadow
CLOUDY_LABELS = {"Arable land", "Coniferous forest"}


@pytest.fixture(scope="module")
def raw_env(ben_dir, tmp_path_factory):
    """The sample LMDB opened directly, from a copy: py-lmdb refuses to open files that a
    dataset in this process already holds open."""
    copy = tmp_path_factory.mktemp("ben-raw") / LMDB_DIR
    shutil.copytree(ben_dir / LMDB_DIR, copy)
    env = lmdb.open(str(copy), readonly=True, lock=False)
    yield env
    env.close()


@pytest.fixture(scope="module")
def raw_entry(raw_env):
    def read(key):
        with raw_env.begin() as txn:
            return st_load(txn.get(key.encode()))

    return read


def test_classes_match_torchgeo():
    # Read torchgeo's list from its source rather than importing torchgeo (seconds).
    origin = Path(importlib.util.find_spec("torchgeo").origin).parent / "datasets/bigearthnet.py"
    tree = ast.parse(origin.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "class_sets":
            sets = ast.literal_eval(node.value)
            break
    else:
        pytest.fail("class_sets not found in torchgeo's bigearthnet.py")
    assert list(CLASSES_19) == sets[19]
    assert BigEarthNetV2.num_classes == 19


def test_counts_per_split(ben_dir):
    assert len(pd.read_parquet(ben_dir / METADATA)) == 18
    assert len(pd.read_parquet(ben_dir / METADATA_SNOW_CLOUD)) == 6
    for split in ("train", "validation", "test"):
        assert len(BigEarthNetV2(ben_dir, split=split)) == PER_SPLIT
        assert len(BigEarthNetV2(ben_dir, split=split, exclude_snow_cloud=True)) == PER_SPLIT_CLEAN
    everything = BigEarthNetV2(ben_dir, split=None)
    assert len(everything) == 24 and len(set(everything.patch_ids)) == 24
    assert CLOUDY in everything.patch_ids
    assert CLOUDY not in BigEarthNetV2(ben_dir, split=None, exclude_snow_cloud=True).patch_ids
    with pytest.raises(ConfigError, match="split"):
        BigEarthNetV2(ben_dir, split="training")


def test_known_labels(ben_dir):
    ds = BigEarthNetV2(ben_dir, split="test")
    for pid, names in ((PATCH, PATCH_LABELS), (CLOUDY, CLOUDY_LABELS)):
        item = ds[ds.patch_ids.index(pid)]
        assert item["patch_id"] == pid
        assert item["label"].dtype == torch.float32 and item["label"].shape == (19,)
        expected = torch.tensor([float(c in names) for c in CLASSES_19])
        assert torch.equal(item["label"], expected)


def test_shapes_s2_and_sar(ben_dir, raw_entry):
    ds = BigEarthNetV2(ben_dir, split="validation")
    x = ds[0]["image"]
    assert x.shape == (12, 120, 120) and x.dtype == torch.float32
    assert ds.band_names == ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A",
                             "B09", "B11", "B12"]
    assert x.min() >= 0 and x.max() < 20000  # S2 L2A digital numbers
    sar = BigEarthNetV2(ben_dir, split="validation", sar=True)
    y = sar[0]["image"]
    assert y.shape == (14, 120, 120) and sar.band_names[-2:] == ["VV", "VH"]
    assert torch.equal(y[:12], x)
    assert y[12:].max() < 30 and y[12:].min() > -60  # backscatter in dB
    raw = raw_entry(sar.metadata.loc[0, "s1_name"])
    assert torch.equal(y[12], torch.from_numpy(raw["VV"]))


def test_band_selection_by_name(ben_dir, raw_entry):
    raw = raw_entry(PATCH)
    full = BigEarthNetV2(ben_dir, split="test")
    sub = BigEarthNetV2(ben_dir, split="test", bands=["b4", "B02", "B8A"])
    i = sub.patch_ids.index(PATCH)
    x = sub[i]["image"]
    assert sub.band_names == ["B04", "B02", "B8A"] and x.shape == (3, 120, 120)
    b04 = torch.from_numpy(raw["B04"].astype("float32"))
    assert torch.equal(x[0], b04) and torch.equal(full[i]["image"][3], b04)
    assert torch.equal(x[1], full[i]["image"][1])
    # a 20 m band comes back on the 10 m grid, its mean preserved by bilinear upsampling
    assert raw["B8A"].shape == (60, 60)
    assert x[2].mean().item() == pytest.approx(float(raw["B8A"].mean()), rel=0.02)


def test_native_size(ben_dir, raw_entry):
    ds = BigEarthNetV2(ben_dir, split="test", bands=["B05", "B11"], size=None)
    raw = raw_entry(ds.patch_ids[0])
    x = ds[0]["image"]
    assert x.shape == (2, 60, 60) and torch.equal(x[1], torch.from_numpy(raw["B11"].astype("float32")))
    with pytest.raises(ConfigError, match="size=120"):
        BigEarthNetV2(ben_dir, split="test", size=None)


def test_unknown_band(ben_dir):
    with pytest.raises(BandError, match="B10"):  # L2A has no cirrus band
        BigEarthNetV2(ben_dir, bands=["B04", "B10"])
    with pytest.raises(BandError, match="B13"):
        BigEarthNetV2(ben_dir, bands=["B13"])


def test_dataloader_fork_workers(ben_dir):
    ds = BigEarthNetV2(ben_dir, split="train", sar=True)
    ds[0]  # the parent holds an open environment before the workers fork
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2,
                                         multiprocessing_context="fork")
    batches = list(loader)
    assert sum(len(b["patch_id"]) for b in batches) == PER_SPLIT
    assert batches[0]["image"].shape == (4, 14, 120, 120)
    assert torch.equal(batches[0]["image"][0], ds[0]["image"])


# --- broken copies written to tmp_path in the exact reBEN layout -------------------------------

def _copy(ben_dir, raw_env, dest, edit):
    """Copy the sample to ``dest`` with ``edit(key, value) -> value | None`` applied (None drops)."""
    for name in (METADATA, METADATA_SNOW_CLOUD):
        shutil.copy(ben_dir / name, dest / name)
    dst = lmdb.open(str(dest / LMDB_DIR), map_size=64 << 20)
    try:
        with raw_env.begin() as rt, dst.begin(write=True) as wt:
            for k, v in rt.cursor():
                v = edit(k.decode(), bytes(v))
                if v is not None:
                    wt.put(k, v)
    finally:
        dst.close()
    return dest


def test_missing_paths(ben_dir, tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / LMDB_DIR)):
        BigEarthNetV2(tmp_path)
    (tmp_path / LMDB_DIR).mkdir()
    with pytest.raises(DataError, match=str(tmp_path / METADATA)):
        BigEarthNetV2(tmp_path)


def test_patch_missing_from_lmdb(ben_dir, raw_env, tmp_path):
    root = _copy(ben_dir, raw_env, tmp_path, lambda k, v: None if k == PATCH else v)
    with pytest.raises(DataError, match=PATCH):
        BigEarthNetV2(root, split="test")
    assert len(BigEarthNetV2(root, split="train")) == PER_SPLIT


def test_corrupt_entry_names_key(ben_dir, raw_env, tmp_path):
    root = _copy(ben_dir, raw_env, tmp_path, lambda k, v: b"\x00garbage" * 20 if k == PATCH else v)
    ds = BigEarthNetV2(root, split="test")
    ds[(ds.patch_ids.index(PATCH) + 1) % len(ds)]  # other entries still read
    with pytest.raises(DataError, match=f"corrupt.*{PATCH}"):
        ds[ds.patch_ids.index(PATCH)]


def test_band_missing_from_entry(ben_dir, raw_env, tmp_path):
    def drop_b04(k, v):
        if k != PATCH:
            return v
        arrays = st_load(v)
        del arrays["B04"]
        return st_save(arrays)

    root = _copy(ben_dir, raw_env, tmp_path, drop_b04)
    ds = BigEarthNetV2(root, split="test")
    with pytest.raises(BandError, match=r"'B04'.*available bands: .*B03"):
        ds[ds.patch_ids.index(PATCH)]
