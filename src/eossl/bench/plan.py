"""What a benchmark runs, and the folder that remembers what it has done.

A benchmark folder holds ``plan.json`` (the matrix), ``status.json`` (what finished or failed),
``runs/METHOD/seedN/`` (ordinary pretraining run folders), ``evals/`` (one JSON of records per
evaluation, model and seed) and the report. ``eossl benchmark --out DIR --resume`` continues
where it stopped; a folder holding a different plan is refused rather than mixed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import parse_duration
from ..errors import ConfigError, OutputExistsError
from ..report import atomic_write_text

QUICK = {"budget": "45s", "seeds": [0], "fractions": [0.1, 1.0]}


@dataclass(frozen=True)
class Budget:
    """A pretraining budget per run: wall-clock seconds, optimiser steps, or both (the run
    stops at whichever limit it reaches first, as ``eossl pretrain --max-time --max-steps``)."""

    seconds: float | None = None
    steps: int | None = None

    @classmethod
    def parse(cls, text: str | int | float) -> "Budget":
        """'10m', '90s', '1h' (wall clock), '500-steps' / '500 steps', or both joined by a
        comma ('10m,500-steps'): how a plan stores ``--max-time`` and ``--max-steps``."""
        seconds = steps = None
        for part in [p.strip() for p in str(text).lower().split(",") if p.strip()] or [""]:
            m = re.fullmatch(r"(\d+)\s*-?\s*steps?", part)
            if m:
                if steps is not None:
                    raise ConfigError(f"budget {text!r}: two step budgets")
                steps = int(m.group(1))
                if steps < 1:
                    raise ConfigError(f"budget {text!r}: a step budget must be >= 1 step")
                continue
            if re.fullmatch(r"0+(\.0*)?\s*[a-z-]*", part):
                raise ConfigError(f"budget {text!r}: the budget must be more than zero")
            try:
                secs = parse_duration(part)
            except ConfigError:
                secs = None
            if secs is None or seconds is not None:
                raise ConfigError(f"budget {text!r}: expected a duration (90s, 10m, 1h), a "
                                  "step count (500-steps), or one of each joined by a comma")
            seconds = secs
        return cls(seconds=seconds, steps=steps)

    def spec(self) -> str:
        """The text :meth:`parse` reads back (what plan.json stores)."""
        return ",".join(([f"{self.seconds:g}s"] if self.seconds else [])
                        + ([f"{self.steps}-steps"] if self.steps else []))

    def __str__(self) -> str:
        parts = ([f"{self.steps} steps"] if self.steps else []) + (
            [f"{self.seconds:g} s wall clock"] if self.seconds else [])
        return " or ".join(parts) + (", whichever ends first" if len(parts) > 1 else "")


@dataclass
class RunInfo:
    """One finished pretraining run of the benchmark."""

    method: str
    seed: int
    run_dir: Path
    checkpoint: Path
    summary: dict = field(default_factory=dict)


@dataclass
class Plan:
    methods: list[str]
    seeds: list[int]
    budget: str
    data: str = "brandenburg"
    # the other data options of the command line (labels, sensor, split...; data/resolve.py)
    data_options: dict = field(default_factory=dict)
    backbone: str = "resnet18"
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    evaluations: list[str] = field(default_factory=list)
    quick: bool = False  # --quick: the evaluations' small settings (kept so a resume matches)
    # encoders pretrained elsewhere (--checkpoint NAME=PATH): rows beside the methods
    encoders: dict[str, str] = field(default_factory=dict)
    # where it runs (--accelerator / --devices); not part of what is measured, so a resume
    # may change them (RUNTIME)
    accelerator: str | None = None
    devices: str | None = None

    RUNTIME = ("accelerator", "devices")

    def __post_init__(self) -> None:
        from ..evaluate.results import SPECTRAL
        from ..models.encoder import RANDOM_TWIN

        if not self.methods and not self.encoders:
            raise ConfigError("--methods: no method to benchmark; name methods (see 'eossl "
                              "methods'), or give --checkpoint NAME=PATH to benchmark encoders "
                              "pretrained elsewhere")
        for name in self.encoders:
            if name in self.methods:
                raise ConfigError(f"--checkpoint {name}=...: {name!r} is also a benchmarked "
                                  "method; name the row otherwise (NAME=PATH)")
            if name == SPECTRAL or name.startswith(("_", RANDOM_TWIN)):
                raise ConfigError(f"--checkpoint {name}=...: {name!r} is the name of a "
                                  "reference row; name the row otherwise (NAME=PATH)")
        if not self.seeds:
            raise ConfigError("--seeds: give at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"--seeds {self.seeds}: a seed is repeated")
        Budget.parse(self.budget)  # refuse a bad or zero budget before any work
        for f in self.fractions:
            if not 0 < f <= 1:
                raise ConfigError(f"label fraction {f} must be in (0, 1]")

    @property
    def budget_obj(self) -> Budget:
        return Budget.parse(self.budget)

    def to_dict(self) -> dict:
        return asdict(self)

    def differences(self, stored: dict) -> list[str]:
        """The keys in which this plan differs from a stored one (plan.json): what it measures,
        not where it runs; a key an older eossl did not store counts as its default."""
        import dataclasses

        defaults = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING
                    else f.default for f in dataclasses.fields(self)}
        new = self.to_dict()
        return [k for k in new if k not in self.RUNTIME
                and stored.get(k, defaults.get(k)) != new[k]]


def resolve_methods(text: str | None) -> list[str]:
    """'all' (or None) -> every registered method; 'a,b' -> those, checked by name."""
    from ..methods import available_methods, get_method

    if text is None or text.strip() == "all":
        return available_methods()
    if text.strip().lower() == "none":  # only encoders pretrained elsewhere (--checkpoint)
        return []
    names = [m.strip() for m in text.split(",") if m.strip()]
    for n in names:
        get_method(n)  # ConfigError naming the unknown method and the choices
    return names


def _claim_token() -> str:
    return f"{os.getpid()} {threading.get_ident()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _take_claim(path: Path, tries: int = 2) -> bool:
    for _ in range(tries):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid, thread = (int(v) for v in path.read_text().split())
            except (OSError, ValueError):
                # being written right now (someone else's), or left unwritten by a process
                # that died between creating and writing it a while ago
                try:
                    fresh = time.time() - path.stat().st_mtime < 60
                except OSError:
                    fresh = False
                if fresh:
                    return False
                path.unlink(missing_ok=True)
                continue
            if pid == os.getpid():  # ours: held by a live thread, else left by a dead one
                if thread in {t.ident for t in threading.enumerate()}:
                    return False
            elif _alive(pid):
                return False
            path.unlink(missing_ok=True)  # its worker died: take the step over
            continue
        with os.fdopen(fd, "w") as f:
            f.write(_claim_token())
        return True
    return False


class BenchmarkFolder:
    """The benchmark's folder: plan, status, run folders, evaluation results."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def plan_path(self) -> Path:
        return self.root / "plan.json"

    def open(self, plan: Plan) -> bool:
        """Create the folder for ``plan``, or reopen it for the same plan (returns True when
        resuming). A folder with another plan, or with unrelated content, is refused."""
        if self.plan_path.exists():
            old = json.loads(self.plan_path.read_text())
            new = plan.to_dict()
            diff = plan.differences(old)
            if diff:
                raise OutputExistsError(
                    f"{self.root} holds another benchmark (its {', '.join(diff)} differ: "
                    + "; ".join(f"{k}: {old.get(k)} there vs {new[k]} now" for k in diff)
                    + "); choose another --out, or continue it with --out and --resume alone")
            if any(old.get(k) != new[k] for k in plan.RUNTIME):  # a resume elsewhere: noted
                atomic_write_text(self.plan_path, json.dumps(new, indent=1))
            return True
        if self.root.exists() and any(self.root.iterdir()):
            raise OutputExistsError(f"{self.root} exists, is not empty and is not a benchmark "
                                    "folder (no plan.json); choose another --out")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.plan_path, json.dumps(plan.to_dict(), indent=1))
        except OSError as e:
            raise OutputExistsError(f"{self.root}: cannot write there ({e.strerror})") from None
        return False

    def load_plan(self) -> Plan:
        if not self.plan_path.exists():
            raise ConfigError(f"{self.root} is not a benchmark folder (no plan.json)")
        return Plan(**json.loads(self.plan_path.read_text()))

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        p = self.root / "status.json"
        return json.loads(p.read_text()) if p.exists() else {"runs": {}, "evals": {}}

    def set_status(self, section: str, key: str, value: dict) -> None:
        # read-modify-write under a lock: evaluation workers (--eval-workers) share the file
        from filelock import FileLock

        with FileLock(str(self.root / ".status.lock")):
            st = self.status()
            st.setdefault(section, {})[key] = value
            atomic_write_text(self.root / "status.json", json.dumps(st, indent=1))

    @contextlib.contextmanager
    def claim(self, evaluation: str, model: str, seed: int):
        """Yields True when this process (and thread) may run the step, False when another
        live evaluation worker holds it. The claim is a file created exclusively beside the
        step's result and removed when the step ends; one left by a process that died is
        taken over."""
        path = self.eval_path(evaluation, model, seed).with_suffix(".claim")
        path.parent.mkdir(parents=True, exist_ok=True)
        mine = _take_claim(path)
        try:
            yield mine
        finally:
            if mine:
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ layout
    def run_dir(self, method: str, seed: int) -> Path:
        return self.root / "runs" / method / f"seed{seed}"

    def eval_path(self, evaluation: str, model: str, seed: int) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model)
        return self.root / "evals" / evaluation / f"{safe}__seed{seed}.json"

    def load_eval(self, evaluation: str, model: str, seed: int) -> list[dict] | None:
        p = self.eval_path(evaluation, model, seed)
        return json.loads(p.read_text()) if p.exists() else None

    def save_eval(self, evaluation: str, model: str, seed: int, records: list[dict]) -> None:
        atomic_write_text(self.eval_path(evaluation, model, seed),
                          json.dumps(records, indent=1, default=float))

    def all_eval_records(self) -> list[dict]:
        out = []
        for p in sorted((self.root / "evals").glob("*/*.json")):
            out += json.loads(p.read_text())
        return out
