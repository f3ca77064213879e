"""Progress bars for eossl's long commands, all of one kind: on stderr, counting toward what
actually ends the work.

- :func:`bar` / :func:`track`: a plain count of work units (windows, folds, epochs, probe
  fits), for commands whose work is a known number of pieces;
- :class:`BudgetBar`: progress toward a budget of steps and/or seconds, whichever ends first
  (pretraining's ``--max-steps`` / ``--max-time``): its percentage and ETA are those of the
  budget, not of an epoch. :class:`~eossl.train.BudgetProgressBar` is the same bar inside
  Lightning.

Every bar takes ``enabled`` (the commands' ``--no-progress``); tqdm's own ``TQDM_DISABLE=1``
environment variable turns them all off. tqdm is used rather than a bar of our own: it already
handles terminals, notebooks and redirected output.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
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
