"""Progress bars: the one helper every command's long loop goes through.

On a terminal it is tqdm's live bar. Anywhere else (a CI log, ``make demo > log``, a pipe) tqdm would redraw
the bar with carriage returns several times a second, which a log shows as one endless line or thousands of
them; there the bar prints a plain line at every tenth of the work instead, and nothing at all for work that
ends within :data:`LOG_DELAY_S`. Lives in ``featstore`` because both packages use it and ``featstore``
imports nothing from ``distill``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

LOG_STEPS = 10
"""Lines a bar prints outside a terminal over the whole work (one per tenth), besides the final one."""

LOG_DELAY_S = 2.0
"""Outside a terminal, work that ends within this many seconds prints no progress line."""


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str | None,
    unit: str,
    total: int | None = None,
    initial: int = 0,
    enabled: bool = True,
    leave: bool = True,
    stream: IO[str] | None = None,
) -> tqdm:
    """Make a tqdm bar over ``iterable`` (or updated by hand with ``total``), shown as the module docstring says.

    Args:
        iterable: what to iterate, or None for a bar driven by ``update``.
        desc: the bar's label (None: no bar, as ``enabled=False``).
        unit: what one step is ("step", "chunk", "batch").
        total: the number of steps (default: ``len(iterable)`` when it has one).
        initial: steps already done (a resumed run).
        enabled: False for ``--quiet`` (and non-main DDP ranks): a bar that shows nothing.
        leave: keep the finished bar on a terminal (False: erase it, for sub-steps of a command).
        stream: where to write (default: stderr, read at call time so click's test runner can capture it).

    Returns:
        The tqdm object (iterate it, or call ``update``/``set_postfix_str``/``close``; it is a context manager).
    """
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    stream = sys.stderr if stream is None else stream
    if not enabled or desc is None:
        return tqdm(iterable, total=total, disable=True)
    if _is_terminal(stream):
        return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, leave=leave, file=stream)
    if not total:  # no length to count tenths of: silent in a log
        return tqdm(iterable, total=total, disable=True)
    return tqdm(
        iterable,
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        file=_Lines(stream),
        bar_format="{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}]{postfix}",
        mininterval=0,
        maxinterval=math.inf,  # tqdm's monitor thread would otherwise force a redraw every 10 s
        miniters=max(1, math.ceil(total / LOG_STEPS)),
        delay=LOG_DELAY_S,
    )


def _is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (ValueError, OSError):  # a closed stream
        return False


class _Lines:
    r"""A file for tqdm that turns each redraw (``\r`` + bar) into one line, and drops repeats and blanks."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> int:
        for piece in text.replace("\r", "\n").split("\n"):
            line = piece.strip()
            if line and line != self.last:
                self.stream.write(line + "\n")
                self.last = line
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
