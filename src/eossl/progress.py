"""Progress bars for eossl's long commands, all of one kind: on stderr, counting toward what
actually ends the work.

- :func:`bar` / :func:`track`: a plain count of work units (windows, folds, epochs, probe
  fits), for commands whose work is a known number of pieces;
- :class:`BudgetBar`: progress toward a budget of steps and/or seconds, whichever ends first
  (pretraining's ``--max-steps`` / ``--max-time``): its percentage and ETA are those of the
  budget, not of an epoch. :class:`~eossl.train.BudgetProgressBar` is the same bar inside
  Lightning.
- :class:`Work`: an evaluation's runs (one encoder, or the baseline, for one seed), counted in
  folds once the first run says how many folds it has; while it is open, :func:`inner_bar`
  shows the steps of each fine-tuning below it.

Every bar takes ``enabled`` (the commands' ``--no-progress``); tqdm's own ``TQDM_DISABLE=1``
environment variable turns them all off. tqdm is used rather than a bar of our own: it already
handles terminals, notebooks and redirected output.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

# Shared look: stderr (stdout stays for results), redraw at most twice a second.
_DEFAULTS = dict(dynamic_ncols=True, mininterval=0.5)


def bar(total: int | None = None, desc: str = "", unit: str = "it", *, enabled: bool = True,
        initial: int = 0, leave: bool = True) -> tqdm:
    """A bar over ``total`` units of work: ``b.update(n)`` after each; use as a context
    manager (or call ``close()``). Disabled bars cost nothing and print nothing."""
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=leave,
                disable=not enabled, file=sys.stderr, **_DEFAULTS)


def track(items: Iterable[T], desc: str = "", unit: str = "it", *, total: int | None = None,
          enabled: bool = True) -> Iterator[T]:
    """``for x in track(folds, "segment folds", unit="fold"): ...``: ``items`` with a bar."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(total, desc, unit, enabled=enabled) as b:
        for x in items:
            yield x
            b.update(1)


def budget_fraction(step: int, seconds: float, max_steps: int | None,
                    max_seconds: float | None) -> float:
    """The share of a budget used: the larger of the step and time shares (the run stops at
    whichever limit it reaches first), in [0, 1]."""
    shares = []
    if max_steps:
        shares.append(step / max_steps)
    if max_seconds:
        shares.append(seconds / max_seconds)
    return min(1.0, max(shares)) if shares else 0.0


def describe_budget(step: int, seconds: float, max_steps: int | None,
                    max_seconds: float | None) -> str:
    """``step 31/100, 12/25 s``: where a run stands in each of its limits."""
    parts = [f"step {step}/{max_steps}" if max_steps else f"step {step}"]
    if max_seconds:
        parts.append(f"{seconds:.0f}/{max_seconds:.0f} s")
    return ", ".join(parts)


class BudgetBar:
    """A bar toward a budget of ``max_steps`` and/or ``max_seconds``, whichever ends first.

    ``update(step, seconds)`` moves it to the budget share used (``seconds`` defaults to the
    time since the bar was made); the ETA is the remaining share at the average rate since the
    bar started, so a resumed run (``step`` and ``seconds`` already past 0 at the first update)
    counts from where it resumed. ``extra`` (e.g. ``loss=0.41``) is shown after the times. Its
tqdm is ``.tqdm`` (Lightning drives it as its bar).
    """

    UNITS = 1000  # the tqdm bar counts thousandths of the budget
    # tqdm's {n_fmt}/{total_fmt} would show thousandths; the budget text replaces them.
    FORMAT = "{{desc}}: {{percentage:3.0f}}%|{{bar}}| {budget} [{{elapsed}}<{{remaining}}{extra}]"

    def __init__(self, desc: str = "pretrain", *, max_steps: int | None = None,
                 max_seconds: float | None = None, enabled: bool = True,
                 file=None, position: int | None = None) -> None:
        self.max_steps, self.max_seconds = max_steps, max_seconds
        self._start = time.monotonic()
        self._started = False
        self.tqdm = tqdm(total=self.UNITS, desc=desc, leave=True, smoothing=0,
                         bar_format=self._format(describe_budget(0, 0.0, max_steps,
                                                                 max_seconds)),
                         disable=not enabled, position=position, file=file or sys.stderr,
                         **_DEFAULTS)

    def _format(self, budget: str, extra: str = "") -> str:
        def esc(text: str) -> str:
            return text.replace("{", "{{").replace("}", "}}")

        return self.FORMAT.format(budget=esc(budget), extra=esc(", " + extra if extra else ""))

    def update(self, step: int, seconds: float | None = None, extra: str = "") -> None:
        if seconds is None:
            seconds = time.monotonic() - self._start
        n = round(self.UNITS * budget_fraction(step, seconds, self.max_steps,
                                               self.max_seconds))
        t = self.tqdm
        first = not self._started
        if first:  # the ETA's rate counts from here (a resumed run's start)
            self._started = True
            t.initial = n
            t.start_t = t._time()
        t.n = n
        t.bar_format = self._format(describe_budget(step, seconds, self.max_steps,
                                                    self.max_seconds), extra)
        now = t._time()
        if first or now - t.last_print_t >= t.mininterval or n >= self.UNITS:
            t.refresh()
            t.last_print_t = now

    def close(self) -> None:
        self.tqdm.close()

    def __enter__(self) -> "BudgetBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Whether an enabled Work bar is open (in this thread or task): fits inside it show their steps.
_WORK_SHOWN: ContextVar[bool] = ContextVar("eossl_work_shown", default=False)


class Work:
    """A bar over the ``runs`` of an evaluation (each: one encoder or the baseline on every
    fold, for one seed), with an honest total in the finest unit known.

    The evaluation's fold loops go through :meth:`track`: the first one tells how many folds a
    run has, and from then on the bar counts folds (``runs x folds``); until then, or for an
    evaluation without folds, it counts runs. :meth:`end_run` completes a run's share (a run
    that had nothing to do, a baseline an evaluation does not have). Use as a context manager;
    while it is open and enabled, :func:`inner_bar` bars (fine-tuning steps) show below it.
    """

    def __init__(self, desc: str, runs: int, *, enabled: bool = True,
                 leave: bool = True) -> None:
        self.runs, self.done, self.per_run, self.in_run = max(1, runs), 0, 1, 0
        self._counted = False  # whether per_run is known (folds) or a guess (one per run)
        self.bar = bar(self.runs, desc, "run", enabled=enabled, leave=leave)
        self.enabled = enabled and not self.bar.disable
        self._token = None

    def _show(self) -> None:
        self.bar.n = self.done * self.per_run + min(self.in_run, self.per_run)
        self.bar.refresh()

    def track(self, items: Iterable[T]) -> Iterator[T]:
        """``items`` (the folds of one run), advancing the bar after each."""
        items = list(items)
        if not self._counted and items:
            self._counted, self.per_run = True, len(items)
            self.bar.total, self.bar.unit = self.runs * self.per_run, "fold"
            self._show()
        for x in items:
            yield x
            self.in_run += 1
            self._show()

    def end_run(self) -> None:
        self.done, self.in_run = min(self.done + 1, self.runs), 0
        self._show()

    def write(self, text: str, out=print) -> None:
        """``out(text)`` (a line on stdout) with the bars cleared first and redrawn after."""
        with tqdm.external_write_mode(file=sys.stdout):
            out(text)

    def close(self) -> None:
        if self._token is not None:
            _WORK_SHOWN.reset(self._token)
            self._token = None
        self.bar.close()

    def __enter__(self) -> "Work":
        self._token = _WORK_SHOWN.set(self.enabled)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:  # the error's own line follows: the bar goes away
            self.bar.leave = False
        self.close()


def inner_bar(total: int, desc: str, unit: str = "step") -> tqdm:
    """A bar of one piece of an evaluation's work (a fine-tuning's steps), shown below the
    evaluation's :class:`Work` bar while that is open and enabled, gone when done."""
    return bar(total, desc, unit, enabled=_WORK_SHOWN.get(), leave=False)
