"""A user's own data, written by the tests from the REAL sample scene: a multi-band GeoTIFF of
another sensor (Sentinel-2 bands re-described as Landsat 8 OLI bands, USGS file names), a
label file with its own column and classes, label rasters, and the like."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

# S2 band that stands in for each Landsat 8 OLI band (same role, nearest centre wavelength)
OLI_FROM_S2 = {"SR_B2": "B02", "SR_B3": "B03", "SR_B4": "B04", "SR_B5": "B8A", "SR_B6": "B11",
               "SR_B7": "B12"}
# the OSM classes of the sample renamed into "another" nomenclature
OWN_CLASSES = {"farm": "arable", "meadow": "grassland", "forest": "woodland",
               "residential": "built-up", "water": "open water"}


def write_tif(path: Path, arr: np.ndarray, *, crs="EPSG:32633", transform=None, names=None,
              nodata=None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    c, h, w = arr.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=c, dtype=arr.dtype,
                       crs=crs, transform=transform or from_origin(300000, 5800000, 10, 10),
                       nodata=nodata) as dst:
        dst.write(arr)
        if names:
            dst.descriptions = tuple(names)
    return path


def landsat_like(brandenburg, path: Path, window=(0, 0, 384, 768), names=None,
                 nodata=0) -> Path:
    """A window of the real S2 scene as a 6-band "Landsat 8" GeoTIFF (uint16, USGS names)."""
    scene = brandenburg.scenes[0]
    r, c, h, w = window
    idx = [scene.bands.index(b) for b in OLI_FROM_S2.values()]
    arr = scene.read((r, c, h, w))[idx].astype("uint16")
    x0, y0 = scene.transform @ (c, r)
    return write_tif(path, arr, crs=scene.crs, transform=from_origin(x0, y0, 10, 10),
                     names=list(OLI_FROM_S2) if names is None else names, nodata=nodata)


def own_labels(brandenburg, path: Path, column: str = "landuse", crs=None) -> Path:
    """The sample's OSM polygons with their classes renamed into ``column`` (others dropped),
    optionally reprojected (labels on another CRS than the imagery)."""
    import geopandas as gpd

    from eossl.data.sources import OSM_POLYGONS
    from eossl.data import samples

    gdf = gpd.read_file(samples.brandenburg_dir() / OSM_POLYGONS)
    gdf = gdf[gdf["fclass"].isin(OWN_CLASSES)]
    out = gpd.GeoDataFrame({column: gdf["fclass"].map(OWN_CLASSES),
                            "note": "x"}, geometry=gdf.geometry, crs=gdf.crs)
    if crs is not None:
        out = out.to_crs(crs)
    path = Path(path)
    out.to_file(path)
    return path


def label_raster(brandenburg, path: Path, window=(0, 0, 384, 768), scale: int = 1,
                 crs=None) -> Path:
    """The sample's label map as a raster of class CODES (10 * (id + 1); 0 = nodata),
    optionally at a coarser resolution (``scale``) and on another CRS (``crs``)."""
    scene = brandenburg.scenes[0]
    lm = brandenburg.label_map()
    r, c, h, w = window
    codes = np.where(lm == 255, 0, (lm.astype(np.int32) + 1) * 10)[r:r + h, c:c + w]
    x0, y0 = scene.transform @ (c, r)
    transform = from_origin(x0, y0, 10, 10)
    if scale > 1:
        codes = codes[::scale, ::scale]
        transform = from_origin(x0, y0, 10 * scale, 10 * scale)
    path = write_tif(path, codes[None].astype("uint8"), crs=scene.crs, transform=transform,
                     nodata=0)
    if crs is None:
        return path
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(path) as src:
        t, ww, hh = calculate_default_transform(src.crs, crs, src.width, src.height,
                                                *src.bounds)
        out = np.zeros((1, hh, ww), "uint8")
        reproject(src.read(), out, src_transform=src.transform, src_crs=src.crs,
                  dst_transform=t, dst_crs=crs, resampling=Resampling.nearest, src_nodata=0,
                  dst_nodata=0)
    warped = path.with_name(path.stem + "-warped.tif")
    return write_tif(warped, out, crs=crs, transform=t, nodata=0)


def chip_folder(brandenburg, root: Path, size: int = 16, per_class: int = 12,
                classes=("farm", "meadow", "forest")) -> Path:
    """An EuroSAT-layout folder cut from the real scene: ROOT/<class>/<class>_<n>.tif, 13-band
    chips (S2 names in the band descriptions) of patches whose OSM majority is that class."""
    from eossl.data.datasets import majority_patches

    scene = brandenburg.scenes[0]
    cands = majority_patches(scene, brandenburg.label_map(), size, 0.8,
                             len(brandenburg.classes))
    for name in classes:
        k = brandenburg.classes.index(name)
        picked = [(r, c) for r, c, kk in cands if kk == k][:per_class]
        for n, (r, c) in enumerate(picked):
            arr = scene.read((r, c, size, size)).astype("uint16")
            x0, y0 = scene.transform @ (c, r)
            write_tif(root / name / f"{name}_{n}.tif", arr, crs=scene.crs,
                      transform=from_origin(x0, y0, 10, 10), names=scene.bands, nodata=0)
    return root
