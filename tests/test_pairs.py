"""Optical/radar pair sources: the real BigEarthNet v2 sample as S2 + S1 stacks, and SEN12MS in
torchgeo's exact on-disk layout (small files written here)."""

from __future__ import annotations

import shutil

import lmdb
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from eossl.data.bigearthnet import LMDB_DIR, METADATA, METADATA_SNOW_CLOUD, BigEarthNetV2
from eossl.data.pairs import (
    PairSource,
    SEN12MSPairs,
    bigearthnet_pairs,
    sen12ms_pairs,
    sen12ms_path,
)
from eossl.data.sources import available_sources, open_source
from eossl.errors import BandError, ConfigError, DataError

S2_L2A = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
PATCH = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57"


@pytest.fixture(scope="module")
def pairs(sample_cache):
    return open_source("bigearthnet-pairs", sample_cache)


def test_registered_and_stacked(pairs, ben_dir):
    assert {"bigearthnet-pairs", "sen12ms-pairs"} <= set(available_sources())
    assert isinstance(pairs, PairSource) and pairs.polygons is None
    assert pairs.bands == S2_L2A + ["VV", "VH"]
    assert len(pairs) == 24 and pairs.patch_shape == (120, 120)
    # The stack is the S2 patch (20/60 m bands resampled to 10 m) + its S1 partner, unchanged.
    ref = BigEarthNetV2(ben_dir, split=None, sar=True)
    i = ref.patch_ids.index(PATCH)
    assert torch.equal(pairs.image(i), ref[i]["image"])
    vv = pairs.image(i)[pairs.bands.index("VV")]
    assert vv.mean() < 0 < pairs.image(i)[pairs.bands.index("B04")].mean()  # dB vs reflectance


def test_stats_log_for_optical_linear_for_sar(pairs):
    st = pairs.stats()
    assert st.bands == pairs.bands
    assert st.log == [True] * 12 + [False, False]
    vv = st.mean[st.bands.index("VV")]
    assert -25 < vv < 0  # mean backscatter in dB, not log of a negative number


def test_crops_are_windows_of_the_pairs(pairs):
    ds = pairs.crops(32, 10, seed=3)
    a, b = ds[4]["image"], ds[4]["image"]
    assert a.shape == (14, 32, 32) and torch.equal(a, b)  # seeded per index
    # The crop is a window of one of the 24 stacks, all 14 bands from one place: find it from
    # its first row of VV values (unique in real data), then compare the whole window.
    vv = pairs.bands.index("VV")
    found = []
    for i in range(len(pairs)):
        img = pairs.image(i)
        rows = img[vv].unfold(1, 32, 1)  # (120, 89, 32): every 32-px run of every row
        hit = (rows == a[vv, 0]).all(dim=-1).nonzero()
        found += [(i, int(r), int(c)) for r, c in hit
                  if torch.equal(img[:, r:r + 32, c:c + 32], a)]
    assert len(found) == 1
    with pytest.raises(ConfigError, match="larger than"):
        pairs.crops(128, 10)


def test_band_subset_and_order(ben_dir):
    src = bigearthnet_pairs(ben_dir, "VH,B04", split="test")
    assert src.bands == ["VH", "B04"] and len(src) == 8
    ref = BigEarthNetV2(ben_dir, split="test", bands=["B04"], sar=True)
    assert torch.equal(src.image(0)[0], ref[0]["image"][ref.band_names.index("VH")])
    assert torch.equal(src.image(0)[1], ref[0]["image"][0])
    with pytest.raises(BandError, match="B10"):
        bigearthnet_pairs(ben_dir, ["B10"])


def test_mismatched_bigearthnet_pair_names_patch(ben_dir, tmp_path):
    """An S1 partner on another grid than its S2 patch is an error naming the patch, never a
    silent resample."""
    src_env = tmp_path / "src"
    shutil.copytree(ben_dir / LMDB_DIR, src_env)
    for name in (METADATA, METADATA_SNOW_CLOUD):
        shutil.copy(ben_dir / name, tmp_path / name)
    meta = BigEarthNetV2(ben_dir, split=None, sar=True).metadata
    s1_name = meta.loc[meta.patch_id == PATCH, "s1_name"].item()
    rd = lmdb.open(str(src_env), readonly=True, lock=False)
    wr = lmdb.open(str(tmp_path / LMDB_DIR), map_size=64 << 20)
    with rd.begin() as rt, wr.begin(write=True) as wt:
        for k, v in rt.cursor():
            if k.decode() == s1_name:
                arrays = st_load(bytes(v))
                v = st_save({b: np.ascontiguousarray(a[:100, :100]) for b, a in arrays.items()})
            wt.put(k, bytes(v))
    rd.close()
    wr.close()
    with pytest.raises(DataError, match=f"{PATCH}.*VV 100x100.*120x120"):
        bigearthnet_pairs(tmp_path)
    ok = BigEarthNetV2(tmp_path, split="train", sar=True)  # other patches still read
    assert ok[0]["image"].shape == (14, 120, 120)


# --- SEN12MS in torchgeo's layout ---------------------------------------------------------------

SEASONS = ("ROIs1158_spring", "ROIs1868_summer", "ROIs1970_fall", "ROIs2017_winter")


def _tif(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1],
                       count=arr.shape[0], dtype=arr.dtype, crs="EPSG:32633",
                       transform=Affine(10, 0, 500000, 0, -10, 5800000)) as f:
        f.write(arr)


def write_sen12ms(root, side=24, s1_side=None, seed=0):
    """Two train patches and one test patch in the SEN12MS release layout, as torchgeo reads it:
    ROOT/ROIs1158_spring/s2_1/ROIs1158_spring_s2_1_p30.tif (13 bands uint16), .../s1_1/...
    (VV, VH float32 dB), .../lc_1/... (4 bands), and the split lists naming the lc files."""
    rng = np.random.default_rng(seed)
    for s in SEASONS:
        (root / s).mkdir(parents=True, exist_ok=True)
    names = {"train": ["ROIs1158_spring_lc_1_p30.tif", "ROIs1868_summer_lc_7_p101.tif"],
             "test": ["ROIs2017_winter_lc_3_p5.tif"]}
    arrays = {}
    for split, lst in names.items():
        (root / f"{split}_list.txt").write_text("\n".join(lst) + "\n")
        for n in lst:
            s2 = rng.integers(1, 10000, (13, side, side)).astype(np.uint16)
            s1 = rng.uniform(-30, 0, (2, s1_side or side, s1_side or side)).astype(np.float32)
            lc = rng.integers(1, 17, (4, side, side)).astype(np.uint16)
            for sensor, arr in (("s2", s2), ("s1", s1), ("lc", lc)):
                _tif(sen12ms_path(root, n, sensor), arr)
            arrays[n] = (s2, s1)
    return names, arrays


def test_sen12ms_layout_matches_torchgeo(tmp_path):
    from torchgeo.datasets import SEN12MS

    names, arrays = write_sen12ms(tmp_path)
    assert (tmp_path / "ROIs1158_spring" / "s1_1" / "ROIs1158_spring_s1_1_p30.tif").is_file()
    src = sen12ms_pairs(tmp_path)  # default: the RS-BYOL pool, S2 then S1
    pool = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12", "VV", "VH"]
    assert src.bands == pool and len(src) == 2 and src.polygons is None
    tg = SEN12MS(str(tmp_path), split="train", bands=pool)  # torchgeo reads the same files
    for i, n in enumerate(names["train"]):
        ours, theirs = src.image(i), tg[i]["image"].float()
        assert torch.equal(ours, theirs)
        s2, s1 = arrays[n]
        assert torch.equal(ours[pool.index("B8A")], torch.from_numpy(s2[8].astype(np.float32)))
        assert torch.equal(ours[pool.index("VH")], torch.from_numpy(s1[1]))
    assert len(SEN12MSPairs(tmp_path, split=None)) == 3
    assert src.crops(16, 4, seed=0)[0]["image"].shape == (12, 16, 16)


def test_sen12ms_pairs_source_takes_root(tmp_path):
    write_sen12ms(tmp_path)
    with pytest.raises(ConfigError, match="--data sen12ms-pairs needs --root"):
        open_source("sen12ms-pairs")
    assert open_source("sen12ms-pairs", bands="B04,VV", root=str(tmp_path)).bands == ["B04",
                                                                                     "VV"]


def test_sen12ms_mismatched_pair_names_patch(tmp_path):
    write_sen12ms(tmp_path, side=24, s1_side=20)
    with pytest.raises(DataError, match=r"ROIs1158_spring_lc_1_p30\.tif.*s1 is 20x20.*24x24"):
        sen12ms_pairs(tmp_path)


def test_sen12ms_missing_files(tmp_path):
    with pytest.raises(DataError, match="train_list.txt"):
        SEN12MSPairs(tmp_path)
    write_sen12ms(tmp_path)
    sen12ms_path(tmp_path, "ROIs1868_summer_lc_7_p101.tif", "s2").unlink()
    with pytest.raises(DataError, match="ROIs1868_summer_lc_7_p101.tif"):
        sen12ms_pairs(tmp_path)
