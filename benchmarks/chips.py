"""Chip reading rate: 13-band 64 px chips at random positions of the real Sentinel-2 sample.

Readers, each timed over the same number of chips (torchgeo over fewer if asked, rates are
per second):

  (a) eossl SceneStack.read(window) on the stacked GeoTIFF, not loaded (opens it per read)
  (b) eossl RandomCropDataset[i] (in-memory stack; nodata check and per-index RNG included)
  (c) plain rasterio: one open handle on the stacked GeoTIFF, src.read(window=...)
  (d) torchgeo Sentinel2 RasterDataset on the 13 JPEG 2000 files (res=10) + RandomGeoSampler
  (e) a user's COG through eossl's data path: the scene written as a 6-band "Landsat 8" COG
      (DEFLATE, 512 px tiles, overviews, USGS band names), opened by the resolver with
      --sensor landsat8 (--data COG), read by window, not loaded; (e2) the same through
      RandomCropDataset kept on disk (invalid-pixel check and fill included)
  (f) plain rasterio windowed reads of that same COG, one handle, same positions as (e)

One-off costs are reported apart: building the stack from JPEG 2000 (into a fresh temporary
cache), loading it into memory, torchgeo's file index, and torchgeo's first chip.

    python benchmarks/chips.py                        # 2000 chips, torchgeo 200
    python benchmarks/chips.py --chips 50 --torchgeo-chips 5 --no-build   # smoke test

Target for (e): within 2x of (f), the bare rasterio read of the same file.

Writes benchmarks/results/chips.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import machine_info, peak_rss_mb  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "chips.json"


def positions(n: int, height: int, width: int, size: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    return [(int(r), int(c)) for r, c in zip(rng.integers(0, height - size + 1, n),
                                             rng.integers(0, width - size + 1, n))]


def timed(fn, items) -> dict:
    t = time.perf_counter()
    shape = None
    for it in items:
        out = fn(it)
        shape = tuple(out.shape)
    dt = time.perf_counter() - t
    return {"chips": len(items), "seconds": dt, "chips_per_s": len(items) / dt,
            "ms_per_chip": 1000 * dt / len(items), "chip_shape": shape,
            "dtype": str(out.dtype)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chips", type=int, default=2000, help="chips per eossl/rasterio reader")
    p.add_argument("--torchgeo-chips", type=int, default=200,
                   help="chips for torchgeo (JPEG 2000 decoding per chip is slow)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--no-build", action="store_true",
                   help="skip timing the one-off stack build from JPEG 2000")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    warnings.filterwarnings("ignore")

    import rasterio
    from rasterio.windows import Window

    from eossl.data import samples, sources
    from eossl.data.readers import SceneStack, stacked_scene

    cache = samples.cache_dir()
    folder = samples.brandenburg_dir(cache)
    img_dir = folder / "IMG_DATA"
    one_off: dict[str, float] = {}

    if not args.no_build:
        tmp = Path(tempfile.mkdtemp(prefix="eossl-stackbuild-"))
        try:
            t = time.perf_counter()
            stacked_scene(folder, tmp)
            one_off["stack build from JPEG 2000 (13 bands -> 10 m GeoTIFF), s"] = \
                time.perf_counter() - t
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    src = sources.brandenburg(cache)  # the cached stack (built once, reused)
    scene = src.scenes[0]
    n, size = args.chips, args.size
    pos = positions(n, scene.height, scene.width, size)
    results: dict[str, dict] = {}

    # (a) windowed reads on the GeoTIFF, stack not in memory
    disk = SceneStack(scene.path, list(scene.bands), sensor=scene.sensor)
    results["a_eossl_scenestack_window"] = timed(
        lambda rc: disk.read((rc[0], rc[1], size, size)), pos)

    # (b) RandomCropDataset over the in-memory stack; the load is a one-off
    t = time.perf_counter()
    mem = SceneStack(scene.path, list(scene.bands), sensor=scene.sensor)
    mem.load()
    one_off["stack load into memory (float32), s"] = time.perf_counter() - t
    from eossl.data.datasets import RandomCropDataset

    ds = RandomCropDataset([mem], size=size, length=n, seed=0)
    results["b_eossl_randomcropdataset_memory"] = timed(lambda i: ds[i]["image"], list(range(n)))
    results["b2_eossl_scenestack_read_memory"] = timed(
        lambda rc: mem.read((rc[0], rc[1], size, size)), pos)

    # (c) plain rasterio, one handle
    with rasterio.open(scene.path) as f:
        results["c_rasterio_window_open_once"] = timed(
            lambda rc: f.read(window=Window(rc[1], rc[0], size, size)), pos)

    # (d) torchgeo Sentinel2 on the JPEG 2000 files
    from torchgeo.datasets import Sentinel2
    from torchgeo.samplers import RandomGeoSampler

    t = time.perf_counter()
    tg = Sentinel2(paths=img_dir, res=10, bands=list(Sentinel2.all_bands))
    one_off["torchgeo Sentinel2 index (13 files), s"] = time.perf_counter() - t
    import torch

    sampler = RandomGeoSampler(tg, size=size, length=args.torchgeo_chips + 1,
                               generator=torch.Generator().manual_seed(0))
    queries = list(sampler)
    t = time.perf_counter()
    first = tg[queries[0]]["image"]
    one_off["torchgeo first chip (opens 13 JPEG 2000 files), s"] = time.perf_counter() - t
    assert first.shape[0] == 13, first.shape
    results["d_torchgeo_sentinel2_jp2"] = timed(lambda q: tg[q]["image"], queries[1:])

    # (e) a user's COG through the resolver, (f) bare rasterio on the same file
    cog_dir = Path(tempfile.mkdtemp(prefix="eossl-cog-"))
    try:
        cog = cog_dir / "landsat8-like.tif"
        usgs = {"SR_B2": "B02", "SR_B3": "B03", "SR_B4": "B04", "SR_B5": "B8A", "SR_B6": "B11",
                "SR_B7": "B12"}
        arr = scene.read(bands=list(usgs.values())).astype("uint16")
        t = time.perf_counter()
        with rasterio.open(cog, "w", driver="COG", width=scene.width, height=scene.height,
                           count=len(usgs), dtype="uint16", crs=scene.crs,
                           transform=scene.transform, nodata=0, compress="DEFLATE",
                           blocksize=512) as dst:
            dst.write(arr)
            dst.descriptions = tuple(usgs)
        one_off["write the user's COG (6 bands, DEFLATE), s"] = time.perf_counter() - t
        from eossl.data.resolve import DataRequest, open_data

        user = open_data(DataRequest(data=str(cog), sensor="landsat8")).scenes[0]
        assert user.bands[2] == "OLI_B4" and user._array is None
        results["e_eossl_user_cog_window"] = timed(
            lambda rc: user.read((rc[0], rc[1], size, size)), pos)
        crops = RandomCropDataset([user], size=size, length=n, seed=0, memory_limit=0)
        assert user._array is None  # kept on disk: every crop is a windowed read
        results["e2_eossl_user_cog_crops"] = timed(lambda i: crops[i]["image"], list(range(n)))
        with rasterio.open(cog) as f:
            results["f_rasterio_user_cog_window"] = timed(
                lambda rc: f.read(window=Window(rc[1], rc[0], size, size)), pos)
        ratio = (results["e_eossl_user_cog_window"]["ms_per_chip"]
                 / results["f_rasterio_user_cog_window"]["ms_per_chip"])
        one_off["(e) / (f) time per chip (target <= 2)"] = ratio
    finally:
        shutil.rmtree(cog_dir, ignore_errors=True)

    labels = {
        "a_eossl_scenestack_window": "(a) eossl SceneStack.read(window), GeoTIFF stack on disk",
        "b_eossl_randomcropdataset_memory": "(b) eossl RandomCropDataset[i], in-memory stack",
        "b2_eossl_scenestack_read_memory": "(b2) eossl SceneStack.read(window), loaded stack",
        "c_rasterio_window_open_once": "(c) rasterio src.read(window), GeoTIFF stack, one handle",
        "d_torchgeo_sentinel2_jp2": "(d) torchgeo Sentinel2 + RandomGeoSampler, 13 JPEG 2000",
        "e_eossl_user_cog_window": "(e) eossl --data COG --sensor landsat8, read(window)",
        "e2_eossl_user_cog_crops": "(e2) eossl RandomCropDataset[i] on that COG, on disk",
        "f_rasterio_user_cog_window": "(f) rasterio src.read(window), the same COG, one handle",
    }
    rows = ["| reader | chips | chips/s | ms/chip | output |", "|---|---:|---:|---:|---|"]
    for k, r in results.items():
        rows.append(f"| {labels[k]} | {r['chips']} | {r['chips_per_s']:.0f} | "
                    f"{r['ms_per_chip']:.2f} | {r['dtype']} {r['chip_shape']} |")
    rows += ["", "| one-off cost (s), and the (e)/(f) ratio | |", "|---|---:|"]
    rows += [f"| {k.rsplit(', s', 1)[0]} | {v:.2f} |" for k, v in one_off.items()]
    md = "\n".join(rows)
    info = machine_info()
    print(f"Machine: {info['cpu_model']}, {info['cpu_cores']} cores; scene "
          f"{scene.height}x{scene.width} px, {len(scene.bands)} bands, {size} px chips\n")
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "chips", "machine": info,
        "settings": {"chips": n, "torchgeo_chips": args.torchgeo_chips, "size": size,
                     "scene": str(scene.path), "scene_shape": list(scene.shape),
                     "jp2_folder": str(img_dir)},
        "results": results, "one_off_s": one_off, "peak_rss_mb": peak_rss_mb(),
        "markdown": md}, indent=2))
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
