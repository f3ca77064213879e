"""Chip reading rate of eossl's shard training path next to LitData's readers, plain rasterio
and torchgeo, in one run on one machine; and how many loader cores one GPU needs.

13-band 64 px chips of the real Sentinel-2 sample, packed once (timed apart as a one-off) with
stride 16 into LitData chunks, so the corpus holds many distinct chips (overlapping tiles of
the one scene):

  (s1) what ``eossl pretrain --data CORPUS`` reads: ShardSource.crops (ShardStream: whole
       chunks in a shuffled order, samples shuffled within a window, random crops, float32) in
       a DataLoader with batch 64, in the main process (the default, ``data.num_workers: 0``)
  (s1w) the same with 1 and 2 DataLoader workers (persistent; the rate after the first batch,
       so worker start-up is left out): what a GPU's loader sustains per core
  (s2) LitData's StreamingDataset alone (raw uint16 arrays, shuffled): LitData's own reader
  (s3) LitData random access per sample in a shuffled order (the training path before
       ShardStream)
  (o)  with ``--object-store``: ShardStream over the same corpus uploaded to an S3 API server
       on 127.0.0.1 (moto, ``pip install 'moto[server]'``), first epoch with an empty chunk
       cache (fetch + read) and second epoch from the cache
  (c)  plain rasterio: one open handle on the stacked GeoTIFF, src.read(window=...)
  (d)  torchgeo Sentinel2 RasterDataset on the 13 JPEG 2000 files (res=10) + RandomGeoSampler

The GPU-demand row is computed, not measured here: a published ResNet-18 training rate on one
A100 scaled by FLOPs to 64 px and 13 bands (GPU_FIGURE below says where each number comes
from), divided by the encoder passes each method makes per chip, next to the measured chips/s
per loader core: loader cores per GPU = demand / (s1w chips/s with 1 worker).

    python benchmarks/chips_shards.py                      # ~2 min on 2 cores
    python benchmarks/chips_shards.py --object-store       # + the S3 rows
    python benchmarks/chips_shards.py --epochs 1 --torchgeo-chips 10 --stride 32 \
        --out /tmp/cs.json                                 # smoke test

Writes benchmarks/results/chips_shards.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
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

# Published figure and how it is carried to eossl's setting; docs/scale.md quotes this.
GPU_FIGURE = {
    "source": "libffcv/ffcv-imagenet README (github.com/libffcv/ffcv-imagenet): ResNet-18, "
              "1 x A100, 16 epochs of ImageNet-1k (1,281,167 images) in 35.0 min, progressive "
              "resizing 160 -> 192 px (160 px for the first 75% of epochs)",
    "a100_images_per_s_published": 16 * 1_281_167 / (35.0 * 60),  # includes eval and loading
    # forward GFLOP per image counted with torch.utils.flop_counter on timm resnet18:
    # 3 bands at 160 px 1.852, at 192 px 2.666 (0.75/0.25 mix 2.055); 13 bands at 64 px,
    # stride-4 stem, no classifier 0.360: 5.70x fewer FLOPs per image
    "flop_ratio_to_64px_13_bands": 2.055 / 0.360,
    # NVIDIA datasheets, dense BF16 tensor peak: H100 SXM 989 TFLOP/s, A100 312 TFLOP/s
    "h100_over_a100_peak": 989 / 312,
    "note": "scaling by FLOPs assumes the GPU keeps its FLOP/s on 64 px images (small images "
            "use a GPU less well: an upper estimate of demand); H100 between 1x (a lower "
            "bound) and the peak ratio (an upper bound) of the A100 figure",
}
# encoder passes per chip per step: (fwd+bwd, fwd only); a fwd-only pass ~ 1/3 of fwd+bwd
PASSES = {"moco v2": (1, 1), "simclr": (2, 0), "byol": (2, 2)}


def gpu_demand() -> dict:
    """Chips/s one GPU consumes per method (A100 figure, and H100 upper bound)."""
    a100 = GPU_FIGURE["a100_images_per_s_published"] * GPU_FIGURE["flop_ratio_to_64px_13_bands"]
    out = {"a100_fwd_bwd_images_per_s_64px": a100}
    for m, (fb, f) in PASSES.items():
        per_chip = fb + f / 3
        out[m] = {"a100_chips_per_s": a100 / per_chip,
                  "h100_chips_per_s_upper": a100 * GPU_FIGURE["h100_over_a100_peak"] / per_chip}
    return out


def _rate(n: int, dt: float, **extra) -> dict:
    return {"chips": n, "seconds": dt, "chips_per_s": n / dt, "ms_per_chip": 1000 * dt / n,
            **extra}


def loader_rate(ds, epochs_chips: int, workers: int, batch: int = 64) -> dict:
    """Chips/s of a DataLoader over ``ds`` after its first batch (worker start-up left out)."""
    import torch

    dl = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers,
                                     persistent_workers=workers > 0)
    it = iter(dl)
    next(it)
    n, t = 0, time.perf_counter()
    while n < epochs_chips:
        n += next(it)["image"].shape[0]
    dt = time.perf_counter() - t
    del it
    return _rate(n, dt, chip_shape=[13, 64, 64], dtype="torch.float32", workers=workers)


def object_store_rows(corpus_dir: Path, args) -> dict:
    """ShardStream over the corpus uploaded to a moto S3 server on 127.0.0.1."""
    import boto3
    from moto.server import ThreadedMotoServer

    from eossl.data import shards

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    cache = Path(tempfile.mkdtemp(prefix="eossl-s3cache-"))
    out = {}
    try:
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="eossl-bench")
        t = time.perf_counter()
        for f in sorted(corpus_dir.iterdir()):
            s3.upload_file(str(f), "eossl-bench", f"corpus/{f.name}")
        out["upload_s"] = time.perf_counter() - t
        corpus = shards.ShardCorpus("s3://eossl-bench/corpus", cache_dir=cache)
        ds = shards.ShardStream(corpus, 64, seed=0, epochs=1)
        for label in ("o1_s3_first_epoch_empty_cache", "o2_s3_second_epoch_cached"):
            t = time.perf_counter()
            n = sum(1 for _ in ds)
            out[label] = _rate(n, time.perf_counter() - t, chip_shape=[13, 64, 64],
                               dtype="torch.float32")
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(cache, ignore_errors=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stride", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--chips", type=int, default=2000, help="chips for the rasterio anchor")
    p.add_argument("--torchgeo-chips", type=int, default=100)
    p.add_argument("--random-access-chips", type=int, default=2048,
                   help="chips for (s3), LitData random access")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--object-store", action="store_true",
                   help="add the S3 rows (needs moto[server])")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    warnings.filterwarnings("ignore")

    import numpy as np
    import rasterio
    from rasterio.windows import Window

    from eossl.data import samples, shards, sources

    cache = samples.cache_dir()
    src = sources.brandenburg(cache)
    scene = src.scenes[0]
    size = args.size
    one_off: dict[str, float] = {}
    results: dict[str, dict] = {}
    store: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="eossl-chipshards-"))
    try:
        t = time.perf_counter()
        meta = shards.pack(shards.scene_chips(src, size, stride=args.stride), tmp / "c",
                           src.bands, nodata=0.0, chunk_bytes="64MB")
        one_off["pack into shards (stride %d, %d chips), s" % (args.stride, meta["count"])] = \
            time.perf_counter() - t
        corpus = shards.ShardCorpus(tmp / "c")
        n_epoch = len(corpus) * args.epochs
        train = shards.ShardSource(tmp / "c").crops(size, seed=0)
        results["s1_pretrain_path_stream_batch64"] = loader_rate(train, n_epoch, 0)
        for w in (1, 2):
            results[f"s1w_stream_{w}_workers_batch64"] = loader_rate(
                shards.ShardSource(tmp / "c").crops(size, seed=0), n_epoch, w)
        raw = corpus.streaming(shuffle=True, seed=0)
        t, n = time.perf_counter(), 0
        for _ in range(args.epochs):
            for s in raw:
                n += 1
        results["s2_litdata_streaming_raw"] = _rate(n, time.perf_counter() - t,
                                                    chip_shape=list(s["image"].shape),
                                                    dtype=str(s["image"].dtype))
        order = np.random.default_rng(0).permutation(len(corpus))
        order = np.resize(order, args.random_access_chips)
        t = time.perf_counter()
        for i in order:
            x = raw[int(i)]["image"]
        results["s3_litdata_random_access"] = _rate(len(order), time.perf_counter() - t,
                                                    chip_shape=list(x.shape), dtype=str(x.dtype))
        if args.object_store:
            store = object_store_rows(tmp / "c", args)
            for k in ("o1_s3_first_epoch_empty_cache", "o2_s3_second_epoch_cached"):
                results[k] = store.pop(k)
            one_off["upload the corpus to the S3 server, s"] = store.pop("upload_s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    pos = positions(args.chips, scene.height, scene.width, size)
    with rasterio.open(scene.path) as f:
        results["c_rasterio_window_open_once"] = timed(
            lambda rc: f.read(window=Window(rc[1], rc[0], size, size)), pos)

    import torch
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
        "s1_pretrain_path_stream_batch64":
            "(s1) eossl pretrain's path: ShardStream, DataLoader batch 64, no workers",
        "s1w_stream_1_workers_batch64": "(s1w) the same, 1 DataLoader worker",
        "s1w_stream_2_workers_batch64": "(s1w) the same, 2 DataLoader workers",
        "s2_litdata_streaming_raw": "(s2) LitData StreamingDataset alone, raw uint16",
        "s3_litdata_random_access": "(s3) LitData random access per sample, shuffled order",
        "o1_s3_first_epoch_empty_cache":
            "(o1) ShardStream from S3 on 127.0.0.1, empty chunk cache (fetch + read)",
        "o2_s3_second_epoch_cached": "(o2) ShardStream from S3, second epoch (chunks cached)",
        "c_rasterio_window_open_once": "(c) rasterio src.read(window), GeoTIFF stack, one handle",
        "d_torchgeo_sentinel2_jp2": "(d) torchgeo Sentinel2 + RandomGeoSampler, 13 JPEG 2000",
    }
    rows = ["| reader | chips | chips/s | x torchgeo | output |", "|---|---:|---:|---:|---|"]
    for k, r in results.items():
        rows.append(f"| {labels[k]} | {r['chips']} | {r['chips_per_s']:.0f} | "
                    f"{r['x_torchgeo']:.0f} | {r['dtype']} {tuple(r['chip_shape'])} |")
    rows += ["", "| one-off cost | s |", "|---|---:|"]
    rows += [f"| {k.rsplit(', s', 1)[0]} | {v:.2f} |" for k, v in one_off.items()]

    # GPU demand (computed from the published figure) against the measured loader rates
    demand = gpu_demand()
    per_worker = results["s1w_stream_1_workers_batch64"]["chips_per_s"]
    two = results["s1w_stream_2_workers_batch64"]["chips_per_s"]
    rows += ["", f"One A100 (published ResNet-18 rate scaled to 64 px, 13 bands): "
             f"{demand['a100_fwd_bwd_images_per_s_64px']:.0f} fwd+bwd images/s. Loader: "
             f"{per_worker:.0f} chips/s with 1 worker, {two:.0f} with 2, "
             f"{8 * per_worker:.0f} with 8 (computed: 8 x 1 worker).", "",
             "| method | encoder passes/chip (fwd+bwd, fwd) | chips/s one A100 consumes | "
             "H100, upper | loader cores per A100 | per H100, upper |",
             "|---|---|---:|---:|---:|---:|"]
    for m, (fb, f) in PASSES.items():
        d = demand[m]
        rows.append(f"| {m} | ({fb}, {f}) | {d['a100_chips_per_s']:.0f} | "
                    f"{d['h100_chips_per_s_upper']:.0f} | "
                    f"{d['a100_chips_per_s'] / per_worker:.1f} | "
                    f"{d['h100_chips_per_s_upper'] / per_worker:.1f} |")
    md = "\n".join(rows)
    info = machine_info()
    print(f"Machine: {info['cpu_model']}, {info['cpu_cores']} cores; {size} px chips, 13 bands\n")
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "chips_shards", "machine": info,
        "settings": {"size": size, "stride": args.stride, "epochs": args.epochs,
                     "torchgeo_chips": args.torchgeo_chips, "rasterio_chips": args.chips,
                     "random_access_chips": args.random_access_chips,
                     "object_store": args.object_store, "scene": str(scene.path)},
        "results": results, "one_off_s": one_off, "gpu_figure": GPU_FIGURE,
        "gpu_demand": demand, "peak_rss_mb": peak_rss_mb(), "markdown": md}, indent=2))
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
