"""Sensor band registry: names, centre wavelengths, resolutions and roles.

Code never refers to channels by index. It asks the registry which bands are visible red,
green, blue, NIR, SWIR or SAR, and selects or reorders arrays by band name. That keeps every
method correct for any band list (L1C with 13 bands, L2A with 12, Landsat, SAR, or a subset).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import BandError

# Roles: what a band is for. Several methods split inputs by role (colorization hides the
# visible bands, RS-BYOL draws optical vs radar bands), so roles are part of the registry.
ROLES = (
    "coastal", "blue", "green", "red", "red-edge", "nir", "water-vapour", "cirrus", "swir",
    "thermal", "pan", "sar",
)


@dataclass(frozen=True)
class Band:
    """One spectral (or radar) band of a sensor."""

    name: str
    role: str
    resolution_m: float
    wavelength_nm: float | None = None  # centre wavelength; None for SAR polarisations
    description: str = ""

    @property
    def is_visible(self) -> bool:
        return self.role in ("blue", "green", "red")


@dataclass(frozen=True)
class Sensor:
    """An ordered set of bands, in the order the sensor's products list them."""

    name: str
    bands: tuple[Band, ...]
    description: str = ""

    @property
    def band_names(self) -> list[str]:
        return [b.name for b in self.bands]

    def band(self, name: str) -> Band:
        i = _match(name, self.band_names)
        if i is not None:
            return self.bands[i]
        raise BandError(
            f"unknown band {name!r} for sensor {self.name}; expected one of "
            f"{', '.join(self.band_names)}"
        )

    def by_role(self, *roles: str) -> list[str]:
        """Band names with any of the given roles, in sensor order."""
        for r in roles:
            if r not in ROLES:
                raise BandError(f"unknown band role {r!r}; expected one of {', '.join(ROLES)}")
        return [b.name for b in self.bands if b.role in roles]

    def rgb(self) -> list[str]:
        """The visible red, green, blue band names in R, G, B order."""
        out = []
        for role in ("red", "green", "blue"):
            names = self.by_role(role)
            if not names:
                raise BandError(f"sensor {self.name} has no {role} band")
            out.append(names[0])
        return out


def _match(name: str, candidates: Sequence[str]) -> int | None:
    """Index of ``name`` among ``candidates``: exact, then case-insensitive, then with
    Sentinel-2 zero padding ('B4' or 'b4' for 'B04'). Exact wins, so Landsat's 'b3' stays 'b3'."""
    n = name.strip()
    if n in candidates:
        return list(candidates).index(n)
    upper = [c.upper() for c in candidates]
    u = n.upper()
    if u in upper:
        return upper.index(u)
    if len(u) == 2 and u[0] == "B" and u[1].isdigit() and f"B0{u[1]}" in upper:
        return upper.index(f"B0{u[1]}")
    return None


_S2 = [
    # name, role, resolution, centre wavelength (nm, S2A MSI), description
    ("B01", "coastal", 60, 442.7, "coastal aerosol"),
    ("B02", "blue", 10, 492.4, "blue"),
    ("B03", "green", 10, 559.8, "green"),
    ("B04", "red", 10, 664.6, "red"),
    ("B05", "red-edge", 20, 704.1, "vegetation red edge 1"),
    ("B06", "red-edge", 20, 740.5, "vegetation red edge 2"),
    ("B07", "red-edge", 20, 782.8, "vegetation red edge 3"),
    ("B08", "nir", 10, 832.8, "near infrared"),
    ("B8A", "nir", 20, 864.7, "narrow near infrared"),
    ("B09", "water-vapour", 60, 945.1, "water vapour"),
    ("B10", "cirrus", 60, 1373.5, "SWIR cirrus"),
    ("B11", "swir", 20, 1613.7, "shortwave infrared 1"),
    ("B12", "swir", 20, 2202.4, "shortwave infrared 2"),
]

SENTINEL2_L1C = Sensor(
    "sentinel2-l1c",
    tuple(Band(n, r, res, wl, d) for n, r, res, wl, d in _S2),
    "Sentinel-2 MSI Level-1C top-of-atmosphere reflectance (13 bands)",
)
SENTINEL2_L2A = Sensor(
    "sentinel2-l2a",
    tuple(Band(n, r, res, wl, d) for n, r, res, wl, d in _S2 if n != "B10"),
    "Sentinel-2 MSI Level-2A surface reflectance (12 bands, no cirrus B10)",
)
SENTINEL1 = Sensor(
    "sentinel1",
    (
        Band("VV", "sar", 10, None, "C-band vertical transmit, vertical receive"),
        Band("VH", "sar", 10, None, "C-band vertical transmit, horizontal receive"),
    ),
    "Sentinel-1 C-band SAR, GRD, dual polarisation (backscatter in dB)",
)
LANDSAT_TM = Sensor(  # Landsat 4-5 Thematic Mapper
    "landsat5-tm",
    (
        Band("b1", "blue", 30, 485.0, "blue"),
        Band("b2", "green", 30, 560.0, "green"),
        Band("b3", "red", 30, 660.0, "red"),
        Band("b4", "nir", 30, 830.0, "near infrared"),
        Band("b5", "swir", 30, 1650.0, "shortwave infrared 1"),
        Band("b6", "thermal", 120, 11450.0, "thermal infrared"),
        Band("b7", "swir", 30, 2215.0, "shortwave infrared 2"),
    ),
    "Landsat 4-5 TM (band numbers as in USGS product file names)",
)
LANDSAT_ETM = Sensor(  # Landsat 7 ETM+: TM bands plus a panchromatic band
    "landsat7-etm",
    (
        Band("b1", "blue", 30, 485.0, "blue"),
        Band("b2", "green", 30, 560.0, "green"),
        Band("b3", "red", 30, 660.0, "red"),
        Band("b4", "nir", 30, 835.0, "near infrared"),
        Band("b5", "swir", 30, 1650.0, "shortwave infrared 1"),
        Band("b6", "thermal", 60, 11450.0, "thermal infrared"),
        Band("b7", "swir", 30, 2220.0, "shortwave infrared 2"),
        Band("b8", "pan", 15, 710.0, "panchromatic"),
    ),
    "Landsat 7 ETM+",
)
LANDSAT_OLI = Sensor(  # Landsat 8-9 OLI/TIRS
    "landsat8-oli",
    (
        Band("b1", "coastal", 30, 443.0, "coastal aerosol"),
        Band("b2", "blue", 30, 482.0, "blue"),
        Band("b3", "green", 30, 561.5, "green"),
        Band("b4", "red", 30, 654.5, "red"),
        Band("b5", "nir", 30, 865.0, "near infrared"),
        Band("b6", "swir", 30, 1608.5, "shortwave infrared 1"),
        Band("b7", "swir", 30, 2200.5, "shortwave infrared 2"),
        Band("b8", "pan", 15, 589.5, "panchromatic"),
        Band("b9", "cirrus", 30, 1373.5, "cirrus"),
        Band("b10", "thermal", 100, 10895.0, "thermal infrared 1"),
        Band("b11", "thermal", 100, 12005.0, "thermal infrared 2"),
    ),
    "Landsat 8-9 OLI/TIRS",
)

SENSORS: dict[str, Sensor] = {
    s.name: s
    for s in (SENTINEL2_L1C, SENTINEL2_L2A, SENTINEL1, LANDSAT_TM, LANDSAT_ETM, LANDSAT_OLI)
}


def get_sensor(name: str | Sensor) -> Sensor:
    """Look a sensor up by name (``sentinel2-l1c``, ``sentinel1``, ...)."""
    if isinstance(name, Sensor):
        return name
    try:
        return SENSORS[name]
    except KeyError:
        raise BandError(
            f"unknown sensor {name!r}; expected one of {', '.join(SENSORS)}"
        ) from None


def band_indices(available: Sequence[str], wanted: Iterable[str], *, source: str = "the data") -> list[int]:
    """Indices into ``available`` of the bands named in ``wanted``, in the order of ``wanted``.

    Raises :class:`BandError` naming the first missing band and listing what is available.
    """
    out = []
    for w in wanted:
        i = _match(w, available)
        if i is None:
            raise BandError(
                f"band {w!r} is not in {source}; available bands: {', '.join(available)}"
            )
        out.append(i)
    return out


def select_bands(array, available: Sequence[str], wanted: Sequence[str], *, axis: int = 0,
                 source: str = "the data"):
    """Select and reorder the band axis of a numpy array or torch tensor by band name."""
    idx = band_indices(available, wanted, source=source)
    if hasattr(array, "index_select"):  # torch tensor
        import torch

        return array.index_select(axis, torch.as_tensor(idx, device=array.device))
    import numpy as np

    return np.take(array, idx, axis=axis)


def wavelengths(sensor: str | Sensor, names: Sequence[str]) -> list[float | None]:
    s = get_sensor(sensor)
    return [s.band(n).wavelength_nm for n in names]


def find_sensor(names: Sequence[str]) -> Sensor | None:
    """The first registered sensor that has every band in ``names`` (exact names first, so
    Landsat's lower-case 'b3' is not mistaken for Sentinel-2's 'B03'), or None."""
    for exact in (True, False):
        for s in SENSORS.values():
            if all((n in s.band_names) if exact else _match(n, s.band_names) is not None
                   for n in names):
                return s
    return None


def equivalent_bands(wanted: Sequence[str], available: Sequence[str]) -> list[str]:
    """For each band in ``wanted``, the band of ``available`` that stands in for it.

    Same name first; otherwise the band with the same role and the nearest centre wavelength
    on the other sensor (Landsat TM b3/b4/b5 -> Sentinel-2 B04/B08/B11), so an encoder
    pretrained on one sensor can be evaluated on another. Raises BandError naming the band
    that has no counterpart.
    """
    src, dst = find_sensor(wanted), find_sensor(available)
    out = []
    for w in wanted:
        if w in available:
            out.append(w)
            continue
        if src is None or dst is None or src is dst:
            i = _match(w, available)  # loose spelling ('B4', 'b8a') on the same sensor
            if i is None:
                raise BandError(f"band {w!r} is not in the data (bands: "
                                f"{', '.join(available)})")
            out.append(available[i])
            continue
        b = src.band(w)
        cands = [dst.band(a) for a in available if dst.band(a).role == b.role]
        if not cands:
            raise BandError(f"band {w!r} ({src.name}, {b.role}) has no {b.role} counterpart "
                            f"among the data's bands {', '.join(available)}")
        if b.wavelength_nm is not None:
            cands.sort(key=lambda c: abs((c.wavelength_nm or 0.0) - b.wavelength_nm))
        out.append(next(a for a in available if dst.band(a).name == cands[0].name))
    return out
