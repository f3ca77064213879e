"""Embeddings of a whole scene from a pretrained encoder, georeferenced, streamed window by window.

Two products, written into one output folder:

- ``patches.parquet``: GeoParquet, one row per patch of ``patch_size`` px on a regular grid,
  the patch footprint as a polygon in the scene's CRS, its row/col, the share of valid pixels
  and the embedding vector (a fixed-size list of float32).
- ``dense.tif``: the backbone's feature map as a multi-band float32 GeoTIFF (one band per
  embedding dimension) on the scene's CRS, its transform scaled by the feature stride.

The scene is read in windows (never loaded whole), so it may be larger than memory. Each
finished window is saved to ``.embed-parts/`` with a progress file, so an interrupted run
continues where it stopped (``resume=True``); the final files are assembled into temporary
names and renamed, so a reader never sees a half-written product.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, DataError, OutputExistsError, WriteError
from .io import (atomic_path, atomic_write_text, check_writable_folder, remove_stale_parts,
                 write_failure)

PARTS = ".embed-parts"
PROGRESS = "progress.json"
# what a resumed run must share with the interrupted one, as the user knows it
_JOB_NAMES = {"checkpoint": "checkpoint", "checkpoint_file": "checkpoint (file changed since)",
              "scene": "scene", "scene_file": "scene (file changed since)", "bands": "band list",
              "patch_size": "--patch-size", "window": "--window", "dense": "--no-dense",
              "min_valid": "--min-valid"}


@dataclass
class EmbedResult:
    out: Path
    patches: Path
    dense: Path | None
    n_patches: int
    n_windows: int
    resumed_windows: int


def open_scene(scene: str | os.PathLike, cache=None, bands: list[str] | None = None,
               need: list[str] | None = None, **options):
    """The one scene ``scene`` names, through the data resolver (eossl.data.resolve): a sample
    name, a folder of band files or a raster file. ``bands``: the names of a raster's bands in
    file order (``--band-names``), when its band descriptions do not say; ``options``: the
    other data options (``sensor``, ``nodata``, ...). A folder that lacks some of the sensor's
    band files is stacked with the bands in ``need`` only (the encoder's).
    """
    from .data.readers import S2_BAND_FILE
    from .data.resolve import DataRequest, open_data

    p = Path(str(scene))
    req = DataRequest(data=str(scene), band_names=bands, **options)
    if p.is_dir() and need and any(S2_BAND_FILE.search(f.name) for f in p.iterdir()):
        from .data.readers import find_band_files

        have = find_band_files(p)
        if not all(b in have for b in need) or len(have) < 13:
            req.bands = [b for b in need if b in have] or None
    source = open_data(req, cache)
    scenes = getattr(source, "scenes", None)
    if not scenes:
        raise DataError(f"{scene}: not a scene (a {type(source).__name__}); embed takes one "
                        "raster, a folder of band files or a sample scene")
    if len(scenes) > 1:
        raise DataError(f"{scene}: holds {len(scenes)} scenes; embed one at a time (give one "
                        "file)")
    s = scenes[0]
    if need and not set(need) <= set(s.bands) and all(b.startswith("band") for b in s.bands):
        from .errors import BandError

        raise BandError(f"{s.path}: holds {len(s.bands)} bands with no names (no band "
                        f"descriptions) and the checkpoint needs {', '.join(need)}; name them "
                        "with --band-names NAME,... (file order) or --sensor")
    return s


def _file_stamp(path: Path) -> list[int]:
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _feature_stride(encoder, n_bands: int, probe: int = 64) -> int:
    with torch.no_grad():
        f = encoder.forward_features(torch.zeros(1, n_bands, probe, probe,
                                                 device=_device(encoder)))
    if f.ndim != 4:
        raise ConfigError("dense embeddings need a convolutional backbone with a spatial "
                          "feature map; pass --no-dense")
    return probe // f.shape[-1]


def _windows(height: int, width: int, size: int):
    for r in range(0, height, size):
        for c in range(0, width, size):
            yield r, c, min(size, height - r), min(size, width - c)


def embed_scene(checkpoint: str | os.PathLike, scene, out: str | os.PathLike, *,
                patch_size: int | None = None, window: int = 512, dense: bool = True,
                min_valid: float = 0.5, batch_size: int = 256, resume: bool = False,
                overwrite: bool = False, cache=None, progress: bool = True,
                bands: list[str] | None = None, data_options: dict | None = None,
                device: str | torch.device = "cpu") -> EmbedResult:
    """Patch (and dense) embeddings of ``scene`` with the encoder in ``checkpoint``.

    ``scene``: a SceneStack or anything :func:`open_scene` takes (``bands``: the names of a
    GeoTIFF stack's bands in file order, when its band descriptions do not say). Patches with
    less than
    ``min_valid`` share of valid pixels (finite, not nodata) are skipped; invalid pixels of the
    others are set to 0 before encoding. ``device``: where the encoder runs (the outputs
    do not depend on it beyond float rounding).
    """
    from .checkpoint import load_encoder
    from .data.readers import SceneStack
    from .export import match_bands
    from .progress import bar as progress_bar

    if int(window) < 1:
        raise ConfigError(f"--window {window}: expected a window size of at least 1 px")
    if not 0.0 <= float(min_valid) <= 1.0:
        raise ConfigError(f"--min-valid {min_valid} must be a share between 0 and 1")
    out = check_writable_folder(out)
    existed = out.exists()
    patches_path, dense_path, parts = out / "patches.parquet", out / "dense.tif", out / PARTS
    if not resume and not overwrite:
        for p in (patches_path, dense_path, parts):
            if p.exists():
                raise OutputExistsError(f"{p} already exists; pass --resume to continue an "
                                        "interrupted run, --overwrite to replace, or another --out")
    if resume and not parts.exists() and patches_path.exists():
        raise OutputExistsError(f"{out} holds a finished embedding run ({patches_path.name}); "
                                "nothing to resume: pass --overwrite to redo it, or another --out")
    if overwrite and not resume and parts.exists():
        shutil.rmtree(parts)
    encoder = load_encoder(checkpoint).to(device)
    meta = encoder.metadata
    stack = scene if isinstance(scene, SceneStack) else open_scene(
        scene, cache, bands, need=list(encoder.bands), **(data_options or {}))
    # the scene may hold more bands, in any order: the encoder's are picked by name
    match_bands(encoder.bands, stack.bands, reorder=True, where=f"checkpoint {checkpoint}")
    bands = encoder.bands
    p = int(patch_size) if patch_size is not None else int(meta.get("crop_size") or 32)
    if p < 1 or p > min(stack.height, stack.width):
        raise ConfigError(f"patch size {p} px must be between 1 and the scene size "
                          f"({stack.height} x {stack.width} px)")
    stride = _feature_stride(encoder, len(bands)) if dense else 1
    unit = math.lcm(p, stride)
    window = max(unit, (int(window) // unit) * unit)
    grid_h, grid_w = stack.height // p, stack.width // p  # whole patches only
    wins = list(_windows(grid_h * p if not dense else stack.height,
                         grid_w * p if not dense else stack.width, window))
    # a resumed run must continue the same job: same model file (a checkpoint rewritten by
    # further pretraining has another size or mtime), same scene file, same settings
    job = {"checkpoint": str(Path(checkpoint).resolve()),
           "checkpoint_file": _file_stamp(Path(checkpoint)), "scene": str(stack.path),
           "scene_file": _file_stamp(Path(stack.path)), "bands": list(bands),
           "patch_size": p, "window": window, "dense": dense, "min_valid": min_valid}
    try:
        parts.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputExistsError(f"{out}: cannot write there ({e.strerror})") from None
    for folder in (out, parts):  # temporaries of a write a SIGKILL cut short
        remove_stale_parts(folder)
    prog_file = parts / PROGRESS
    done: set[int] = set()
    if prog_file.exists():
        try:
            prev = json.loads(prog_file.read_text())
            prev_job, prev_done = dict(prev["job"]), [int(i) for i in prev["done"]]
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{prog_file}: unreadable progress file; pass --overwrite to start "
                            "the embedding again") from None
        if prev_job != job:
            diff = list(dict.fromkeys(_JOB_NAMES.get(k, k) for k in job
                                      if prev_job.get(k) != job[k]))
            raise ConfigError(f"{out}: holds an unfinished embedding run with another "
                              f"{', '.join(diff)}; resume with the same checkpoint, scene and "
                              "options, --overwrite to start again, or another --out")
        done = set(prev_done)
    resumed = len(done)
    encoder.eval()
    bar = progress_bar(len(wins), "embed windows", "win", initial=resumed, enabled=progress)
    for i, (r, c, h, w) in enumerate(wins):
        if i in done:
            continue
        raw = stack.read((r, c, h, w), bands=bands)
        valid = np.isfinite(raw).all(axis=0)
        if stack.nodata is not None:
            valid &= (raw != stack.nodata).all(axis=0)
        raw = np.where(valid[None], raw, 0).astype(np.float32)
        rec = _embed_patches(encoder, raw, valid, r, c, p, grid_h, grid_w, min_valid, batch_size)
        rec["valid_pixels"], rec["pixels"] = np.int64(valid.sum()), np.int64(valid.size)
        if dense:
            rec["dense"] = _embed_dense(encoder, raw, stride)
        try:
            with atomic_path(parts / f"w{i:06d}.npz", suffix=".npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, **rec)
            done.add(i)
            atomic_write_text(prog_file, json.dumps({"job": job, "done": sorted(done)}))
        except (OSError, WriteError) as e:
            raise WriteError(getattr(e, "path", out), write_failure(e) or str(e),
                             f"the {len(done)} finished windows are kept: free space and rerun "
                             "with --resume") from None
        bar.update(1)
    bar.close()
    try:
        n = _assemble(stack, parts, wins, p, stride, dense, patches_path, dense_path,
                      encoder.out_dim, min_valid)
    except (OSError, WriteError) as e:
        raise WriteError(getattr(e, "path", out), write_failure(e) or str(e),
                         "the finished windows are kept: free space and rerun with "
                         "--resume") from None
    except DataError:  # nothing worth embedding: no half-run is left to resume
        shutil.rmtree(parts, ignore_errors=True)
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    shutil.rmtree(parts, ignore_errors=True)
    atomic_write_text(out / "embed.json", json.dumps({
        **job, "bands": list(bands), "crs": str(stack.crs), "feature_stride": stride,
        "embedding_dim": encoder.out_dim, "patches": n, "method": meta.get("method")}, indent=2))
    return EmbedResult(out, patches_path, dense_path if dense else None, n, len(wins), resumed)


def _embed_patches(encoder, raw, valid, r0, c0, p, grid_h, grid_w, min_valid, batch_size):
    h, w = raw.shape[1:]
    rows, cols, tiles, shares = [], [], [], []
    for pr in range(h // p):
        for pc in range(w // p):
            gr, gc = (r0 + pr * p) // p, (c0 + pc * p) // p
            if gr >= grid_h or gc >= grid_w:
                continue
            share = float(valid[pr * p:(pr + 1) * p, pc * p:(pc + 1) * p].mean())
            if share < min_valid:
                continue  # all-nodata (or mostly) patches carry no embedding worth keeping
            rows.append(gr)
            cols.append(gc)
            shares.append(share)
            tiles.append(raw[:, pr * p:(pr + 1) * p, pc * p:(pc + 1) * p])
    emb = np.zeros((0, encoder.out_dim), np.float32)
    if tiles:
        x = torch.from_numpy(np.stack(tiles))
        dev = _device(encoder)
        with torch.no_grad():
            emb = torch.cat([encoder(b.to(dev)).cpu() for b in x.split(batch_size)])
        emb = emb.float().numpy()
    return {"row": np.asarray(rows, np.int64), "col": np.asarray(cols, np.int64),
            "valid": np.asarray(shares, np.float32), "embedding": emb}


def _embed_dense(encoder, raw, stride):
    # Pad edge windows to a whole number of feature cells; the padding is nodata (0).
    c, h, w = raw.shape
    ph, pw = math.ceil(h / stride) * stride, math.ceil(w / stride) * stride
    x = np.zeros((1, c, ph, pw), np.float32)
    x[0, :, :h, :w] = raw
    with torch.no_grad():
        f = encoder.forward_features(torch.from_numpy(x).to(_device(encoder)))[0]
    f = f.float().cpu().numpy()
    return f


def _assemble(stack, parts, wins, p, stride, dense, patches_path, dense_path, dim,
              min_valid: float = 0.5) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pyproj
    import rasterio
    import shapely
    from rasterio.transform import Affine
    from rasterio.windows import Window

    t = stack.transform
    # GeoParquet 1.0 stores the CRS as PROJJSON; pyproj (a geopandas dependency) writes it
    crs_json = (pyproj.CRS.from_user_input(stack.crs.to_wkt()).to_json_dict()
                if stack.crs else None)
    geo = {"version": "1.0.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"],
                                    **({"crs": crs_json} if crs_json else {})}}}
    schema = pa.schema([("row", pa.int64()), ("col", pa.int64()), ("valid_fraction", pa.float32()),
                        ("embedding", pa.list_(pa.float32(), dim)), ("geometry", pa.binary())],
                       metadata={b"geo": json.dumps(geo).encode()})
    n = valid_px = pixels = 0
    dense_profile = None
    if dense:
        dh, dw = math.ceil(stack.height / stride), math.ceil(stack.width / stride)
        dense_profile = dict(driver="GTiff", width=dw, height=dh, count=dim, dtype="float32",
                             crs=stack.crs, transform=t @ Affine.scale(stride),
                             interleave="pixel", BIGTIFF="IF_SAFER")
        if dh >= 256 and dw >= 256:
            dense_profile.update(tiled=True, blockxsize=256, blockysize=256)
    with atomic_path(patches_path, suffix=".parquet") as tmp_pq, \
            (atomic_path(dense_path, suffix=".tif") if dense else nullcontext()) as tmp_tif:
        writer = pq.ParquetWriter(str(tmp_pq), schema)
        dst = rasterio.open(tmp_tif, "w", **dense_profile) if dense else None
        try:
            for i, (r, c, h, w) in enumerate(wins):
                with np.load(parts / f"w{i:06d}.npz", allow_pickle=False) as z:
                    rows, cols, emb = z["row"], z["col"], z["embedding"]
                    if "pixels" in z.files:
                        valid_px += int(z["valid_pixels"])
                        pixels += int(z["pixels"])
                    if len(rows):
                        x0, y0 = t @ (cols * p, rows * p)
                        x1, y1 = t @ ((cols + 1) * p, (rows + 1) * p)
                        boxes = shapely.box(np.minimum(x0, x1), np.minimum(y0, y1),
                                            np.maximum(x0, x1), np.maximum(y0, y1))
                        table = pa.table({
                            "row": rows, "col": cols, "valid_fraction": z["valid"],
                            "embedding": pa.FixedSizeListArray.from_arrays(
                                pa.array(emb.reshape(-1), pa.float32()), dim),
                            "geometry": shapely.to_wkb(boxes)}, schema=schema)
                        writer.write_table(table)
                        n += len(rows)
                    if dst is not None:
                        f = z["dense"]
                        fr, fc = r // stride, c // stride
                        fh = min(f.shape[1], dst.height - fr)
                        fw = min(f.shape[2], dst.width - fc)
                        dst.write(f[:, :fh, :fw], window=Window(fc, fr, fw, fh))
            if n == 0:
                share = valid_px / pixels if pixels else 0.0
                what = ("the scene has no valid pixel (all nodata or NaN)" if valid_px == 0
                        else f"the scene has {share:.0%} valid pixels overall, so lower "
                        "--min-valid to embed patches with fewer")
                raise DataError(f"{stack.path}: no {p} px patch has {min_valid:.0%} valid "
                                f"pixels: {what}; nothing to embed")
        finally:
            writer.close()
            if dst is not None:
                dst.close()
    return n
