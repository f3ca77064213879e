"""The eossl command-line vocabulary: the options several commands share, defined once.

docs/cli.md is the user's side of this module. One name per concept, the same on every
command that has the concept:

- ``--checkpoint PATH`` (repeatable ``NAME=PATH`` where encoders are compared),
- ``--out PATH``, ``--seeds 0,1,2`` (repeated evaluations) / ``--seed N`` (one run),
- ``--crop-size`` (pretraining crops only) and ``--patch-size`` (every other spatial unit an
  encoder sees or a corpus is cut into: probe and evaluation patches, embeddings, shard
  chips, collected patches),
- ``--accelerator`` / ``--devices`` (Lightning's names and values),
- ``--max-time`` / ``--max-steps`` (budgets), ``--no-progress``.

Old spellings stay as hidden aliases (:func:`add_alias`) that still work and print one line
naming the new option, because users have scripts. The help formatter (:class:`HelpFormatter`)
writes every "(default: X)" from the parser's own default (or from the configuration that
really supplies it, :func:`document_default`), so help and code cannot drift apart;
tests/test_cli_help.py walks every parser to check it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

# ------------------------------------------------------------------------------ help text


def format_default(value) -> str:
    """How a default reads in help: lists comma-separated (as they are typed)."""
    if isinstance(value, (list, tuple)):
        return ",".join(format_default(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def document_default(action: argparse.Action, source) -> argparse.Action:
    """Say where the default of an option without a parser default comes from: ``source()``
    returns it (a configuration schema, a dataclass), called only when help is shown."""
    action.default_source = source
    return action


class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help: X is the parser's default, or what
    ``document_default`` says supplies it. Flags (off unless given) show none."""

    def _get_help_string(self, action):
        text = action.help or ""
        # a help that states its default itself keeps it (tests/test_cli_help.py checks it)
        if re.search(r"\(default[: ]", text) or action.help == argparse.SUPPRESS:
            return text
        source = getattr(action, "default_source", None)
        if source is not None:
            value = source()
        elif action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        else:
            value = action.default
        if value is None or isinstance(value, bool):
            return text
        # argparse %-formats help text: a literal % in a default must be doubled
        return f"{text} (default: {format_default(value).replace('%', '%%')})"


# ------------------------------------------------------------------------------ old spellings


def note(text: str) -> None:
    """One line on stderr that is not an error (deprecations)."""
    print(f"eossl: note: {text}", file=sys.stderr)


class _Alias(argparse.Action):
    """A hidden old spelling of an option: stores into the new option's dest and says so."""

    def __init__(self, option_strings, dest, new: str, **kw):
        self.new = new
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        note(f"{option_string} is now {self.new}; the old name will be removed in a later "
             "version")
        setattr(namespace, self.dest, values)


def add_alias(p, old: str, new: argparse.Action) -> None:
    """Accept ``old`` as a hidden spelling of the option ``new`` (same type and dest)."""
    p.add_argument(old, dest=new.dest, type=new.type, action=_Alias, new=new.option_strings[0],
                   metavar=new.metavar, help=argparse.SUPPRESS, default=argparse.SUPPRESS)


# ------------------------------------------------------------------------------ value types


def int_at_least(minimum: int, what: str = "an integer"):
    """An argparse type: an integer >= ``minimum``, refused at parse time in one line."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what} of at least {minimum}, got "
                                             f"{value}")
        return value

    parse.__name__ = "int"
    return parse


SIZE = int_at_least(1, "a size in px")


def _comma_list(text: str, cast, what: str) -> list:
    """``a,b,c`` cast item by item; an item that does not cast, or no item at all, is an
    argparse error naming ``what`` (e.g. "number")."""
    try:
        vals = [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}s, got {text!r}")
    if not vals:
        raise argparse.ArgumentTypeError(f"expected at least one {what}, got {text!r}")
    return vals


def floats(text: str) -> list[float]:
    """``0.01,0.1,1`` -> [0.01, 0.1, 1.0]."""
    return _comma_list(text, float, "number")


def fractions(text: str) -> list[float]:
    """Label fractions: shares in (0, 1]."""
    vals = floats(text)
    bad = [f for f in vals if not 0 < f <= 1]
    if bad:
        raise argparse.ArgumentTypeError(f"{bad[0]:g}: expected label shares in (0, 1], e.g. "
                                         "0.01,0.1,1")
    return vals


def seed_list(text: str) -> list[int]:
    """``--seeds 0,1,2``: at least one seed, each a non-negative 32-bit integer (what numpy
    and scikit-learn accept). The one parser of seed lists for every command."""
    vals = _comma_list(text, int, "integer")
    bad = [v for v in vals if not 0 <= v < 2**32]
    if bad:
        raise argparse.ArgumentTypeError(f"seed {bad[0]} is out of range; expected integers "
                                         "from 0 to 4294967295")
    if len(set(vals)) != len(vals):
        raise argparse.ArgumentTypeError(f"{text!r} names a seed twice")
    return vals


# ------------------------------------------------------------------------------ the options


def add_checkpoint(p, *, many: bool = False, required: bool = True,
                   help: str | None = None) -> argparse.Action:
    """``--checkpoint``: one eossl pretraining checkpoint, or (``many``) several to compare,
    each ``PATH`` or ``NAME=PATH`` (the row's name; default: its run folder's)."""
    if many:
        return p.add_argument("--checkpoint", action="append", required=required,
                              metavar="[NAME=]PATH", help=help or "eossl pretraining checkpoint "
                              "(runs/RUN/checkpoints/last.ckpt) or external weights "
                              "(docs/external-encoders.md); repeatable, NAME=PATH names its "
                              "row (default: the run folder's name, else the file's)")
    return p.add_argument("--checkpoint", required=required, metavar="PATH",
                          help="eossl pretraining checkpoint (runs/RUN/checkpoints/last.ckpt) "
                          "or external weights (docs/external-encoders.md)")


def parse_checkpoints(items) -> dict[str, str]:
    """``NAME=PATH`` or ``PATH`` (named after its run folder) -> {name: path}; refuses an
    empty path and two rows of one name, and names a missing file."""
    from ..errors import ConfigError, DataError

    out = {}
    for item in items or []:
        from ..models.external import weights_path

        name, sep, path = item.partition("=")
        if not sep or not name.strip():
            path = path if sep else item
            name = ""
        if not path.strip():
            raise ConfigError(f"--checkpoint {item!r}: no path after '='; expected NAME=PATH "
                              "or PATH")
        path = str(weights_path(path))  # torchgeo:NAME -> its file (docs/external-encoders.md)
        name = name or _row_name(Path(path))
        if name in out:
            raise ConfigError(f"--checkpoint: two checkpoints are named {name!r}; name them "
                              "with NAME=PATH")
        if not Path(path).exists():  # a file, or an export's folder
            raise DataError(f"checkpoint {path} ({name}) does not exist")
        out[name] = path
    return out


def _row_name(path: Path) -> str:
    """A checkpoint's row name: its run folder's (runs/RUN/checkpoints/last.ckpt -> RUN),
    else the file's (or an export folder's) own name without its suffix."""
    if path.parent.name == "checkpoints" and path.parent.parent.name:
        return path.parent.parent.name
    return path.stem if path.suffix else path.name


def add_out(p, help: str, *, required: bool = False) -> argparse.Action:
    return p.add_argument("--out", required=required, metavar="PATH", help=help)


def add_seeds(p, default=(0, 1, 2), help: str = "seeds of the repeated fits (label "
              "subsampling, heads), comma-separated") -> argparse.Action:
    return p.add_argument("--seeds", type=seed_list, default=list(default), help=help)


def add_patch_size(p, help: str, *, default=None, minimum: int = 1,
                   old: tuple[str, ...] = ()) -> argparse.Action:
    """``--patch-size``: the spatial unit of every command but pretraining (whose crops are
    ``--crop-size``); ``old`` spellings stay as hidden aliases."""
    action = p.add_argument("--patch-size", type=int_at_least(minimum, "a size in px"),
                            default=default, metavar="PX", help=help)
    for name in old:
        add_alias(p, name, action)
    return action


def add_budget(p, *, max_time_default=None, what: str = "pretraining",
               max_time_help_default: str | None = None) -> list:
    """``--max-time`` / ``--max-steps``; ``max_time_help_default``: the words of a default
    that is not the parser's (it depends on another option)."""
    shown = f" (default: {max_time_help_default})" if max_time_help_default else ""
    return [p.add_argument("--max-time", default=max_time_default, metavar="DURATION",
                           help=f"{what} wall-clock budget: 90s, 10m, 1.5h or HH:MM:SS"
                           + shown),
            # checked by the configuration schema (config.py), the one place budgets are
            p.add_argument("--max-steps", type=int, metavar="N",
                           help=f"{what} step budget (with --max-time: whichever ends first)")]


def add_progress(p) -> argparse.Action:
    return p.add_argument("--no-progress", action="store_true", help="hide the progress bar "
                          "(stderr); TQDM_DISABLE=1 hides every bar")


ONE_DEVICE = ("runs on one device")


def add_devices(p, *, many: bool, what: str = "") -> list:
    """``--accelerator`` and ``--devices``, Lightning's names and values. ``many``: the
    command trains through Lightning and takes several devices; otherwise it runs on one
    device (:func:`torch_device`). ``what``: where they apply, when not the whole command."""
    if many:
        where = f" ({what})" if what else ""
        return [p.add_argument("--accelerator", metavar="NAME", help="Lightning accelerator: "
                               f"auto, cpu, gpu, mps, ...{where}"),
                p.add_argument("--devices", metavar="N", help="devices per node: a number, "
                               f"'auto', or device indices such as 0,1{where}")]
    return [p.add_argument("--accelerator", default="auto", metavar="NAME",
                           help="auto (a GPU when there is one), cpu, gpu (cuda) or mps"),
            p.add_argument("--devices", default="1", metavar="N", help="this command runs on "
                           "one device: 1, auto, or one device index written as a list (2,)")]


def torch_device(accelerator: str | None, devices: str | int | None = "1"):
    """The one torch device that ``--accelerator`` / ``--devices`` name, for commands that do
    not train through Lightning (embedding, probes). Written here rather than taken from
    Lightning: its accelerator connector builds a whole Trainer setup (launchers, strategies),
    while these commands need one ``torch.device``; the names and values are Lightning's."""
    import torch

    from ..errors import ConfigError

    acc = (accelerator or "auto").strip().lower()
    text = str(devices if devices is not None else "1").strip().replace(" ", "")
    index = 0
    if m := re.fullmatch(r"\[?(\d+)(,\]?|\])", text):  # Lightning's "2," / [2]: device 2
        index = int(m.group(1))
    elif text not in ("1", "auto"):
        raise ConfigError(f"--devices {devices}: this command {ONE_DEVICE}; give 1, auto or "
                          "one device index such as 2,")
    if acc == "auto":
        if torch.cuda.is_available():
            acc = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            acc = "mps"
        else:
            acc = "cpu"
    if acc == "cpu":
        return torch.device("cpu")
    if acc in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--accelerator {accelerator}: no CUDA device is available here; "
                              "use --accelerator cpu (or auto)")
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--devices {devices}: there is no CUDA device {index} (this "
                              f"machine has {torch.cuda.device_count()})")
        return torch.device("cuda", index)
    if acc == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"--accelerator {accelerator}: MPS is not available here; use "
                              "--accelerator cpu (or auto)")
        return torch.device("mps")
    raise ConfigError(f"--accelerator {accelerator}: this command {ONE_DEVICE}; expected "
                      "auto, cpu, gpu (cuda) or mps")


# ------------------------------------------------------------------------------ old positionals


def legacy_positionals(p, names: tuple[str, ...]) -> None:
    """The positional arguments a command took before they became options (``names``, in
    order): accepted, hidden, and moved to the options by :func:`take_positionals`."""
    p.add_argument("legacy_positionals", nargs="*", metavar="|".join(names),
                   help=argparse.SUPPRESS)


def take_positionals(args, command: str, names: tuple[str, ...]) -> None:
    """Move the old positional arguments of ``command`` (``names``: the options' dests, in
    their old order) into their options, saying the new form once. An option given both ways
    is refused."""
    from ..errors import ConfigError

    given = list(getattr(args, "legacy_positionals", None) or [])
    if not given:
        return
    flags = {n: "--" + n.replace("_", "-") for n in names}
    old = " ".join(n.upper() for n in names)
    new = " ".join(f"{flags[n]} {n.upper()}" for n in names)
    if len(given) > len(names):
        raise ConfigError(f"unexpected arguments {' '.join(given)}; write eossl {command} "
                          f"{new}")
    if len(given) < len(names):  # the one option not given as such takes the value
        free = [n for n in names if getattr(args, n, None) is None]
        if len(free) != len(given):
            raise ConfigError(f"unexpected argument {' '.join(given)}; write eossl "
                              f"{command} {new}")
        targets = free
    else:
        targets = list(names)
    for name, value in zip(targets, given):
        if getattr(args, name, None) is not None:
            raise ConfigError(f"{flags[name]} is given twice ({value} and "
                              f"{getattr(args, name)}); give it once (eossl {command})")
        setattr(args, name, value)
    note(f"'eossl {command} {old}' is now 'eossl {command} {new}'; the old form will be "
         "removed in a later version")


def require(args, command: str, *names: str) -> None:
    """Options that a command needs but argparse cannot require (an old positional may give
    them): one line naming each missing one."""
    from ..errors import ConfigError

    missing = ["--" + n.replace("_", "-") for n in names if getattr(args, n, None) is None]
    if missing:
        raise ConfigError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                          f"required (see 'eossl {command} --help')")
