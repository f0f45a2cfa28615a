"""Progress off a terminal: a line at a steady interval, and an estimate of the whole from the first steps."""

from __future__ import annotations

import io

from kd_edge import progress as progress_module
from kd_edge.progress import Progress, duration


def test_off_a_terminal_a_line_every_interval_and_one_estimate(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: clock[0])
    monkeypatch.setenv("KD_EDGE_PROGRESS_EVERY", "10")
    out = io.StringIO()
    bar = Progress(total=100, desc="distill", unit="step", stream=out)
    assert not bar.tty  # pytest's stderr is not a terminal
    for _ in range(100):
        clock[0] += 1.0  # one step per second: 100 s in all
        bar.update(1)
        bar.set_postfix(loss="0.5")
    bar.close()
    lines = out.getvalue().splitlines()
    estimate = [line for line in lines if "about" in line and " for " in line]
    assert estimate == ["  distill: about 1 min 40 s for 100 steps (1 steps/s over the last 3 s, 3 done)"]
    steady = [line for line in lines if line not in estimate]
    assert len(steady) == 10  # every 10 s of 100
    assert steady[0] == "  distill: 10/100 steps (10 %), 1 steps/s, about 1 min 30 s left, loss 0.5"


def test_quiet_work_prints_nothing_and_short_work_no_estimate(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: clock[0])
    out = io.StringIO()
    for enabled, steps in ((False, 100), (True, 5)):
        bar = Progress(total=steps, desc="x", unit="batch", stream=out, enabled=enabled)
        for _ in range(steps):
            clock[0] += 1.0
            bar.update()
    assert out.getvalue() == ""  # -q; and 5 s of work needs no estimate nor a steady line


def test_durations_read_as_people_say_them():
    assert [duration(s) for s in (4.4, 59.6, 200, 3900)] == ["4 s", "1 min 00 s", "3 min 20 s", "1 h 05 min"]


def test_an_estimate_that_looked_short_is_made_again_while_the_steps_slow_down(monkeypatch):
    """Length-sorted batches start fast: the first seconds promise little work, the rest takes long."""
    clock = [0.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: clock[0])
    out = io.StringIO()
    bar = Progress(total=100, desc="teacher 0 train", unit="batch", stream=out)
    for i in range(100):
        clock[0] += 0.1 if i < 40 else 2.0  # 40 quick batches, then slow ones
        bar.update()
    estimates = [line for line in out.getvalue().splitlines() if " for 100 batches" in line]
    assert len(estimates) == 1 and "over the last" in estimates[0], out.getvalue()
