"""``eossl evaluate pixel-probe``: per-pixel logistic-regression probe of pretrained encoders on
the labelled pixels of a scene (west block train, east block test), beside the raw-spectrum
baseline and a random-init copy of the first encoder.

Also holds the small helpers the regress and multilabel tasks share (checkpoint arguments,
random-init row, result files that are never overwritten).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..cli import seed_list

TASK = "pixel-probe"


# ------------------------------------------------------------------ shared helpers
ints = seed_list  # --seeds of every evaluate task (cli.seed_list)


def parse_checkpoints(items) -> dict[str, str]:
    """``NAME=PATH`` or ``PATH`` (named after its run folder) -> {name: path}."""
    from ..errors import ConfigError

    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name.strip():
            path = path if sep else item
            name = Path(path).parent.parent.name or Path(path).stem
        if not path.strip():
            raise ConfigError(f"--checkpoint {item!r}: no path after '='; expected NAME=PATH "
                              "or PATH")
        if name in out:
            raise ConfigError(f"--checkpoint: two checkpoints are named {name!r}; name them "
                              "with NAME=PATH")
        out[name] = path
    return out


def load_encoders(checkpoints: dict[str, str], random_init: bool = True, seed: int = 0) -> dict:
    """Encoders from checkpoints, plus (first) the first one's random twin: the same
    architecture, band list and normalisation, other weights."""
    from ..checkpoint import load_encoder
    from ..evaluate.compare import RANDOM

    encoders = {name: load_encoder(path) for name, path in checkpoints.items()}
    if random_init and encoders:
        encoders = {RANDOM: next(iter(encoders.values())).random_twin(seed), **encoders}
    return encoders


def write_results(out: str | None, payload: dict, markdown: str) -> Path | None:
    """results.json + report.md in ``out`` (atomic); refuses a folder that holds results."""
    if not out:
        return None
    from ..errors import OutputExistsError
    from ..report import atomic_write_text

    folder = Path(out)
    if (folder / "results.json").exists():
        raise OutputExistsError(f"{folder} already holds results.json; choose another --out")
    payload = {"command": "eossl " + " ".join(sys.argv[1:]), **payload}
    atomic_write_text(folder / "results.json", json.dumps(payload, indent=1, default=float))
    atomic_write_text(folder / "report.md", markdown)
    return folder / "report.md"


def add_common(p, data_default: str | None = "brandenburg") -> None:
    p.add_argument("--checkpoint", action="append", default=[],
                   help="pretrained checkpoint (repeatable; NAME=PATH names the row)")
    if data_default is not None:
        from ._data_options import add_data_options

        add_data_options(p, default=data_default)
    p.add_argument("--seeds", type=ints, default=[0, 1, 2])
    p.add_argument("--no-random-init", action="store_true", help="leave out the random row")
    p.add_argument("--out", help="write results.json and report.md here (never overwritten)")


# ------------------------------------------------------------------ the task
def add_parser(tsub) -> None:
    p = tsub.add_parser(TASK, help="per-pixel linear probe on labelled pixels (spatial split)")
    add_common(p)
    p.add_argument("--per-class", type=int, default=500,
                   help="training pixels drawn per class from the west block (default 500)")
    p.add_argument("--test-per-class", type=int, default=2000,
                   help="test pixels drawn per class from the east block (default 2000)")
    p.add_argument("--tile", type=int, default=64, help="tile size for the embedding pass")


def run(args) -> int:
    from ..evaluate.pixel_probe import pixel_probe
    from ..report import markdown_table, per_class_table
    from ._data_options import open_from_args

    source = open_from_args(args)
    encoders = load_encoders(parse_checkpoints(args.checkpoint), not args.no_random_init)
    encoders = {n: e.for_bands(source.bands) for n, e in encoders.items()}
    records = pixel_probe(source, encoders, per_class=args.per_class,
                          test_per_class=args.test_per_class, seeds=args.seeds, tile=args.tile,
                          classes=source.classes)
    table = markdown_table(records, kind="pixel-linear")
    classes = per_class_table(records, kind="pixel-linear")
    print(table)
    print(classes)
    md = (f"# eossl evaluate pixel-probe\n\n- data: {args.data}\n- seeds: {args.seeds}\n"
          f"- pixels per class: {args.per_class} train (west block), up to "
          f"{args.test_per_class} test (east block)\n\n{table}\n## Per-class F1\n\n{classes}")
    path = write_results(args.out, {"task": TASK, "records": records}, md)
    if path:
        print(f"report: {path}")
    return 0
