"""Progress of long work, on a terminal and off one.

On a terminal it is a tqdm bar. Off one (output sent to a file, a CI log) a bar prints nothing useful,
so instead one line is printed at a steady interval (``KD_EDGE_PROGRESS_EVERY`` seconds, 30 by
default): what is done, the rate, the time left. Either way, once the first steps have been timed, one
line says how long the whole will take, so that nobody waits minutes without knowing for how long.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator

ESTIMATE_AFTER_S = 3.0  # time the first steps this long before estimating the whole
ESTIMATE_MIN_S = 20.0  # an estimate is printed only for work that takes at least this long


def _interval() -> float:
    try:
        return max(1.0, float(os.environ.get("KD_EDGE_PROGRESS_EVERY", "30")))
    except ValueError:
        return 30.0


def duration(seconds: float) -> str:
    """``seconds`` as a person says it: 45 s, 3 min 20 s, 1 h 05 min."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("s", "x", "ch", "sh")) else "s")


class Progress:
    """A progress bar (terminal) or steady progress lines (no terminal), with a time estimate."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "step", enabled: bool = True, initial: int = 0, leave: bool = True,
                 stream: Any = None):
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc, self.unit, self.enabled, self.n = desc, unit, enabled, initial
        self.initial = initial
        self.stream = stream or sys.stdout
        self.postfix = ""
        self.t0 = self.last = time.perf_counter()
        self.estimated = False
        self._marks: list[tuple[float, int]] = [(self.t0, initial)]
        self.tty = enabled and sys.stderr.isatty()
        self.bar = None
        if self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=initial, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)

    # -- the tqdm calls kd-edge makes ---------------------------------------------------------------
    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        if not self.enabled:
            return
        now = time.perf_counter()
        self._maybe_estimate(now)
        if not self.tty and now - self.last >= _interval():
            self.last = now
            self._line(self._status(now))

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())
        if self.bar is not None:
            self.bar.set_postfix(refresh=refresh, **values)

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # -- lines ----------------------------------------------------------------------------------------
    def _rate(self, now: float) -> float:
        return (self.n - self.initial) / max(now - self.t0, 1e-9)

    def _status(self, now: float) -> str:
        rate = self._rate(now)
        units = _plural(self.unit)
        done = f"{self.n}/{self.total} {units}" if self.total else f"{self.n} {units}"
        pct = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        left = (f", about {duration((self.total - self.n) / rate)} left" if self.total and rate > 0 else "")
        extra = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {done}{pct}, {rate:.3g} {units}/s{left}{extra}"

    def _maybe_estimate(self, now: float) -> None:
        """Once, as soon as the work is known to be long: how long the whole will take, from the rate of
        the last few seconds (length-sorted batches start fast, so the rate since the start misleads)."""
        if self.estimated or not self.total or self.n <= self.initial:
            return
        if not self._marks or now - self._marks[-1][0] >= 1.0:
            self._marks.append((now, self.n))
        old = next(((t, n) for t, n in reversed(self._marks) if now - t >= ESTIMATE_AFTER_S), None)
        if old is None or self.n == old[1]:
            return
        rate = (self.n - old[1]) / (now - old[0])
        left = (self.total - self.n) / rate
        whole = now - self.t0 + left
        if whole < ESTIMATE_MIN_S or left < ESTIMATE_AFTER_S:
            return
        self.estimated = True
        units = _plural(self.unit)
        self._line(f"{self.desc}: about {duration(whole)} for {self.total - self.initial} {units} "
                   f"({rate:.3g} {units}/s over the last {duration(now - old[0])}, {self.n - self.initial} done)")

    def _line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write("  " + text, file=sys.stderr)
        else:
            print("  " + text, file=self.stream, flush=True)


def progress(iterable: Iterable | None = None, **kw: Any) -> Progress:
    """A ``Progress`` over ``iterable`` (or a manual one with ``total=``); see the module."""
    return Progress(iterable, **kw)
