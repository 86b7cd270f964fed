"""featstore.progress: a live bar on a terminal; in a log a line per tenth of the work, no carriage returns."""

from __future__ import annotations

import io

import pytest

import featstore.progress as progress_module
from featstore.progress import LOG_STEPS, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("total", [7, 95, 1000])
def test_outside_a_terminal_a_line_per_tenth_and_no_carriage_return(monkeypatch, total):
    monkeypatch.setattr(progress_module, "LOG_DELAY_S", 0.0)
    log = io.StringIO()
    for _ in progress(range(total), desc="work", unit="step", stream=log):
        pass
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text
    assert 2 <= len(lines) <= LOG_STEPS + 2, lines  # 0 %, each tenth, and the final line
    assert lines[-1].startswith("work: 100%") and f"{total}/{total}" in lines[-1]


def test_short_work_prints_nothing_in_a_log():
    log = io.StringIO()
    for _ in progress(range(50), desc="work", unit="step", stream=log):
        pass
    assert log.getvalue() == ""


def test_a_terminal_gets_the_live_bar_and_quiet_gets_nothing():
    tty = Terminal()
    for _ in progress(range(50), desc="work", unit="step", stream=tty):
        pass
    assert "\r" in tty.getvalue() and "50/50" in tty.getvalue()
    quiet = Terminal()
    for _ in progress(range(50), desc="work", unit="step", stream=quiet, enabled=False):
        pass
    assert quiet.getvalue() == ""
