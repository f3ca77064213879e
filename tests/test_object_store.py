"""Training from an object store, for real over HTTP: a corpus made by ``eossl data pack`` from
the sample scene is uploaded to an S3 API server on 127.0.0.1 (moto's standalone server,
started here on a free port) and ``eossl pretrain --data s3://...`` streams it through
LitData's S3 downloader, with the endpoint and credentials taken from the standard AWS
environment variables, as docs/scale.md tells users to set them."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import zlib
from pathlib import Path

import pytest

from eossl.cli import main
from eossl.data import shards

BUCKET = "eossl-test"


def _start_server():
    """moto's S3 API server on a free port of 127.0.0.1; (server, endpoint URL)."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def s3(sample_cache, tmp_path_factory):
    """(corpus URL, local corpus folder), with the AWS environment pointing at the server."""
    server, endpoint = _start_server()
    mp = pytest.MonkeyPatch()
    mp.setenv("AWS_ENDPOINT_URL", endpoint)
    mp.setenv("AWS_ACCESS_KEY_ID", "eossl")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "eossl")
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mp.setenv("AWS_MAX_ATTEMPTS", "1")  # a stopped server fails the first try, not the fifth
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE",
                "AWS_SHARED_CREDENTIALS_FILE"):
        mp.delenv(key, raising=False)
    try:
        corpus = tmp_path_factory.mktemp("s3") / "bb"
        # small chunks (about 9 chips each), so a run fetches them as it goes
        assert main(["--cache", str(sample_cache), "data", "pack", "--data", "brandenburg", "--out",
                     str(corpus), "--chunk-bytes", "1MB"]) == 0
        import boto3

        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        for f in sorted(corpus.iterdir()):  # what `aws s3 sync corpus s3://bucket/bb` does
            client.upload_file(str(f), BUCKET, f"bb/{f.name}")
        yield f"s3://{BUCKET}/bb", corpus
    finally:
        server.stop()
        mp.undo()


def _args(url, cache, *extra):
    return ["pretrain", "--data", url, "--method", "simclr", "--batch-size", "8",
            "--crop-size", "32", "--accelerator", "cpu", "--no-progress",
            "--set", f"data.chunk_cache_dir={cache}", "--set", "data.chunk_cache_size=8MB",
            "--set", "data.shuffle_window=16", *extra]


def _cache_is_consistent(cache: Path, corpus: Path) -> list[str]:
    """The chunk files in the cache; each must have the size and CRC-32 eossl.json records,
    and nothing half-fetched may be left."""
    meta = {c["filename"]: c for c in json.loads((corpus / "eossl.json").read_text())["chunks"]}
    names = sorted(f.name for f in cache.iterdir())
    assert all(n in meta for n in names), names  # no partial downloads, no strays
    for n in names:
        data = (cache / n).read_bytes()
        assert len(data) == meta[n]["bytes"] and zlib.crc32(data) == meta[n]["crc32"], n
    return names


def test_pretrain_streams_from_s3_and_resumes(s3, tmp_path):
    """Train 2 steps from s3://, then ``--resume`` the run to 4 steps with an emptied chunk
    cache: the resumed run fetches what it needs again. The cache stays within its size limit
    and holds only whole, verified chunks. (That a resumed stream continues exactly where it
    stopped is shown on a local corpus in tests/test_shards.py; the reader is the same.)"""
    url, corpus = s3
    cache, run = tmp_path / "cache", tmp_path / "run"
    assert main(_args(url, cache, "--max-steps", "2", "--out", str(run))) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["data"] == url
    names = _cache_is_consistent(cache, corpus)
    assert names and sum((cache / n).stat().st_size for n in names) <= 8 * 1000 ** 2
    shutil.rmtree(cache)
    assert main(_args(url, cache, "--max-steps", "4", "--out", str(run), "--resume")) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 4
    assert _cache_is_consistent(cache, corpus)  # fetched again


def test_corpus_url_that_does_not_exist(s3, tmp_path, capsys):
    url, _ = s3
    for missing in (url + "-missing", "s3://no-such-bucket-eossl/bb"):
        code = main(_args(missing, tmp_path / "cache", "--max-steps", "1", "--out",
                          str(tmp_path / "run")))
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert f"{missing}/eossl.json: cannot fetch" in err and "AWS_ENDPOINT_URL" in err
        assert not (tmp_path / "run").exists()


def test_server_that_stops_mid_run(s3, tmp_path, capsys, monkeypatch):
    """The server goes away after the run has fetched its first chunks and trained: the run
    stops with one error line (exit 2) naming the chunk it could not fetch, and the local
    chunk cache holds only whole, verified chunks (the interrupted fetch left nothing)."""
    url, corpus = s3
    # a second server process-wide state (moto keeps the buckets in this process), so that
    # stopping it leaves the module's server to the other tests
    server, endpoint = _start_server()
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    fetched = []
    real = shards.ChunkCache._download

    def download(self, chunk):
        if len(fetched) == 4:
            server.stop()  # the store goes away during training
        fetched.append(chunk["filename"])
        return real(self, chunk)

    monkeypatch.setattr(shards.ChunkCache, "_download", download)
    cache = tmp_path / "cache"
    code = main(_args(url, cache, "--max-steps", "30", "--out", str(tmp_path / "run"),
                      "--set", "trainer.checkpoint_every_n_steps=2"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"{url}/{fetched[4]}: cannot fetch" in err
    # the first window's chunks (16 samples: 2-3 chunks) fed two steps before the stop
    assert (tmp_path / "run" / "checkpoints" / "step000002.ckpt").is_file()
    assert sorted(_cache_is_consistent(cache, corpus)) == sorted(fetched[:4])
