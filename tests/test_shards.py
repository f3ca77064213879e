"""Shard corpora (LitData) packed from the real samples: round trip, rank split, corruption."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eossl.data import shards
from eossl.data.shards import ShardCorpus, ShardStream, ShardWriter
from eossl.errors import DataError, OutputExistsError


@pytest.fixture(scope="module")
def packed(brandenburg, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "bb"
    # small shards so that the corpus has many (the rank/worker split and skipping need that)
    meta = shards.pack(shards.scene_chips(brandenburg, 64), out, brandenburg.bands,
                       sensor="sentinel2-l1c", nodata=0.0, samples_per_commit=50,
                       chunk_bytes="1MB")
    return out, meta


def test_pack_reads_back_equal_with_metadata(packed, brandenburg):
    out, meta = packed
    c = ShardCorpus(out)
    scene = brandenburg.scenes[0].load()
    assert len(c) == meta["count"] == (768 // 64) * (1536 // 64)  # the scene has no nodata
    assert c.bands == brandenburg.bands and len(meta["chunks"]) > 4
    for i in (0, 7, len(c) - 1):
        s = c[i]
        r, col = s["info"]["row"], s["info"]["col"]
        assert s["image"].dtype == np.uint16  # raw DN kept, half the bytes of float32
        assert np.array_equal(s["image"], scene[:, r:r + 64, col:col + 64])
    # statistics stored with the shards match the scene's (same pixels, merged per chunk)
    # (the whole scene: brandenburg.stats() leaves the evaluation blocks out, packing does not)
    from eossl.data.resolve import DataRequest, open_data

    whole = open_data(DataRequest(data="brandenburg", pretrain_on_test_areas=True))
    ref, got = whole.stats(), c.stats()
    assert np.allclose(got.mean, ref.mean, rtol=1e-6) and np.allclose(got.std, ref.std, rtol=1e-4)
    assert json.loads((out / "eossl.json").read_text())["bands"] == brandenburg.bands


def _keys(ds) -> list[str]:
    return [s["key"] for s in ds]


def test_two_ranks_see_disjoint_halves_covering_the_corpus(packed):
    out, meta = packed
    c = ShardCorpus(out)
    keys = {c[i]["key"] for i in range(len(c))}
    seen = [_keys(ShardStream(c, seed=3, with_meta=True, epochs=1, distributed=(rank, 2)))
            for rank in range(2)]
    a, b = set(seen[0]), set(seen[1])
    assert len(a) == len(seen[0]) and len(b) == len(seen[1])  # no repeats within a rank
    assert not a & b                                          # disjoint
    assert a | b == keys                                      # union is the corpus
    assert abs(len(a) - len(b)) <= 1                          # equal shares
    # shuffled: not the stored order, and a different order in the next epoch
    ds = ShardStream(c, seed=3, with_meta=True, epochs=1)
    e1, e2 = _keys(ds), _keys(ds)
    assert sorted(e1) == sorted(keys) and e1 != sorted(keys) and e1 != e2
    # the same seed gives the same stream; the training stream (epochs=None) goes on
    assert _keys(ShardStream(c, seed=3, with_meta=True, epochs=1)) == e1
    endless = iter(ShardStream(c, seed=3, with_meta=True))
    assert [next(endless)["key"] for _ in range(len(c) + 5)][:len(c)] == e1


def test_workers_split_without_overlap(packed):
    out, _ = packed
    c = ShardCorpus(out)
    ds = ShardStream(c, seed=0, with_meta=True, crop_size=32, epochs=1)
    dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    keys = [s["key"] for s in dl]
    assert len(keys) == len(set(keys)) == len(c)


def test_stream_reads_whole_chunks_in_order_within_a_bounded_window(packed, monkeypatch):
    """The training path's I/O: each chunk is read once per epoch (whole, memory-mapped), not
    once per sample; samples mix across the chunks of a window only, and no window needs more
    chunks than it spans."""
    out, meta = packed
    c = ShardCorpus(out)
    reads, held = [], []
    real = ShardCorpus.chunk
    monkeypatch.setattr(ShardCorpus, "chunk", lambda self, k: reads.append(k) or real(self, k))
    window = 64
    ds = ShardStream(c, seed=1, with_meta=True, epochs=1, window=window)
    keys = _keys(ds)
    assert sorted(reads) == list(range(len(c.chunks)))  # every chunk read exactly once
    of_key = {c[i]["key"]: c.chunk_of(i) for i in range(len(c))}
    sizes = [int(ch["chunk_size"]) for ch in c.chunks]
    for w in range(0, len(keys), window):
        chunks = {of_key[k] for k in keys[w:w + window]}
        held.append(len(chunks))
        assert len(chunks) <= window // min(sizes) + 2
    assert max(held) > 1  # a window mixes several chunks


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_stream_continues_where_the_run_stopped(packed, workers):
    """``resume(batches, batch_size)`` (what eossl.train calls with the checkpoint's step)
    gives exactly the batches an uninterrupted stream gives next, across an epoch boundary,
    with and without DataLoader workers, on each of two ranks."""
    out, _ = packed
    c = ShardCorpus(out)
    bs, done, more = 8, 20, 30  # 2 x 144 samples: each rank's epoch ends at batch 18

    def batches(rank, resume_at=0, n=done + more):
        ds = ShardStream(c, 32, seed=4, with_meta=True, distributed=(rank, 2))
        ds.resume(resume_at, bs)
        dl = torch.utils.data.DataLoader(ds, batch_size=bs, num_workers=workers)
        it = iter(dl)
        return [(b["key"], b["image"]) for b, _ in zip(it, range(n))]

    for rank in range(2):
        full = batches(rank)
        resumed = batches(rank, resume_at=done, n=more)
        assert [k for k, _ in resumed] == [k for k, _ in full[done:]]
        for (_, x), (_, y) in zip(resumed, full[done:]):
            assert torch.equal(x, y)  # same crops too


def test_pretrain_source_gives_crops_and_stats(packed):
    from eossl.data.sources import open_source

    out, _ = packed
    src = open_source(str(out), bands="B04,B03,B02")
    assert src.bands == ["B04", "B03", "B02"] and src.polygons is None
    ds = src.crops(32, 10)
    assert isinstance(ds, ShardStream)
    x = next(iter(ds))["image"]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert len(src.stats().mean) == 3
    # the bands really are B04, B03, B02 of the stored chips
    full = ShardStream(src.corpus, 32, seed=0, epochs=1)
    y = next(iter(full))["image"]
    assert torch.equal(x, y[[src.corpus.bands.index(b) for b in ("B04", "B03", "B02")]])


def test_corrupt_shard_is_named_and_skippable(packed, tmp_path, monkeypatch):
    import shutil

    out, meta = packed
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    victim = meta["chunks"][2]["filename"]
    f = bad / victim
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncated
    with pytest.raises(DataError, match=victim):
        ShardCorpus(bad)
    c = ShardCorpus(bad, skip_corrupt=True)
    assert c.skipped == [victim] and len(c) == meta["count"] - meta["chunks"][2]["chunk_size"]
    assert len([1 for _ in c.dataset()]) == len(c)
    monkeypatch.setenv(shards.SKIP_ENV, "1")  # what `eossl pretrain --data` honours
    assert ShardCorpus(bad).skipped == [victim]
    # damaged content with the right length is caught by the CRC check
    monkeypatch.delenv(shards.SKIP_ENV)
    f2 = bad / meta["chunks"][3]["filename"]
    raw = bytearray(f2.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    f2.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=meta["chunks"][3]["filename"]):
        ShardCorpus(bad, verify="crc", skip_corrupt=False)


def test_writer_refuses_existing_output_and_resume_drops_orphans(tmp_path, landsat_dir):
    out = tmp_path / "ls"
    gen = shards.landsat_chips(landsat_dir, 32)
    w = ShardWriter(out, ["red", "nir", "swir1"], sensor="landsat")
    for _ in range(5):
        w.add(next(gen))
    w.commit({"next": 5})
    (out / "chunk-000099.bin").write_bytes(b"half a commit")
    with pytest.raises(OutputExistsError):
        ShardWriter(out, ["red", "nir", "swir1"])
    w2 = ShardWriter(out, resume=True)
    assert not (out / "chunk-000099.bin").exists() and w2.meta["progress"] == {"next": 5}
    for _ in range(3):
        w2.add(next(gen))
    w2.commit()
    c = ShardCorpus(out)
    assert len(c) == 8 and c[0]["mask"].shape == (32, 32)
    assert len({c[i]["key"] for i in range(8)}) == 8


def _truncated_copy(packed, tmp_path, which: int = 2):
    import shutil

    out, meta = packed
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    victim = meta["chunks"][which]["filename"]
    f = bad / victim
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    return bad, victim, meta


def test_pretrain_names_a_truncated_shard_and_skips_it_on_request(packed, tmp_path, capsys):
    """``eossl pretrain --data CORPUS`` with a truncated chunk: one error line naming the chunk;
    with ``--skip-corrupt-shards`` it trains on the rest and says what it left out."""
    from eossl.cli import main

    bad, victim, meta = _truncated_copy(packed, tmp_path)
    args = ["pretrain", "--data", str(bad), "--method", "simclr", "--max-steps", "1",
            "--batch-size", "4", "--crop-size", "32", "--no-progress"]
    code = main([*args, "--out", str(tmp_path / "refused")])
    err = capsys.readouterr().err
    assert code == 2 and victim in err and "truncated" in err and "--skip-corrupt-shards" in err
    assert not (tmp_path / "refused").exists()  # refused before a run folder was made
    with pytest.warns(UserWarning, match=victim):
        code = main([*args, "--skip-corrupt-shards", "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped_shards"] == [victim] and summary["steps"] == 1
    assert shards.SKIP_ENV not in __import__("os").environ  # the option does not leak


@pytest.mark.parametrize("skip", [False, True], ids=["whole", "one-chunk-skipped"])
def test_training_crops_split_across_two_ranks_and_workers(packed, tmp_path, skip):
    """What ``eossl pretrain --data CORPUS --devices 2 --strategy ddp --set
    data.num_workers=2`` reads in an epoch: ShardSource.crops streams, each rank with two
    DataLoader workers; the four shares are disjoint, cover the (good part of the) corpus and
    differ in size by at most one sample."""
    from eossl.data.shards import ShardSource

    path = _truncated_copy(packed, tmp_path, which=1)[0] if skip else packed[0]
    src = ShardSource(path, skip_corrupt=skip)
    keys = {src.corpus[i]["key"] for i in range(len(src.corpus))}
    seen = []
    for rank in range(2):
        ds = src.crops(32, seed=7)
        ds.with_meta, ds.epochs, ds.distributed = True, 1, (rank, 2)
        dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        seen.append([s["key"] for s in dl])
    a, b = seen
    assert not set(a) & set(b) and set(a) | set(b) == keys
    assert len(set(a)) == len(a) and len(set(b)) == len(b) and abs(len(a) - len(b)) <= 1
    assert a != sorted(a)  # shuffled
    if skip:
        assert len(keys) == packed[1]["count"] - packed[1]["chunks"][1]["chunk_size"]


def test_shard_damaged_after_opening_is_named(packed, tmp_path):
    """A chunk truncated while training runs (the size check at open time passed): the read
    error names the shard."""
    import shutil

    out, meta = packed
    copy = tmp_path / "c"
    shutil.copytree(out, copy)
    ds = shards.ShardSource(copy).crops(32, seed=0)
    victim = meta["chunks"][2]["filename"]
    f = copy / victim
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    with pytest.raises(DataError, match=f"shard {victim} has .* bytes, expected"):
        for _ in ds:
            pass
    i = sum(int(c["chunk_size"]) for c in meta["chunks"][:2]) + 1  # a sample of that chunk
    assert ds.corpus.chunk_of(i) == victim and ds.corpus.chunk_of(0) == meta["chunks"][0]["filename"]


# The resumed run lives in another folder than the one that wrote the checkpoint (a copy
# standing in for a stopped run); Lightning notes the moved checkpoint folder.
@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_pretrain_on_shards_resumes_the_stream_exactly(packed, tmp_path):
    """``eossl pretrain --data CORPUS``, stopped after its step-2 checkpoint and resumed with
    ``--resume``, ends with exactly the weights of an uninterrupted run: the resumed stream
    continues with the batches the first run would have read next (not the epoch's start)."""
    import shutil

    from eossl.cli import main

    out, _ = packed
    args = ["pretrain", "--data", str(out), "--method", "moco", "--max-steps", "4",
            "--batch-size", "8", "--crop-size", "32", "--accelerator", "cpu", "--no-progress",
            "--set", "trainer.checkpoint_every_n_steps=2", "--set", "trainer.deterministic=true",
            "--set", "data.shuffle_window=16", "--set", "model.queue_size=16"]
    full = tmp_path / "full"
    assert main([*args, "--out", str(full)]) == 0
    # the same run, as if killed right after its step-2 checkpoint
    cut = tmp_path / "cut"
    (cut / "checkpoints").mkdir(parents=True)
    shutil.copy(full / "config.yaml", cut / "config.yaml")
    shutil.copy(full / "checkpoints" / "step000002.ckpt", cut / "checkpoints" / "last.ckpt")
    assert main(["pretrain", "--resume", "--out", str(cut), "--no-progress"]) == 0
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 4
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # steps 3 and 4 did train (the comparison covers steps taken after the resume)
    c = torch.load(full / "checkpoints" / "step000002.ckpt", weights_only=True)["state_dict"]
    assert any(not torch.equal(a[k], c[k]) for k in a if k.startswith("backbone."))


def test_chunk_statistics_leave_out_pixels_invalid_in_any_band():
    """A pixel that is nodata (or NaN) in one band only must not enter the corpus statistics:
    the crop filter and tile() treat it as invalid, so the normaliser must too."""
    from eossl.data.shards import _chunk_stats

    a = np.full((2, 4, 4), 100.0, np.float32)
    a[1] = 200.0
    a[0, 0, :] = 0.0  # nodata in band 0 only, on the first row
    a[1, 1, 0] = np.nan  # NaN in band 1 only
    st = _chunk_stats([{"image": a}], ["B02", "B03"], nodata=0.0)
    assert st["n"] == 16 - 4 - 1
    # the optical bands' statistics are of log1p(reflectance); with the bad pixels left out
    # every remaining pixel holds exactly 100 (band 0) and 200 (band 1)
    assert np.allclose(np.expm1(st["mean"]), [100.0, 200.0])
    assert np.allclose(st["m2"], 0.0)
