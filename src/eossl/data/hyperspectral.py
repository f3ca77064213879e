"""Hyperspectral (or any multi-band) input: one GeoTIFF holding all bands of a scene.

Sentinel-2 scenes come as one file per band (readers.stacked_scene); hyperspectral products
(EnMAP, PRISMA, HySpex, AVIRIS clips, HYPERVIEW-like patches) usually come as one multi-band
GeoTIFF with tens to hundreds of bands. ``geotiff_source(path)`` opens such a file as a
:class:`~eossl.data.sources.SceneSource`, so pretraining, the probes and the regression task
use it like the sample scene. Band names come from the file's band descriptions, else from
the given wavelengths (``"450.0nm"``), else ``band001 ...``.

On the command line: ``EOSSL_HYPERSPECTRAL=/path/cube.tif eossl pretrain --method spectral
--data hyperspectral`` (a registered source name cannot carry a path, so the path travels in
the environment; ``EOSSL_HYPERSPECTRAL_LABELS`` or ``--labels`` give optional polygons).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import BandError, ConfigError, DataError
from .readers import SceneStack, _open
from .sources import SceneSource, register_source

ENV_PATH = "EOSSL_HYPERSPECTRAL"
ENV_LABELS = "EOSSL_HYPERSPECTRAL_LABELS"


def band_names_of(path: str | os.PathLike, band_names: Sequence[str] | None = None,
                  wavelengths: Sequence[float] | None = None) -> list[str]:
    """Band names for a multi-band raster: given names, else the file's band descriptions
    (when every band has a distinct one), else names from wavelengths, else band001..."""
    path = Path(path)
    with _open(path) as src:
        count, descriptions = src.count, list(src.descriptions or [])
    if band_names is not None:
        names = [str(b) for b in band_names]
        if len(names) != count:
            raise BandError(f"{path}: holds {count} bands but {len(names)} band names were "
                            "given; give one name per band")
    elif wavelengths is not None:
        if len(wavelengths) != count:
            raise BandError(f"{path}: holds {count} bands but {len(wavelengths)} wavelengths "
                            "were given; give one centre wavelength (nm) per band")
        names = [f"{float(w):.1f}nm" for w in wavelengths]
    elif descriptions and all(descriptions) and len(set(descriptions)) == count:
        names = [str(d) for d in descriptions]
    else:
        width = max(3, len(str(count)))
        names = [f"band{i + 1:0{width}d}" for i in range(count)]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise BandError(f"{path}: band names are not unique ({', '.join(dup[:5])}); give "
                        "band_names or wavelengths explicitly")
    return names


def geotiff_source(path: str | os.PathLike, band_names: Sequence[str] | None = None, *,
                   wavelengths: Sequence[float] | None = None, bands: Sequence[str] | None = None,
                   labels: str | os.PathLike | None = None,
                   name: str | None = None) -> SceneSource:
    """A SceneSource over one multi-band GeoTIFF (any band count).

    ``band_names`` / ``wavelengths`` name the file's bands (see :func:`band_names_of`);
    ``bands`` restricts and orders them (the file is then re-stacked in memory on read);
    ``labels`` is an optional polygon file with an ``fclass`` column for the probes.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; expected a multi-band GeoTIFF")
    names = band_names_of(path, band_names, wavelengths)
    with _open(path) as src:
        nodata = src.nodata
    stack = SceneStack(path, names, sensor="hyperspectral", nodata=nodata)
    if bands is not None:
        stack = _subset(stack, bands)
    return SceneSource(name or path.stem, [stack], Path(labels) if labels else None)


def _subset(stack: SceneStack, bands) -> SceneStack:
    """A SceneStack restricted to ``bands`` (names, or "a,b,c"), held in memory."""
    from ..bands import band_indices

    if isinstance(bands, str):
        bands = [b.strip() for b in bands.split(",") if b.strip()]
    idx = band_indices(stack.bands, bands, source=str(stack.path))
    arr = stack.load()[idx]
    sub = SceneStack.__new__(SceneStack)  # skip the file-count check: the data are in memory
    sub.__dict__.update(stack.__dict__)
    sub.bands = [stack.bands[i] for i in idx]
    sub._array = arr
    return sub


@register_source("hyperspectral")
def hyperspectral(cache=None, bands=None) -> SceneSource:
    """``--data hyperspectral``: the GeoTIFF named by $EOSSL_HYPERSPECTRAL."""
    path = os.environ.get(ENV_PATH)
    if not path:
        raise ConfigError(f"--data hyperspectral reads the GeoTIFF path from ${ENV_PATH}; set "
                          f"it, e.g. {ENV_PATH}=/data/cube.tif")
    return geotiff_source(path, bands=bands, labels=os.environ.get(ENV_LABELS) or None,
                          name="hyperspectral")
