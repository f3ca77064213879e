"""A user's labels for a scene: vector features (polygons or points) with a class column, or a
raster of class codes, turned into label maps on the scene's own grid.

Classes are whatever the labels hold: inferred from the column's values (strings or integers)
or the raster's codes, ordered and subset with ``classes``. Nothing is dropped silently: a
class asked for that the labels lack is an error, and the data source reports classes that
end up with no usable patch (see sources.SceneSource.class_note).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError

IGNORE_INDEX = 255
MAX_CLASSES = 254  # ids 0..253 fit uint8 next to IGNORE_INDEX
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".img", ".jp2", ".nc")


def is_raster_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in RASTER_SUFFIXES


def parse_classes(text) -> tuple[list[str] | None, dict | None]:
    """``--classes``: ``corn,soy`` (order / subset by value) or ``1=corn,5=soy`` (a raster's
    code -> name map, which also orders and subsets). Returns (names, code map or None)."""
    if text is None or text == "" or text == []:
        return None, None
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    items = [str(i).strip() for i in items if str(i).strip()]
    if items and all("=" in i for i in items):
        codes = {}
        for i in items:
            code, _, name = i.partition("=")
            try:
                codes[int(code)] = name.strip()
            except ValueError:
                raise ConfigError(f"--classes {text}: {code!r} is not an integer class code; "
                                  "expected CODE=NAME items, e.g. 1=corn,5=soy") from None
        if len(set(codes.values())) != len(codes):
            raise ConfigError(f"--classes {text}: a class name is given to two codes")
        return list(codes.values()), codes
    if any("=" in i for i in items):
        raise ConfigError(f"--classes {text}: mix of NAME and CODE=NAME items; use one form")
    if len(set(items)) != len(items):
        raise ConfigError(f"--classes {text}: names a class twice")
    return items, None


def _value_name(v) -> str:
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


class VectorLabels:
    """Labelled features from any file OGR reads (GeoPackage, GeoJSON, Shapefile, GeoParquet).

    ``column``: the class attribute (required when the file has several candidate columns);
    ``classes``: the class values to use, in id order (default: every value, sorted).
    Polygons label the pixels they cover; points label the patch centred on them.
    """

    def __init__(self, path: str | os.PathLike, column: str | None = None,
                 classes: Sequence[str] | None = None, *, crs_fallback=None) -> None:
        import geopandas as gpd

        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path}: no such label file; expected a vector file "
                            "(GeoPackage, GeoJSON, Shapefile, GeoParquet) or a label raster")
        try:
            if self.path.suffix.lower() == ".parquet":
                gdf = gpd.read_parquet(self.path)
            else:
                gdf = gpd.read_file(self.path)
        except Exception as e:  # pyogrio / pyarrow raise several types; all mean unreadable
            raise DataError(f"{self.path}: cannot read labels ({_first_line(e)}); expected a "
                            "vector file OGR reads (GeoPackage, GeoJSON, Shapefile, "
                            "GeoParquet)") from None
        if gdf.empty:
            raise DataError(f"{self.path}: holds no features")
        if gdf.crs is None:
            raise DataError(f"{self.path}: the label file has no CRS; expected one (set it, "
                            "e.g. ogr2ogr -a_srs EPSG:32633 out.gpkg in.gpkg) so the labels can "
                            "be placed on the imagery")
        gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
        if gdf.crs.is_geographic and not gdf.empty:
            x0, y0, x1, y1 = gdf.total_bounds
            if min(x0, y0) < -180 or x1 > 360 or y1 > 90:  # GeoJSON is read as WGS84 always
                raise DataError(f"{self.path}: coordinates up to {max(abs(x1), abs(y1)):.0f} "
                                f"are not degrees, but the file's CRS is {gdf.crs.name}; the "
                                "label file's CRS is missing or wrong (GeoJSON must be WGS84 "
                                "longitude/latitude; use a GeoPackage to keep a projected CRS)")
        attrs = [c for c in gdf.columns if c != gdf.geometry.name]
        if column is None:
            cands = [c for c in attrs if c.lower() not in ("fid", "id", "osm_id", "ogc_fid")]
            if len(cands) != 1:
                raise ConfigError(f"{self.path}: which column holds the classes? give "
                                  f"--label-column (columns: {', '.join(map(str, attrs)) or 'none'})")
            column = cands[0]
        if column not in gdf.columns:
            raise DataError(f"{self.path}: no column {column!r}; columns are "
                            f"{', '.join(map(str, attrs))}")
        self.column = column
        gdf = gdf[gdf[column].notna()]
        values = gdf[column]
        kinds = set(gdf.geometry.geom_type)
        self.points = kinds <= {"Point", "MultiPoint"}
        if not self.points and not kinds <= {"Polygon", "MultiPolygon"}:
            raise DataError(f"{self.path}: geometries are {', '.join(sorted(kinds))}; expected "
                            "all polygons or all points")
        uniq = sorted(set(values.tolist()), key=lambda v: (isinstance(v, str), v))
        names = {_value_name(v): v for v in uniq}
        if classes is None:
            classes = list(names)
        else:
            missing = [c for c in classes if c not in names]
            if missing:
                raise DataError(f"{self.path}: --classes {', '.join(missing)} not found in "
                                f"column {column!r} (values: {', '.join(list(names)[:30])})")
        if len(classes) > MAX_CLASSES:
            raise DataError(f"{self.path}: column {column!r} holds {len(classes)} distinct "
                            f"values; at most {MAX_CLASSES} classes are supported (is it a "
                            "class column? choose one with --label-column)")
        self.classes = [str(c) for c in classes]
        self.all_values = list(names)
        wanted = {names[c]: i for i, c in enumerate(self.classes)}
        self.gdf = gdf.assign(_cls=values.map(wanted))
        self.gdf = self.gdf[self.gdf["_cls"].notna()]
        self.gdf["_cls"] = self.gdf["_cls"].astype(int)

    # ----------------------------------------------------------------- on a scene grid
    def _on(self, scene, frame=None):
        """The features reprojected to ``scene``'s CRS, clipped to its extent."""
        from shapely.geometry import box

        gdf = self.gdf if frame is None else frame
        if scene.crs is None:
            raise DataError(f"{scene.path}: the imagery has no CRS; labels cannot be placed on "
                            "it")
        if gdf.crs != scene.crs:
            gdf = gdf.to_crs(scene.crs)
        b = scene.bounds
        return gdf[gdf.intersects(box(b.left, b.bottom, b.right, b.top))]

    def overlaps(self, scene) -> bool:
        return not self._on(scene).empty

    def label_map(self, scene) -> np.ndarray:
        """(H, W) uint8 class ids on the scene grid, IGNORE_INDEX where unlabelled. Polygons
        are burnt largest first, so a pond inside a forest keeps its own class; points label
        their pixel."""
        from rasterio import features

        gdf = self._on(scene)
        if gdf.empty:
            return np.full((scene.height, scene.width), IGNORE_INDEX, np.uint8)
        if not self.points:
            gdf = gdf.assign(_area=gdf.geometry.area).sort_values("_area", ascending=False)
        shapes = ((g, int(c)) for g, c in zip(gdf.geometry, gdf["_cls"]))
        return features.rasterize(shapes, out_shape=(scene.height, scene.width),
                                  transform=scene.transform, fill=IGNORE_INDEX, dtype="uint8")

    def point_samples(self, scene) -> list[tuple[int, int, int]]:
        """(row, col, class id) of every point on the scene grid."""
        from rasterio.transform import rowcol

        gdf = self._on(scene)
        out = []
        for g, c in zip(gdf.geometry, gdf["_cls"]):
            for p in getattr(g, "geoms", [g]):
                r, col = rowcol(scene.transform, p.x, p.y)
                if 0 <= r < scene.height and 0 <= col < scene.width:
                    out.append((int(r), int(col), int(c)))
        return out

    def split_tests(self, scene, column: str) -> list[np.ndarray]:
        """Test areas per fold from a split column: ``train``/``test`` values give one fold,
        integers 0..k-1 give k folds (fold i tests on the features marked i)."""
        from rasterio import features

        if column not in self.gdf.columns:
            raise DataError(f"{self.path}: no split column {column!r}; columns are "
                            f"{', '.join(c for c in self.gdf.columns if c != '_cls')}")
        gdf = self._on(scene)
        vals = gdf[column].dropna()
        text = {str(v).strip().lower() for v in vals}
        shape = (scene.height, scene.width)

        def burn(sel) -> np.ndarray:
            geoms = list(gdf.loc[sel.index].geometry) if len(sel) else []
            if not geoms:
                return np.zeros(shape, bool)
            return features.rasterize(((g, 1) for g in geoms), out_shape=shape,
                                      transform=scene.transform, fill=0, dtype="uint8") > 0

        if text <= {"train", "test"}:
            return [burn(vals[vals.astype(str).str.strip().str.lower() == "test"])]
        try:
            folds = sorted({int(float(v)) for v in vals})
        except ValueError:
            raise DataError(f"{self.path}: split column {column!r} holds "
                            f"{', '.join(sorted(text)[:8])}; expected train/test or fold "
                            "numbers 0..k-1") from None
        return [burn(vals[vals.astype(float).astype(int) == f]) for f in folds]


class RasterLabels:
    """A raster of class codes (any CRS and grid), resampled to each scene by nearest
    neighbour. ``codes``: an optional code -> name map (which also orders and subsets the
    classes); default: every code found, named by its number. The raster's nodata is
    unlabelled."""

    points = False

    def __init__(self, path: str | os.PathLike, classes: Sequence[str] | None = None,
                 codes: dict | None = None) -> None:
        import rasterio

        self.path = Path(path)
        try:
            with rasterio.open(self.path) as src:
                if src.count != 1:
                    raise DataError(f"{self.path}: a label raster holds one band of class "
                                    f"codes; this one has {src.count}")
                if src.crs is None:
                    raise DataError(f"{self.path}: the label raster has no CRS; expected a "
                                    "georeferenced raster so it can be placed on the imagery")
                self.crs, self.nodata = src.crs, src.nodata
                arr = src.read(1)
        except rasterio.errors.RasterioError as e:
            raise DataError(f"{self.path}: cannot read the label raster ({_first_line(e)})"
                            ) from None
        if arr.dtype.kind == "f":
            finite = arr[np.isfinite(arr)]
            if not np.all(finite == np.round(finite)):
                raise DataError(f"{self.path}: holds fractional values; a label raster holds "
                                "integer class codes")
        present = [int(v) for v in np.unique(arr[np.isfinite(arr)] if arr.dtype.kind == "f"
                                               else arr) if self.nodata is None or v != self.nodata]
        if codes is not None:
            missing = [c for c in codes if c not in present]
            if missing:
                raise DataError(f"{self.path}: --classes code(s) {missing} do not occur in the "
                                f"raster (codes: {present[:30]})")
            self.codes = dict(codes)
        elif classes is not None:
            by_name = {str(c): c for c in present}
            missing = [c for c in classes if c not in by_name]
            if missing:
                raise DataError(f"{self.path}: --classes {', '.join(missing)} not among the "
                                f"raster's codes ({', '.join(map(str, present[:30]))}); name "
                                "codes as CODE=NAME")
            self.codes = {by_name[c]: c for c in classes}
        else:
            self.codes = {c: str(c) for c in present}
        if len(self.codes) > MAX_CLASSES:
            raise DataError(f"{self.path}: holds {len(self.codes)} distinct codes; at most "
                            f"{MAX_CLASSES} classes are supported")
        self.classes = list(self.codes.values())
        self.column = None

    def _grid(self, scene) -> np.ndarray:
        import rasterio
        from rasterio.warp import Resampling, reproject

        if scene.crs is None:
            raise DataError(f"{scene.path}: the imagery has no CRS; labels cannot be placed on "
                            "it")
        fill = -1
        out = np.full((scene.height, scene.width), fill, np.int64)
        with rasterio.open(self.path) as src:
            src_arr = src.read(1).astype(np.int64)
            if self.nodata is not None:
                src_arr[src.read(1) == self.nodata] = fill
            reproject(src_arr, out, src_transform=src.transform, src_crs=src.crs,
                      dst_transform=scene.transform, dst_crs=scene.crs,
                      resampling=Resampling.nearest, src_nodata=fill, dst_nodata=fill)
        return out

    def overlaps(self, scene) -> bool:
        return bool((self._grid(scene) >= 0).any())

    def label_map(self, scene) -> np.ndarray:
        codes = self._grid(scene)
        out = np.full(codes.shape, IGNORE_INDEX, np.uint8)
        for i, code in enumerate(self.codes):
            out[codes == code] = i
        return out


def open_labels(path: str | os.PathLike, column: str | None = None, classes=None):
    """Vector or raster labels by file type; ``classes`` as :func:`parse_classes` reads it."""
    names, codes = parse_classes(classes)
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such label file; expected a vector file (GeoPackage, "
                        "GeoJSON, Shapefile, GeoParquet) or a label raster (GeoTIFF)")
    if is_raster_path(p):
        if column is not None:
            raise ConfigError(f"--label-column {column}: {p} is a label raster (class codes), "
                              "which has no columns")
        return RasterLabels(p, names, codes)
    if codes is not None:
        raise ConfigError(f"--classes CODE=NAME maps a label raster's codes; {p} is a vector "
                          "file: give the class values (e.g. --classes corn,soy)")
    return VectorLabels(p, column, names)
