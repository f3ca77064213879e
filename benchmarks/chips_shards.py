"""Chip reading rate from eossl's LitData shards next to the anchors of benchmarks/chips.py.

13-band 64 px chips of the real Sentinel-2 sample, in one run on one machine:

  (s1) shards: eossl ShardDataset (LitData StreamingDataset, shuffled, -> float32 tensors)
  (s2) shards: LitData StreamingDataset alone (raw uint16 arrays), shuffled
  (s4) shards: what ``eossl pretrain --data CORPUS`` reads: map-style random crops
       (ShardSource.crops -> ShardCrops, random access by index) in a DataLoader with a
       shuffling sampler (per rank under DDP), batch 64, no workers (the pretrain default)
  (c)  plain rasterio: one open handle on the stacked GeoTIFF, src.read(window=...)
  (d)  torchgeo Sentinel2 RasterDataset on the 13 JPEG 2000 files (res=10) + RandomGeoSampler

The corpus is packed once (timed apart as a one-off) with stride 16, so it holds many distinct
64 px chips (overlapping tiles of the one scene), and read for whole epochs.

    python benchmarks/chips_shards.py                      # ~1 min on 2 cores
    python benchmarks/chips_shards.py --torchgeo-chips 20 --epochs 1   # quicker

Writes benchmarks/results/chips_shards.json and prints a Markdown table.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chips import positions, timed  # noqa: E402
from throughput import machine_info, peak_rss_mb  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "chips_shards.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stride", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--chips", type=int, default=2000, help="chips for the rasterio anchor")
    p.add_argument("--torchgeo-chips", type=int, default=100)
    p.add_argument("--train-chips", type=int, default=4096,
                   help="chips for (s4), the training path's random-access crops")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    warnings.filterwarnings("ignore")

    import rasterio
    import torch
    from rasterio.windows import Window

    from eossl.data import samples, shards, sources

    cache = samples.cache_dir()
    src = sources.brandenburg(cache)
    scene = src.scenes[0]
    size = args.size
    one_off: dict[str, float] = {}
    results: dict[str, dict] = {}
    tmp = Path(tempfile.mkdtemp(prefix="eossl-chipshards-"))
    try:
        t = time.perf_counter()
        meta = shards.pack(shards.scene_chips(src, size, stride=args.stride), tmp / "c",
                           src.bands, nodata=0.0, chunk_bytes="64MB")
        one_off["pack into shards (stride %d, %d chips), s" % (args.stride, meta["count"])] = \
            time.perf_counter() - t
        corpus = shards.ShardCorpus(tmp / "c")

        def epochs(make):
            n, t0 = 0, time.perf_counter()
            shape = dtype = None
            for e in range(args.epochs):
                for s in make():
                    x = s["image"]
                    n += 1
            shape, dtype = tuple(x.shape), str(x.dtype)
            dt = time.perf_counter() - t0
            return {"chips": n, "seconds": dt, "chips_per_s": n / dt, "ms_per_chip": 1000 * dt / n,
                    "chip_shape": shape, "dtype": dtype}

        ds = corpus.dataset(shuffle=True, seed=0)
        results["s1_eossl_shard_dataset"] = epochs(lambda: ds)
        raw = corpus.streaming(shuffle=True, seed=0)
        results["s2_litdata_streaming_raw"] = epochs(lambda: raw)
        dl = torch.utils.data.DataLoader(corpus.dataset(shuffle=True, seed=0), batch_size=64,
                                         num_workers=2, persistent_workers=True)
        t0 = time.perf_counter()
        n = sum(b["image"].shape[0] for e in range(args.epochs) for b in dl)
        dt = time.perf_counter() - t0
        results["s3_eossl_shards_dataloader_2workers_batch64"] = {
            "chips": n, "seconds": dt, "chips_per_s": n / dt, "ms_per_chip": 1000 * dt / n,
            "chip_shape": [13, size, size], "dtype": "torch.float32",
            "note": "includes worker start-up"}
        # (s4) the training path: eossl.train builds DataLoader(source.crops(...)) and Lightning
        # (or eossl's resumable sampler) picks indices; random indices read chunks out of order
        crops = shards.ShardSource(tmp / "c").crops(size)
        order = torch.randperm(len(crops), generator=torch.Generator().manual_seed(0))
        order = order.repeat(max(1, -(-args.train_chips // len(crops))))[:args.train_chips]
        tdl = torch.utils.data.DataLoader(crops, batch_size=64, sampler=order.tolist(),
                                          num_workers=0)
        t0 = time.perf_counter()
        n = sum(b["image"].shape[0] for b in tdl)
        dt = time.perf_counter() - t0
        results["s4_train_path_shardcrops_random_access_batch64"] = {
            "chips": n, "seconds": dt, "chips_per_s": n / dt, "ms_per_chip": 1000 * dt / n,
            "chip_shape": [13, size, size], "dtype": "torch.float32",
            "note": "the sample is cropped to the chip size: no crop work"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    pos = positions(args.chips, scene.height, scene.width, size)
    with rasterio.open(scene.path) as f:
        results["c_rasterio_window_open_once"] = timed(
            lambda rc: f.read(window=Window(rc[1], rc[0], size, size)), pos)

    from torchgeo.datasets import Sentinel2
    from torchgeo.samplers import RandomGeoSampler

    tg = Sentinel2(paths=samples.brandenburg_dir(cache) / "IMG_DATA", res=10,
                   bands=list(Sentinel2.all_bands))
    queries = list(RandomGeoSampler(tg, size=size, length=args.torchgeo_chips + 1,
                                    generator=torch.Generator().manual_seed(0)))
    tg[queries[0]]  # first chip opens the files: a one-off
    results["d_torchgeo_sentinel2_jp2"] = timed(lambda q: tg[q]["image"], queries[1:])

    tgr = results["d_torchgeo_sentinel2_jp2"]["chips_per_s"]
    for r in results.values():
        r["x_torchgeo"] = r["chips_per_s"] / tgr
    labels = {
        "s1_eossl_shard_dataset": "(s1) eossl ShardDataset over LitData shards, shuffled",
        "s2_litdata_streaming_raw": "(s2) LitData StreamingDataset alone, raw uint16",
        "s3_eossl_shards_dataloader_2workers_batch64":
            "(s3) (s1) in a DataLoader, 2 workers, batch 64",
        "s4_train_path_shardcrops_random_access_batch64":
            "(s4) eossl pretrain's path: ShardCrops, shuffled random access, batch 64, no workers",
        "c_rasterio_window_open_once": "(c) rasterio src.read(window), GeoTIFF stack, one handle",
        "d_torchgeo_sentinel2_jp2": "(d) torchgeo Sentinel2 + RandomGeoSampler, 13 JPEG 2000",
    }
    rows = ["| reader | chips | chips/s | x torchgeo | output |", "|---|---:|---:|---:|---|"]
    for k, r in results.items():
        rows.append(f"| {labels[k]} | {r['chips']} | {r['chips_per_s']:.0f} | "
                    f"{r['x_torchgeo']:.0f} | {r['dtype']} {tuple(r['chip_shape'])} |")
    rows += ["", "| one-off cost | s |", "|---|---:|"]
    rows += [f"| {k.rsplit(', s', 1)[0]} | {v:.2f} |" for k, v in one_off.items()]
    md = "\n".join(rows)
    info = machine_info()
    print(f"Machine: {info['cpu_model']}, {info['cpu_cores']} cores; {size} px chips, 13 bands\n")
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "chips_shards", "machine": info,
        "settings": {"size": size, "stride": args.stride, "epochs": args.epochs,
                     "torchgeo_chips": args.torchgeo_chips, "rasterio_chips": args.chips,
                     "train_chips": args.train_chips,
                     "scene": str(scene.path)},
        "results": results, "one_off_s": one_off, "peak_rss_mb": peak_rss_mb(),
        "markdown": md}, indent=2))
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
