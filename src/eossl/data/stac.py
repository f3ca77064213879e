"""A local STAC Item or ItemCollection (JSON) whose assets are rasters, as scenes.

Each item is one scene. Its raster assets are found by media type (GeoTIFF / COG / JP2) or the
``data`` role; hrefs are resolved against the JSON file (pystac does it). An item with one
multi-band asset reads it in place, band names from the asset's ``eo:bands`` (``name``, else
``common_name``), else its band descriptions; an item with one single-band asset per band
(Sentinel-2 on AWS: ``B04``/``red``...) is stacked onto the finest grid once, into the cache,
like a folder of Sentinel-2 band files. Band names go through the same resolution as every
other form (``--sensor``, ``--bands``; ambiguous names are refused).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from ..errors import ConfigError, DataError

RASTER_TYPES = ("image/tiff", "image/jp2", "application/x-hdf", "image/vnd.stac.geotiff")


def _items(path: Path):
    import pystac

    try:
        import json

        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read as JSON ({str(e)[:120]}); expected a STAC Item "
                        "or ItemCollection") from None
    try:
        if doc.get("type") == "FeatureCollection":
            return list(pystac.ItemCollection.from_file(str(path)))
        if doc.get("type") == "Feature":
            return [pystac.Item.from_file(str(path))]
    except Exception as e:  # pystac raises several types for a malformed document
        raise DataError(f"{path}: not a valid STAC document ({str(e).splitlines()[0][:120]})"
                        ) from None
    raise DataError(f"{path}: a JSON of type {doc.get('type')!r}; expected a STAC Item "
                    "(Feature) or ItemCollection (FeatureCollection)")


def _raster_assets(item) -> list[tuple[str, object]]:
    out = []
    for key, a in item.assets.items():
        mt = (a.media_type or "").lower()
        roles = a.roles or []
        is_raster = any(mt.startswith(t) for t in RASTER_TYPES) or (
            not mt and Path(a.href).suffix.lower() in (".tif", ".tiff", ".jp2", ".vrt"))
        if is_raster and ("data" in roles or not roles):
            out.append((key, a))
    return out


def _asset_band_names(key: str, asset) -> list[str] | None:
    bands = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands")
    if not bands:
        return None
    return [b.get("name") or b.get("common_name") or key for b in bands]


def stac_scenes(path: str | os.PathLike, req, cache=None):
    """The SceneSource of a STAC Item / ItemCollection file (see the module docstring)."""
    from .readers import SceneStack, _open, name_raster_bands, write_band_stack
    from .resolve import data_id
    from .samples import cache_dir
    from .sources import SceneSource

    path = Path(path)
    items = _items(path)
    if not items:
        raise DataError(f"{path}: the ItemCollection holds no item")
    scenes = []
    for item in items:
        assets = _raster_assets(item)
        if not assets:
            raise DataError(f"{path}: item {item.id!r} has no raster asset (GeoTIFF/COG/JP2 "
                            "with the 'data' role)")
        hrefs = {k: _local(path, a) for k, a in assets}
        missing = [str(h) for h in hrefs.values() if not h.exists()]
        if missing:
            raise DataError(f"{path}: item {item.id!r}: asset file {missing[0]} does not exist "
                            "(eossl reads local STAC items; hrefs are relative to the JSON)")
        multi = [(k, a) for k, a in assets if (_asset_band_names(k, a) or [None]) and
                 _count(hrefs[k]) > 1]
        if len(multi) == 1 and len(assets) == 1:
            k, a = multi[0]
            with _open(hrefs[k]) as src:
                count, desc, nodata = src.count, list(src.descriptions or []), src.nodata
            names = req.band_names or _asset_band_names(k, a)
            use, idx, sensor = name_raster_bands(hrefs[k], count, desc, sensor=req.sensor,
                                                 band_names=names, bands=req.bands)
            nd = nodata if req.nodata is None else float(req.nodata)
            scenes.append(SceneStack(hrefs[k], use, sensor=sensor, nodata=nd, indexes=idx))
            continue
        if any(_count(h) != 1 for h in hrefs.values()):
            raise DataError(f"{path}: item {item.id!r} mixes multi-band and single-band assets "
                            f"({', '.join(hrefs)}); expected one multi-band asset or one asset "
                            "per band")
        from ..bands import resolve_band_names

        names = [(_asset_band_names(k, a) or [k])[0] for k, a in assets]
        resolved = resolve_band_names(names, req.sensor, where=f"{path} item {item.id}")
        files = dict(zip(resolved.names, hrefs.values()))
        use = resolved.names
        if req.bands:
            wanted = req.bands.split(",") if isinstance(req.bands, str) else req.bands
            use = resolve_band_names(wanted, req.sensor or resolved.sensor,
                                     where="--bands").names
        key = hashlib.sha256("|".join(f"{b}:{files[b].resolve()}:{files[b].stat().st_mtime_ns}"
                                      for b in use).encode()).hexdigest()[:16]
        out = cache_dir(cache) / "stacks" / f"stac-{item.id}-{key}.tif"
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tif.part")
            os.close(fd)
            try:
                write_band_stack(files, list(use), Path(tmp))
                os.replace(tmp, out)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        nd = 0.0 if req.nodata is None else float(req.nodata)
        scenes.append(SceneStack(out, list(use), sensor=resolved.sensor, nodata=nd))
    first = scenes[0]
    for s in scenes[1:]:
        if s.bands != first.bands:
            raise DataError(f"{path}: items have different bands ({', '.join(first.bands)} vs "
                            f"{', '.join(s.bands)}); select common ones with --bands")
    if req.band_names and len(items) > 1 and len(scenes) != len(items):
        raise ConfigError("--band-names: give it for a single item")
    return SceneSource(path.stem, scenes, cache=cache_dir(cache), data_id=data_id(str(path)))


def _local(doc: Path, asset) -> Path:
    """An asset's file: absolute as given, else relative to the JSON (items of an
    ItemCollection carry no self link for pystac to resolve against)."""
    href = asset.get_absolute_href() or asset.href
    if "://" in href and not href.startswith("file://"):
        raise DataError(f"{doc}: asset {href} is remote; eossl reads local STAC items (download "
                        "the assets, or collect patches with eossl collect)")
    p = Path(href.removeprefix("file://"))
    return p if p.is_absolute() else (doc.parent / p)


def _count(path: Path) -> int:
    from .readers import _open

    with _open(path) as src:
        return src.count
