"""Change detection: OSCD files written in torchgeo's exact on-disk layout, a generic raster
pair, the frozen Siamese U-Net, and the label-free Landsat picture on the real time series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from affine import Affine

from eossl.errors import DataError
from eossl.evaluate import change as ch

IMAGES = "Onera Satellite Change Detection dataset - Images"


def _tif(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = arr if arr.ndim == 3 else arr[None]
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1],
                       count=arr.shape[0], dtype=arr.dtype.name, crs="EPSG:32633",
                       transform=Affine(10, 0, 0, 0, -10, 0)) as dst:
        dst.write(arr)


def _scene(rng, h, w):
    """13 smooth bands x 2 dates with a bright square that appears on date 2."""
    base = rng.uniform(800, 1500, (13, 1, 1)) + rng.normal(0, 40, (13, h, w))
    after = base.copy()
    r, c = rng.integers(4, h - 16), rng.integers(4, w - 16)
    after[:, r:r + 12, c:c + 12] += 2500
    mask = np.zeros((h, w), np.uint8)
    mask[r:r + 12, c:c + 12] = 255
    return base.astype(np.uint16), after.astype(np.uint16), mask


def write_oscd(root: Path, regions: dict[str, str], size=(48, 40), seed=0) -> Path:
    """The OSCD layout torchgeo reads: Images/REGION/imgs_{1,2}_rect/B??.tif + dates.txt,
    {Train,Test} Labels/REGION/cm/cm.png (0 no change, 255 change)."""
    rng = np.random.default_rng(seed)
    for region, split in regions.items():
        before, after, mask = _scene(rng, *size)
        for k, arr in ((1, before), (2, after)):
            for i, b in enumerate(ch.OSCD_BANDS):
                _tif(root / IMAGES / region / f"imgs_{k}_rect" / f"{b}.tif", arr[i])
        (root / IMAGES / region / "dates.txt").write_text("date_1: 20151201\ndate_2: 20170320\n")
        cm = root / f"Onera Satellite Change Detection dataset - {split} Labels" / region / "cm"
        cm.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(cm / "cm.png")
    return root


def _encoder(bands=ch.OSCD_BANDS):
    from eossl.models.encoder import Encoder
    from eossl.normalization import BandStats

    n = len(bands)
    stats = BandStats(list(bands), [7.0] * n, [0.5] * n, [500.0] * n, [3000.0] * n)
    return Encoder.random(stats).eval()


def test_oscd_layout_trains_and_scores(tmp_path):
    root = write_oscd(tmp_path / "oscd", {"abudhabi": "Train", "beirut": "Train",
                                          "paris": "Test"})
    train, test = ch.load_oscd(root, "train"), ch.load_oscd(root, "test")
    assert sorted(p.name for p in train) == ["abudhabi", "beirut"] and test[0].name == "paris"
    assert train[0].before.shape == (13, 48, 40) and set(train[0].mask.unique().tolist()) == {0, 1}
    # the appeared square is where the mask says
    p = test[0]
    assert (p.after - p.before)[:, p.mask.bool()].mean() > 2000
    from eossl.evaluate.base import Context

    ev = ch.ChangeDetection(steps=25, patch_size=32, batch_size=4, lr=3e-3)
    ctx = Context(options={"oscd": str(root)})
    assert ev.available(ctx) is None and ev.available(Context()) is not None
    recs = {r["metric"]: r for r in ev.run(ctx, {"random": _encoder()}, seed=0)}
    assert set(recs) == {"precision", "recall", "f1"} and 0 <= recs["f1"]["value"] <= 1
    assert recs["f1"]["change_share"] == pytest.approx(144 / (48 * 40))
    assert recs["recall"]["value"] > 0  # an obvious change square is found at least partly
    prob = ch.predict_change(ch.ChangeNet(_encoder()), p)
    assert prob.shape == (48, 40)


def test_frozen_encoder_is_not_trained():
    enc = _encoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    rng = np.random.default_rng(1)
    b, a, m = _scene(rng, 32, 32)
    pair = ch.ChangePair("x", torch.from_numpy(b.astype(np.float32)),
                         torch.from_numpy(a.astype(np.float32)), torch.from_numpy(m > 0).long())
    from eossl.evaluate.finetune import fit

    model = fit(ch.ChangeNet(enc), ch.ChangeCrops([pair], 32, 6), "change_bce", steps=3,
                batch_size=2)
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights AND BatchNorm running stats
    # crops stack both dates on the channel axis, the mask beside them
    item = ch.ChangeCrops([pair], 32, 6)[0]
    assert item["image"].shape == (2 * b.shape[0], 32, 32) and item["mask"].shape == (32, 32)


def test_pair_of_different_sizes_is_refused(tmp_path):
    _tif(tmp_path / "a.tif", np.ones((3, 40, 40), np.uint16))
    _tif(tmp_path / "b.tif", np.ones((3, 40, 36), np.uint16))
    _tif(tmp_path / "m.tif", np.zeros((40, 40), np.uint8))
    with pytest.raises(DataError, match="must share bands and grid"):
        ch.load_pair(tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "m.tif")
    _tif(tmp_path / "b2.tif", np.ones((3, 40, 40), np.uint16))
    _tif(tmp_path / "m2.tif", np.zeros((40, 30), np.uint8))
    with pytest.raises(DataError, match="mask"):
        ch.load_pair(tmp_path / "a.tif", tmp_path / "b2.tif", tmp_path / "m2.tif")
    with pytest.raises(DataError, match="no OSCD data set"):
        ch.load_oscd(tmp_path, "train")


def test_cli_pair_runs_end_to_end(tmp_path):
    """`eossl evaluate change --pair` on a checkpoint file, writing results."""
    from eossl.cli import main

    rng = np.random.default_rng(2)
    b, a, m = _scene(rng, 40, 96)
    _tif(tmp_path / "before.tif", b[:3])
    _tif(tmp_path / "after.tif", a[:3])
    _tif(tmp_path / "mask.tif", m)
    enc = _encoder(("B04", "B03", "B02"))
    state = {**{"backbone." + k: v for k, v in enc.backbone.state_dict().items()},
             **{"normalizer." + k: v for k, v in enc.normalizer.state_dict().items()}}
    meta = {"method": "test", "bands": ["B04", "B03", "B02"], "stats":
            enc.normalizer.stats.to_dict(), "backbone": "resnet18", "stem_stride": 2,
            "backbone_kwargs": {}}
    torch.save({"state_dict": state, "eossl": meta}, tmp_path / "enc.ckpt")
    rc = main(["evaluate", "change", "--checkpoint", f"enc={tmp_path / 'enc.ckpt'}",
               "--no-random-init", "--pair", str(tmp_path / "before.tif"),
               str(tmp_path / "after.tif"), str(tmp_path / "mask.tif"), "--steps", "2",
               "--band-names", "B04,B03,B02",
               "--patch-size", "32", "--batch-size", "2", "--out", str(tmp_path / "res")])
    assert rc == 0 and (tmp_path / "res" / "results.json").exists()
    assert main(["evaluate", "change", "--checkpoint", str(tmp_path / "enc.ckpt"), "--pair",
                 str(tmp_path / "before.tif"), str(tmp_path / "after.tif"),
                 str(tmp_path / "mask.tif"), "--out", str(tmp_path / "res")]) == 2


def test_landsat_change_picture_on_the_real_series(landsat_dir, tmp_path):
    from eossl.data.timeseries import LandsatTimeSeries

    ts = LandsatTimeSeries(landsat_dir)
    i, j = ch.pick_dates_a_year_apart(ts)
    assert 320 <= (ts.dates[j] - ts.dates[i]).days <= 410
    enc = _encoder(("B04", "B08", "B11")).for_bands(ts.band_names)
    info = ch.write_landsat_change_map(enc, ts, tmp_path / "change.png", pair=(i, j))
    assert (tmp_path / "change.png").stat().st_size > 5000
    assert 0 <= info["mean_change"] <= 2
    # the same date against itself shows no change
    same = ch.feature_change(enc, ts[i]["image"], ts[i]["image"])
    assert same.shape == (61, 61) and float(same.abs().max()) < 1e-4
