"""SeCo collection against a real STAC API server (rustac serve) on loopback.

The fixture writes the real Landsat time series (data.md sample 2) as cloud-optimised GeoTIFFs,
describes each acquisition as a STAC item (real date, footprint, eo:cloud_cover from its Fmask)
and serves them with ``rustac serve`` (memory backend: no Filter/Query extension, so the
collector must filter cloud cover on the client). Nothing is mocked.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from eossl.data.collect import CollectConfig, CollectError, StacSearcher, collect
from eossl.data.shards import ShardCorpus

RUSTAC = Path(sys.executable).parent / "rustac"
pytestmark = pytest.mark.skipif(not RUSTAC.exists(), reason="rustac (STAC API server) missing")
COLLECTION = "landsat-sample"


def build_catalog(landsat_dir: Path, out: Path) -> dict:
    """COGs + a FeatureCollection of items for every acquisition of the Landsat sample."""
    import rasterio
    from rasterio.warp import transform_bounds, transform_geom

    from eossl.data.timeseries import parse_landsat_scene_id

    out.mkdir(parents=True, exist_ok=True)
    feats, clouds = [], {}
    for folder in sorted(p for p in landsat_dir.iterdir() if p.is_dir()):
        sid = folder.name
        info = parse_landsat_scene_id(sid)
        assets = {}
        for b in ("b3", "b4", "b5", "fmask"):
            src = folder / f"{sid}_{b}.tif"
            dst = out / f"{sid}_{b}.tif"
            with rasterio.open(src) as ds:
                a, prof = ds.read(), ds.profile
                bounds, crs = ds.bounds, ds.crs
            prof.update(driver="COG", blocksize=128, compress="deflate")
            for k in ("blockxsize", "blockysize", "tiled", "interleave"):
                prof.pop(k, None)
            with rasterio.open(dst, "w", **prof) as ds:
                ds.write(a)
            if b == "fmask":
                fm = a[0]
            assets[b] = {"href": str(dst), "type": "image/tiff; application=geotiff; "
                         "profile=cloud-optimized", "roles": ["data"]}
        valid = fm != 255
        cloud = float((fm[valid] == 4).mean() * 100) if valid.any() else 100.0
        clouds[sid] = cloud
        geom = transform_geom(crs, "EPSG:4326", {"type": "Polygon", "coordinates": [[
            (bounds.left, bounds.bottom), (bounds.right, bounds.bottom),
            (bounds.right, bounds.top), (bounds.left, bounds.top),
            (bounds.left, bounds.bottom)]]})
        feats.append({
            "type": "Feature", "stac_version": "1.0.0", "id": sid, "collection": COLLECTION,
            "geometry": geom, "bbox": list(transform_bounds(crs, "EPSG:4326", *bounds)),
            "properties": {"datetime": f"{info['date'].isoformat()}T17:30:00Z",
                           "eo:cloud_cover": round(cloud, 2), "platform": info["sensor"]},
            "assets": assets, "links": [],
            "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json"]})
    (out / "items.json").write_text(json.dumps({"type": "FeatureCollection",
                                                "features": feats}))
    lon0, lat0 = np.mean(np.asarray(feats[0]["geometry"]["coordinates"][0])[:4], axis=0)
    return {"items": out / "items.json", "clouds": clouds, "lat": float(lat0),
            "lon": float(lon0), "features": feats}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``rustac serve`` on a loopback port; start/stop so a test can make it fail."""

    def __init__(self, items: Path, port: int | None = None) -> None:
        self.items, self.port, self.proc = items, port or free_port(), None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        self.proc = subprocess.Popen(
            [str(RUSTAC), "serve", str(self.items), "--create-collections",
             "--use-duckdb", "false", "--addr", f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import requests

        for _ in range(200):
            try:
                if requests.get(self.url + "/collections", timeout=1).ok:
                    return self
            except requests.ConnectionError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError("rustac serve exited at start-up")
            time.sleep(0.05)
        raise RuntimeError("rustac serve did not answer")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture(scope="module")
def catalog(landsat_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("stac")
    cat = build_catalog(Path(landsat_dir), root / "cogs")
    cities = root / "cities.csv"
    cities.write_text("name,country,lat,lon,population\n"
                      f"Sample site,US,{cat['lat']},{cat['lon']},1000\n")
    cat["cities"] = cities
    return cat


@pytest.fixture(scope="module")
def server(catalog):
    s = Server(catalog["items"]).start()
    yield s
    s.stop()


class FaultProxy:
    """A reverse proxy in front of the real server, as a gateway in front of a public API:
    it answers the next ``/search`` requests with the HTTP statuses queued in ``fail`` (then
    forwards again) and forwards everything else unchanged, rewriting the server's absolute
    links to its own address so that the client keeps coming through it."""

    def __init__(self, upstream: str) -> None:
        self.upstream, self.fail, self.injected = upstream, [], []
        self.httpd = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> "FaultProxy":
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        import requests

        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                if self.path.startswith("/search") and proxy.fail:
                    code = proxy.fail.pop(0)
                    proxy.injected.append(code)
                    return self._send(code, json.dumps({"code": str(code), "description":
                                                        "injected by the test proxy"}).encode(),
                                      "application/json")
                r = requests.request(self.command, proxy.upstream + self.path, data=body,
                                     headers={k: v for k, v in self.headers.items()
                                              if k.lower() in ("content-type", "accept")},
                                     timeout=30)
                content = r.content.replace(proxy.upstream.encode(), proxy.url.encode())
                self._send(r.status_code, content,
                           r.headers.get("Content-Type", "application/json"))

            do_GET = do_POST = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()


@pytest.fixture
def proxy(server):
    p = FaultProxy(server.url).start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def reference(server, catalog, tmp_path_factory):
    """Five locations collected without faults: what every faulty run must end up with."""
    out = tmp_path_factory.mktemp("reference") / "ref"
    collect(config(server.url, catalog["cities"]), out, locations=5, progress=False)
    return read_all(out)


def assert_same_corpus(path, ref: dict) -> None:
    got = read_all(path)
    keys = [ShardCorpus(path)[i]["key"] for i in range(len(got))]
    assert len(keys) == len(set(keys))  # no duplicates
    assert got.keys() == ref.keys()     # no gaps
    for k in ref:
        assert np.array_equal(got[k]["image"], ref[k]["image"])
        assert got[k]["info"]["scenes"] == ref[k]["info"]["scenes"]


def assert_valid_partial(path, next_index: int) -> None:
    meta = json.loads((path / "eossl.json").read_text())
    assert meta["progress"]["next_index"] == next_index
    assert len(read_all(path)) == meta["count"] == meta["progress"]["collected"]


def config(url: str, cities: Path, **kw) -> CollectConfig:
    """The paper's procedure sized to the sample: 16 px (480 m) patches at 30 m in a 1.8 km
    scene, and five dates 16 days apart (one Landsat revisit) rather than 12 weeks, because the
    sample has no scene between November and March, so a year-long schedule never completes
    (test_paper_schedule_resamples_then_gives_up shows that). Up to a quarter of a patch may be
    masked: Landsat 7's scan-line-corrector failure leaves fill stripes over ~20% of its scenes."""
    base = dict(stac_url=url, collection=COLLECTION, assets=["b3", "b4", "b5"],
                band_names=["red", "nir", "swir1"], mask_asset="fmask", mask_bad=[2, 4, 255],
                patch_px=16, resolution=30.0, sigma_km=0.2, reference_date="2011-10-15",
                spacing_days=16, offset_days=150, max_patch_bad=0.25,
                max_tries=60, cities=str(cities), commit_every=2, retries=3, backoff_s=0.01,
                timeout_s=5, sensor="landsat")
    base.update(kw)
    return CollectConfig(**base)


def read_all(path) -> dict:
    c = ShardCorpus(path)
    return {c[i]["key"]: c[i] for i in range(len(c))}


def test_collects_real_series_with_client_side_cloud_filter(server, catalog, tmp_path):
    from pystac_client import Client
    from pystac_client.conformance import ConformanceClasses

    client = Client.open(server.url)
    assert not client.conforms_to(ConformanceClasses.FILTER)  # memory backend: no CQL2
    cfg = config(server.url, catalog["cities"])
    assert StacSearcher(cfg).filter_mode == "client"

    prog = collect(cfg, tmp_path / "c", locations=4, progress=False)
    assert prog["filter_mode"] == "client" and prog["next_index"] == 4
    got = read_all(tmp_path / "c")
    assert len(got) == prog["collected"] >= 3
    for s in got.values():
        assert s["image"].shape == (5, 3, 16, 16) and s["image"].dtype == np.int16
        assert s["mask"].shape == (5, 16, 16)
        bad = np.isin(s["mask"], [2, 4, 255]).reshape(5, -1).mean(1)
        assert (bad <= 0.25).all()  # cloud, shadow and fill flagged 255, within the limit
        dates = [np.datetime64(d) for d in s["info"]["dates"]]
        assert all(int((a - b).astype(int)) == 16 for a, b in zip(dates, dates[1:]))
        for sc, d in zip(s["info"]["scenes"], dates):
            assert sc["cloud_cover"] < 10.0  # scene filter applied on the client
            assert abs(int((np.datetime64(sc["datetime"][:10]) - d).astype(int))) <= 7
        valid = s["mask"] != 255  # every unmasked pixel holds real reflectance, not fill
        assert (s["image"].transpose(1, 0, 2, 3)[:, valid] > -9999).all()
    # the catalog holds cloudier scenes the filter had to drop
    assert sum(c >= 10 for c in catalog["clouds"].values()) > 10


def test_seeded_runs_are_identical_and_seeds_differ(server, catalog, tmp_path):
    cfg = config(server.url, catalog["cities"])
    collect(cfg, tmp_path / "a", locations=3, progress=False)
    collect(cfg, tmp_path / "b", locations=3, progress=False)
    a, b = read_all(tmp_path / "a"), read_all(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k]["image"], b[k]["image"])
        assert a[k]["info"] == b[k]["info"]
    collect(config(server.url, catalog["cities"], seed=1), tmp_path / "s1", locations=3,
            progress=False)
    c = read_all(tmp_path / "s1")
    assert [v["info"]["dates"] for v in c.values()] != [v["info"]["dates"] for v in a.values()]


def test_resume_after_interruption_has_no_duplicates_or_gaps(server, catalog, tmp_path):
    cfg = config(server.url, catalog["cities"])
    collect(cfg, tmp_path / "ref", locations=5, progress=False)
    ref = read_all(tmp_path / "ref")

    def interrupt(i, sample):
        if i == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        collect(cfg, tmp_path / "r", locations=5, progress=False, on_location=interrupt)
    part = read_all(tmp_path / "r")
    assert set(part) <= set(ref) and 0 < len(part) < len(ref)
    # a stray chunk from a commit that died before eossl.json was written is ignored
    (tmp_path / "r" / "chunk-999999.bin").write_bytes(b"partial")
    prog = collect(cfg, tmp_path / "r", locations=5, progress=False)
    assert prog["next_index"] == 5
    got = read_all(tmp_path / "r")
    keys = [ShardCorpus(tmp_path / "r")[i]["key"] for i in range(len(got))]
    assert len(keys) == len(set(keys))  # no duplicates
    assert got.keys() == ref.keys()     # no gaps
    for k in ref:
        assert np.array_equal(got[k]["image"], ref[k]["image"])
    assert not (tmp_path / "r" / "chunk-999999.bin").exists()
    # other settings cannot be appended to this corpus
    from eossl.errors import ConfigError

    with pytest.raises(ConfigError, match="seed"):
        collect(config(server.url, catalog["cities"], seed=7), tmp_path / "r", locations=6,
                progress=False)


def test_server_failure_is_retried_then_clear_error_and_resumable(catalog, tmp_path):
    srv = Server(catalog["items"]).start()
    cfg = config(srv.url, catalog["cities"])
    sleeps = []

    def kill_after_first(i, sample):
        if i == 1:
            srv.stop()  # the API goes away mid-collection

    try:
        with pytest.raises(CollectError) as e:
            collect(cfg, tmp_path / "f", locations=5, progress=False,
                    on_location=kill_after_first, sleep=sleeps.append)
        msg = str(e.value)
        assert srv.url in msg and "failed 3 times" in msg and "resume" in msg
        assert sleeps == [0.01, 0.02]  # exponential backoff between the tries
        part = read_all(tmp_path / "f")  # the corpus so far is valid
        meta = json.loads((tmp_path / "f" / "eossl.json").read_text())
        assert meta["progress"]["next_index"] == 2 and len(part) == meta["count"]

        srv.start()  # same port: the API is back
        collect(cfg, tmp_path / "f", locations=5, progress=False)
        collect(cfg, tmp_path / "ref", locations=5, progress=False)
        assert read_all(tmp_path / "f").keys() == read_all(tmp_path / "ref").keys()
    finally:
        srv.stop()


def test_search_parameters_follow_conformance(server, catalog):
    s = StacSearcher(config(server.url, catalog["cities"]))
    import datetime as dt

    a, b = dt.datetime(2010, 1, 1), dt.datetime(2010, 1, 15)
    assert "filter" not in s.search_kwargs([0, 0, 1, 1], a, b)
    s.filter_mode = "filter"  # what Earth Search / Planetary Computer get
    kw = s.search_kwargs([0, 0, 1, 1], a, b)
    assert kw["filter"]["args"][1] == 10.0 and kw["filter_lang"] == "cql2-json"
    s.filter_mode = "query"
    assert s.search_kwargs([0, 0, 1, 1], a, b)["query"] == {"eo:cloud_cover": {"lt": 10.0}}


def test_bad_asset_name_is_named(server, catalog, tmp_path):
    from eossl.errors import DataError

    cfg = config(server.url, catalog["cities"], assets=["b3", "B99"], band_names=None)
    with pytest.raises(DataError, match="B99"):
        collect(cfg, tmp_path / "x", locations=1, progress=False)


def test_paper_schedule_resamples_then_gives_up(server, catalog, tmp_path):
    # 5 dates 12 weeks apart always reach the sample's winter gap: every attempt is redrawn
    # and the location is recorded as failed, not silently dropped.
    cfg = config(server.url, catalog["cities"], spacing_days=84, offset_days=365, max_tries=3)
    prog = collect(cfg, tmp_path / "p", locations=2, progress=False)
    assert prog["failed"] == [0, 1] and prog["collected"] == 0 and prog["next_index"] == 2


def test_transient_http_errors_are_retried_with_backoff(proxy, catalog, reference, tmp_path):
    """503 then 429 from the API in the middle of a collection: retried after 1x and 2x the
    backoff, and the corpus is exactly the fault-free one."""
    cfg = config(proxy.url, catalog["cities"])
    sleeps = []

    def inject(i, sample):
        if i == 1:
            proxy.fail += [503, 429]

    prog = collect(cfg, tmp_path / "t", locations=5, progress=False, on_location=inject,
                   sleep=sleeps.append)
    assert proxy.injected == [503, 429] and sleeps == [0.01, 0.02]
    assert prog["next_index"] == 5
    assert_same_corpus(tmp_path / "t", reference)


def test_persistent_http_error_is_named_and_the_corpus_resumes(proxy, catalog, reference,
                                                                tmp_path):
    cfg = config(proxy.url, catalog["cities"])
    sleeps = []

    def inject(i, sample):
        if i == 1:
            proxy.fail += [500] * 3  # as many as the retries: the API stays down

    with pytest.raises(CollectError) as e:
        collect(cfg, tmp_path / "p", locations=5, progress=False, on_location=inject,
                sleep=sleeps.append)
    msg = str(e.value)
    assert "HTTP 500" in msg and "failed 3 times" in msg and proxy.url in msg
    assert "next index 2" in msg and "resume" in msg
    assert sleeps == [0.01, 0.02]
    assert_valid_partial(tmp_path / "p", 2)
    collect(cfg, tmp_path / "p", locations=5, progress=False)  # the API is back: resume
    assert_same_corpus(tmp_path / "p", reference)


def test_refused_request_is_not_retried(proxy, catalog, tmp_path):
    """A 400 is the request's fault: no retry (retrying cannot help), a clear error at once,
    and the locations finished before it stay in a valid corpus."""
    cfg = config(proxy.url, catalog["cities"])
    sleeps = []

    def inject(i, sample):
        if i == 0:
            proxy.fail.append(400)

    with pytest.raises(CollectError, match="HTTP 400.*not retried"):
        collect(cfg, tmp_path / "r", locations=3, progress=False, on_location=inject,
                sleep=sleeps.append)
    assert sleeps == [] and proxy.injected == [400]
    assert_valid_partial(tmp_path / "r", 1)


def test_server_that_stops_answering_times_out_then_recovers(catalog, reference, tmp_path):
    """The real server frozen (SIGSTOP: connections are accepted, nothing is answered), so
    requests run into the client timeout. Frozen briefly: the retry after the first backoff
    succeeds and nothing is lost. Frozen for good: a clear timeout error, a valid corpus, and a
    rerun after the server thaws completes it without duplicates or gaps."""
    srv = Server(catalog["items"]).start()
    cfg = config(srv.url, catalog["cities"], timeout_s=0.5)
    try:
        sleeps = []

        def freeze(i, sample):
            if i == 1:
                srv.proc.send_signal(signal.SIGSTOP)

        def thaw_after_backoff(seconds):
            sleeps.append(seconds)
            srv.proc.send_signal(signal.SIGCONT)

        collect(cfg, tmp_path / "brief", locations=5, progress=False, on_location=freeze,
                sleep=thaw_after_backoff)
        assert sleeps == [0.01]  # one timeout, one retry
        assert_same_corpus(tmp_path / "brief", reference)

        sleeps.clear()
        with pytest.raises(CollectError) as e:
            collect(cfg, tmp_path / "frozen", locations=5, progress=False,
                    on_location=freeze, sleep=sleeps.append)
        msg = str(e.value)
        assert "timed out" in msg and "failed 3 times" in msg and "resume" in msg
        assert sleeps == [0.01, 0.02]
        assert_valid_partial(tmp_path / "frozen", 2)
        srv.proc.send_signal(signal.SIGCONT)
        collect(cfg, tmp_path / "frozen", locations=5, progress=False)
        assert_same_corpus(tmp_path / "frozen", reference)
    finally:
        srv.proc.send_signal(signal.SIGCONT)
        srv.stop()


def test_cli_continues_a_collection_only_with_resume(tmp_path, capsys):
    """Like pretrain's run folders: a folder holding a collection is continued only when asked,
    and --resume on a folder without one is refused (neither needs the server)."""
    from eossl.cli import main

    out = tmp_path / "corpus"
    out.mkdir()
    (out / "eossl.json").write_text(json.dumps({"progress": {"collected": 3, "next_index": 4}}))
    args = ["collect", "--stac-url", "http://127.0.0.1:9", "--collection", "c", "--assets",
            "b3", "--locations", "5", "--no-progress", "--out"]
    assert main(args + [str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(out) in err and "3 locations collected" in err
    assert "pass --resume" in err
    empty = tmp_path / "empty"
    assert main(args + [str(empty), "--resume"]) == 2
    assert "holds no collection to continue" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(args + [str(other)]) == 2
    assert "is not a collection" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "mine"
