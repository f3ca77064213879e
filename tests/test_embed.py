"""eossl embed: patch embeddings to GeoParquet and dense embeddings to GeoTIFF, georeferenced
like the source, streamed in windows, resumable, refusing to overwrite."""

import math
import os

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine
from rasterio.windows import Window

import eossl.embed as embed_mod
from eossl.cli import main
from eossl.embed import embed_scene
from eossl.errors import ConfigError, OutputExistsError

BANDS4 = ("B02", "B03", "B04", "B08")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, brandenburg):
    from eossl.methods import get_method

    d = tmp_path_factory.mktemp("embed")
    torch.manual_seed(0)
    m = get_method("moco")(bands=list(BANDS4), stats=brandenburg.stats().subset(BANDS4).to_dict(),
                           crop_size=16)
    ckpt = d / "last.ckpt"
    torch.save({"state_dict": m.state_dict(), "eossl": m.eossl_metadata()}, ckpt)
    # a real 13-band crop of the scene as a float GeoTIFF stack, with hostile corners:
    # an all-nodata block and NaN pixels
    scene = brandenburg.scenes[0]
    r0, c0, h, w = 200, 300, 150, 200
    arr = scene.read((r0, c0, h, w)).copy()
    arr[:, :40, :40] = 0            # nodata
    arr[:, 100:103, 150:153] = np.nan
    src_tr = scene.transform @ Affine.translation(c0, r0)
    tif = d / "crop.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=w, height=h, count=13, dtype="float32",
                       crs=scene.crs, transform=src_tr, nodata=0) as dst:
        dst.write(arr)
        dst.descriptions = tuple(brandenburg.bands)
    return ckpt, tif, m.encoder().eval(), arr


def test_patches_and_dense_are_georeferenced_like_the_source(setup, tmp_path):
    import geopandas as gpd

    ckpt, tif, encoder, arr = setup
    res = embed_scene(ckpt, tif, tmp_path / "e", window=64, progress=False)
    with rasterio.open(tif) as src:
        crs, tr, H, W = src.crs, src.transform, src.height, src.width
    gdf = gpd.read_parquet(res.patches)
    assert gdf.crs == crs
    grid = (H // 16) * (W // 16)
    # the 40x40 nodata corner empties patches (0..1, 0..1); (0, 2) and (2, 0) are half valid
    assert len(gdf) == grid - 4 and res.n_patches == len(gdf)
    row = gdf[(gdf["row"] == 5) & (gdf["col"] == 7)].iloc[0]
    x0, y0 = tr @ (7 * 16, 5 * 16)
    x1, y1 = tr @ (8 * 16, 6 * 16)
    assert row.geometry.bounds == pytest.approx((min(x0, x1), min(y0, y1), max(x0, x1),
                                                 max(y0, y1)))
    want = encoder(torch.from_numpy(arr[[1, 2, 3, 7], 80:96, 112:128][None].copy()))[0]
    np.testing.assert_allclose(np.asarray(row["embedding"]), want.detach().numpy(), atol=1e-4)
    assert np.isfinite(np.stack(gdf["embedding"].to_numpy())).all()  # NaN pixels handled
    nan_patch = gdf[(gdf["row"] == 6) & (gdf["col"] == 9)].iloc[0]
    assert nan_patch["valid_fraction"] < 1.0
    with rasterio.open(res.dense) as d:
        stride = 16  # resnet18 with eossl's stride-2 stem: 32 / 2
        assert d.crs == crs and d.count == encoder.out_dim
        assert d.transform == tr @ Affine.scale(stride)
        assert (d.height, d.width) == (math.ceil(H / stride), math.ceil(W / stride))
        assert d.bounds.left == pytest.approx(tr.c) and d.bounds.top == pytest.approx(tr.f)
        feat = d.read(window=Window(0, 0, 4, 4))  # the cells of the first 64 px window
        assert np.isfinite(feat).all()
        with torch.no_grad():
            x = torch.from_numpy(np.where(np.isfinite(arr[[1, 2, 3, 7], :64, :64]),
                                          arr[[1, 2, 3, 7], :64, :64], 0)[None].copy())
            ref = encoder.forward_features(x)[0].numpy()
        np.testing.assert_allclose(feat, ref, atol=1e-4)


def test_window_size_does_not_change_patch_embeddings(setup, tmp_path):
    import geopandas as gpd

    ckpt, tif, _, _ = setup
    a = gpd.read_parquet(embed_scene(ckpt, tif, tmp_path / "a", window=32, dense=False,
                                     progress=False).patches)
    b = gpd.read_parquet(embed_scene(ckpt, tif, tmp_path / "b", window=1024, dense=False,
                                     progress=False).patches)
    a, b = (x.sort_values(["row", "col"]).reset_index(drop=True) for x in (a, b))
    assert (a["row"] == b["row"]).all() and (a["col"] == b["col"]).all()
    np.testing.assert_allclose(np.stack(a["embedding"]), np.stack(b["embedding"]), atol=1e-5)
    assert not (tmp_path / "b" / "dense.tif").exists()


def test_interrupted_run_resumes_and_matches(setup, tmp_path, monkeypatch):
    import geopandas as gpd

    ckpt, tif, _, _ = setup
    full = gpd.read_parquet(embed_scene(ckpt, tif, tmp_path / "full", window=64,
                                        progress=False).patches)
    real = embed_mod._embed_patches
    calls = {"n": 0}

    def dies_on_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(embed_mod, "_embed_patches", dies_on_third)
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        embed_scene(ckpt, tif, out, window=64, progress=False)
    assert not (out / "patches.parquet").exists()  # nothing half-written to trust
    with pytest.raises(OutputExistsError, match="--resume"):
        embed_scene(ckpt, tif, out, window=64, progress=False)
    monkeypatch.setattr(embed_mod, "_embed_patches", real)
    res = embed_scene(ckpt, tif, out, window=64, resume=True, progress=False)
    assert res.resumed_windows == 2
    got = gpd.read_parquet(res.patches)
    assert len(got) == len(full)
    np.testing.assert_allclose(np.stack(got["embedding"]), np.stack(full["embedding"]),
                               atol=1e-6)
    with rasterio.open(tmp_path / "full" / "dense.tif") as a, rasterio.open(res.dense) as b:
        np.testing.assert_allclose(a.read(), b.read(), atol=1e-6)


def test_cli_embed_and_its_errors(setup, tmp_path, capsys):
    ckpt, tif, _, _ = setup
    out = tmp_path / "cli"
    assert main(["embed", "--checkpoint", str(ckpt), "--data", str(tif), "--out", str(out),
                 "--no-dense",
                 "--no-progress", "--patch-size", "32"]) == 0
    assert "patch embeddings" in capsys.readouterr().out
    assert main(["embed", "--checkpoint", str(ckpt), "--data", str(tif), "--out", str(out),
                 "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    # a stack without the encoder's bands
    with rasterio.open(tif) as src:
        prof, data = src.profile, src.read([1, 2])
    two = tmp_path / "two.tif"
    prof.update(count=2)
    with rasterio.open(two, "w", **prof) as dst:
        dst.write(data)
        dst.descriptions = ("B01", "B02")
    assert main(["embed", "--checkpoint", str(ckpt), "--data", str(two), "--out",
                 str(tmp_path / "x"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "lack B03, B04, B08" in err and err.count("\n") == 1


def test_streams_in_windows_with_a_progress_bar(setup, tmp_path, monkeypatch, capsys):
    """Bounded memory: the scene is only ever read window by window (never loaded whole), and
    the progress bar counts windows."""
    from eossl.data.readers import SceneStack

    ckpt, tif, _, _ = setup
    reads = []
    real_read = SceneStack.read

    def spy(self, window=None, bands=None):
        reads.append(window)
        return real_read(self, window, bands)

    def no_load(self):
        raise AssertionError("embed loaded the whole scene into memory")

    monkeypatch.setattr(SceneStack, "read", spy)
    monkeypatch.setattr(SceneStack, "load", no_load)
    res = embed_scene(ckpt, tif, tmp_path / "s", window=48, progress=True)
    err = capsys.readouterr().err
    assert all(w is not None and w[2] <= 48 and w[3] <= 48 for w in reads), reads
    assert len(reads) == res.n_windows == math.ceil(150 / 48) * math.ceil(200 / 48)
    assert "embed windows" in err and f"{res.n_windows}/{res.n_windows}" in err


def test_folder_of_band_files_with_only_the_encoders_bands(setup, tmp_path, brandenburg):
    """A folder that holds just the encoder's bands (not the sensor's 13) is stacked with
    those and embedded; the result equals embedding the same pixels from a GeoTIFF stack."""
    import geopandas as gpd

    ckpt, tif, _, _ = setup
    scene = brandenburg.scenes[0]
    r0, c0, h, w = 400, 600, 64, 96
    tr = scene.transform @ Affine.translation(c0, r0)
    folder = tmp_path / "bands"
    folder.mkdir()
    arr = scene.read((r0, c0, h, w), bands=list(BANDS4)).astype("uint16")
    for i, b in enumerate(BANDS4):
        with rasterio.open(folder / f"T33UUU_20170216T102101_{b}.tif", "w", driver="GTiff",
                           width=w, height=h, count=1, dtype="uint16", crs=scene.crs,
                           transform=tr) as dst:
            dst.write(arr[i:i + 1])
    stack = tmp_path / "stack.tif"
    with rasterio.open(stack, "w", driver="GTiff", width=w, height=h, count=4, dtype="uint16",
                       crs=scene.crs, transform=tr, nodata=0) as dst:
        dst.write(arr)
    code = main(["--cache", str(tmp_path / "cache"), "embed", "--checkpoint", str(ckpt), "--data",
                 str(folder), "--out",
                 str(tmp_path / "f"), "--no-dense", "--no-progress"])
    assert code == 0
    a = gpd.read_parquet(tmp_path / "f" / "patches.parquet")
    b = gpd.read_parquet(embed_scene(ckpt, stack, tmp_path / "g", dense=False, progress=False,
                                     bands=list(BANDS4)).patches)
    assert len(a) == len(b) == (h // 16) * (w // 16)
    assert a.crs == scene.crs
    np.testing.assert_allclose(np.stack(a["embedding"]), np.stack(b["embedding"]), atol=1e-5)


def test_resume_refuses_another_job_and_a_finished_run(setup, tmp_path, monkeypatch):
    ckpt, tif, _, _ = setup
    real = embed_mod._embed_patches
    calls = {"n": 0}

    def dies_on_second(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(embed_mod, "_embed_patches", dies_on_second)
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        embed_scene(ckpt, tif, out, window=64, dense=False, progress=False)
    monkeypatch.setattr(embed_mod, "_embed_patches", real)
    # other options than the interrupted run: refused, naming what differs
    with pytest.raises(ConfigError, match="another --window;"):
        embed_scene(ckpt, tif, out, window=32, dense=False, resume=True, progress=False)
    # the checkpoint file was rewritten since (e.g. pretraining went on): refused too
    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        with pytest.raises(ConfigError, match=r"another checkpoint \(file changed since\);"):
            embed_scene(ckpt, tif, out, window=64, dense=False, resume=True, progress=False)
    finally:
        os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))
    res = embed_scene(ckpt, tif, out, window=64, dense=False, resume=True, progress=False)
    assert res.resumed_windows == 1 and not (out / ".embed-parts").exists()
    with pytest.raises(OutputExistsError, match="finished embedding run"):
        embed_scene(ckpt, tif, out, window=64, dense=False, resume=True, progress=False)
    with pytest.raises(ConfigError, match="--min-valid 1.5"):
        embed_scene(ckpt, tif, tmp_path / "m", min_valid=1.5, progress=False)


def test_stacking_a_band_folder_holds_one_block_not_the_scene(tmp_path):
    """A folder of band files is stacked block by block: peak memory is a block of rows, not
    the scene (the old whole-scene read needed every band at once)."""
    import tracemalloc

    from rasterio.transform import from_origin

    from eossl.data.readers import stacked_scene

    H = W = 1024
    rng = np.random.default_rng(0)
    for b, res in (("B02", 10), ("B03", 10), ("B04", 10), ("B05", 20)):
        n = H * 10 // res
        with rasterio.open(tmp_path / f"T33UUU_20170216T102101_{b}.tif", "w", driver="GTiff",
                           width=n, height=n, count=1, dtype="uint16", crs="EPSG:32633",
                           transform=from_origin(300000, 5800000, res, res), tiled=True,
                           blockxsize=256, blockysize=256) as dst:
            dst.write(rng.integers(1, 5000, (1, n, n)).astype("uint16"))
    scene_bytes = 4 * H * W * 2
    tracemalloc.start()
    try:
        s = stacked_scene(tmp_path, tmp_path / "cache", ["B02", "B03", "B04", "B05"],
                          block_bytes=scene_bytes // 8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert s.shape == (4, H, W)
    assert peak < scene_bytes / 2, f"peak {peak / 2**20:.1f} MiB, scene {scene_bytes / 2**20} MiB"
    with rasterio.open(tmp_path / "T33UUU_20170216T102101_B03.tif") as src:
        np.testing.assert_array_equal(s.read((700, 0, 300, W), bands=["B03"])[0],
                                      src.read(1, window=Window(0, 700, W, 300)))
