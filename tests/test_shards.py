"""Shard corpora (LitData) packed from the real samples: round trip, rank split, corruption."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eossl.data import shards
from eossl.data.shards import ShardCorpus, ShardDataset, ShardWriter
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


def test_two_ranks_see_disjoint_halves_covering_the_corpus(packed):
    out, meta = packed
    c = ShardCorpus(out)
    keys = {c[i]["key"] for i in range(len(c))}
    for drop_last in (False, True):
        seen = []
        for rank in range(2):
            ds = ShardDataset(c, shuffle=True, seed=3, with_meta=True, drop_last=drop_last,
                              distributed=(rank, 2))
            seen.append([s["key"] for s in ds])
        a, b = set(seen[0]), set(seen[1])
        assert len(a) == len(seen[0]) and len(b) == len(seen[1])  # no repeats within a rank
        assert not a & b                                          # disjoint
        assert a | b == keys                                      # union is the corpus
        assert abs(len(a) - len(b)) <= (0 if drop_last else 1)   # DDP needs equal shares
    # shuffled: not the stored order, and a different order in the next epoch
    ds = ShardDataset(c, shuffle=True, seed=3, with_meta=True)
    e1 = [s["key"] for s in ds]
    e2 = [s["key"] for s in ds]
    assert sorted(e1) == sorted(keys) and e1 != sorted(keys) and e1 != e2


def test_workers_split_without_overlap(packed):
    out, _ = packed
    c = ShardCorpus(out)
    ds = ShardDataset(c, shuffle=True, seed=0, with_meta=True, crop_size=32)
    dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    keys = [s["key"] for s in dl]
    assert len(keys) == len(set(keys)) == len(c)


def test_pretrain_source_gives_crops_and_stats(packed):
    from eossl.data.sources import open_source

    out, _ = packed
    src = open_source(str(out), bands="B04,B03,B02")
    assert src.bands == ["B04", "B03", "B02"] and src.polygons is None
    ds = src.crops(32, 10)
    assert len(ds) == len(src.corpus)
    x = ds[3]["image"]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert len(src.stats().mean) == 3


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
def test_training_crops_split_across_two_ranks(packed, tmp_path, skip):
    """What ``eossl pretrain --data CORPUS --devices 2 --strategy ddp`` reads: map-style crops
    (ShardSource.crops) under the DistributedSampler that Lightning injects (its own function,
    with the arguments Lightning passes: shuffle, seed = the run seed). For one epoch the two
    ranks' samples are disjoint and cover the corpus; when the count is odd, the sampler pads
    one rank with a repeat (at most world - 1 samples), never drops one."""
    from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
    from lightning.pytorch.trainer.states import RunningStage
    from torch.utils.data import DataLoader

    from eossl.data.shards import ShardSource

    path = _truncated_copy(packed, tmp_path, which=1)[0] if skip else packed[0]
    src = ShardSource(path, skip_corrupt=skip)
    ds = src.crops(32)
    keys = [src.corpus[i]["key"] for i in range(len(ds))]
    dl = DataLoader(ds, batch_size=8, shuffle=False, drop_last=True)
    seen = []
    for rank in range(2):
        sampler = _get_distributed_sampler(dl, shuffle=True, overfit_batches=0,
                                           mode=RunningStage.TRAINING, num_replicas=2,
                                           rank=rank, seed=7)
        sampler.set_epoch(0)
        seen.append([keys[i] for i in sampler])
    a, b = seen
    assert len(a) == len(b)  # equal shares, or DDP's all-reduce would hang
    assert set(a) | set(b) == set(keys)
    assert len(set(a) & set(b)) == len(keys) % 2  # disjoint, up to the padding repeat
    assert len(set(a)) == len(a) and len(set(b)) == len(b)
    assert a != sorted(a)  # shuffled
    if skip:
        assert len(keys) == packed[1]["count"] - packed[1]["chunks"][1]["chunk_size"]


def test_shard_damaged_after_opening_is_named(packed, tmp_path):
    """A chunk truncated while training runs (the size check at open time passed): the read
    error names the shard, not only the sample index."""
    import shutil

    out, meta = packed
    copy = tmp_path / "c"
    shutil.copytree(out, copy)
    ds = shards.ShardSource(copy).crops(32)
    victim = meta["chunks"][2]["filename"]
    f = copy / victim
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    i = sum(int(c["chunk_size"]) for c in meta["chunks"][:2]) + 1  # a sample of that chunk
    with pytest.raises(DataError, match=f"sample {i} from shard {victim}"):
        ds[i]
    assert ds.corpus.chunk_of(0) == meta["chunks"][0]["filename"]
