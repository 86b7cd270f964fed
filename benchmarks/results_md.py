"""What every benchmark script uses to publish: its own part of ``benchmarks/RESULTS.md`` and its JSON file.

Each script owns one part of ``RESULTS.md`` — a ``## `` section (:func:`replace_section`) or a block between
two markers (:func:`replace_block`, the throughput figures of :mod:`benchmarks.run`) — or the marked table of
a doc (:func:`replace_marked`), so re-running one never touches what another wrote. Files are replaced atomically: a killed run leaves the old file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from featstore.atomic import atomic_write_text


def replace_section(path: Path, heading: str, section: str) -> None:
    """Replace the section starting at ``heading`` (up to the next '## ' heading) with ``section``, or append it."""
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    start = text.find(heading)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        nxt = text.find("\n## ", start + len(heading))
        text = text[:start] + section + ("" if nxt < 0 else text[nxt + 1 :])
    atomic_write_text(path, text)


def replace_block(path: Path, start: str, end: str, block: str) -> None:
    """Replace the text from marker ``start`` to marker ``end`` with ``block`` (which carries both markers), or
    insert ``block`` right after the file's title when the markers are absent."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1]
        text = head + block + tail
    else:
        lines = text.split("\n")
        cut = 1 if lines and lines[0].startswith("# ") else 0
        text = "\n".join(lines[:cut] + [""] + block.split("\n") + [""] + lines[cut:])
    atomic_write_text(path, text.rstrip("\n") + "\n")


def replace_marked(doc: Path, start: str, end: str, body: str, heading: str | None = None) -> None:
    """Put ``body`` between the markers ``start`` and ``end`` of a hand-written ``doc`` (docs/results.md,
    docs/store.md); when the markers are absent, append them (under ``heading``, if given) at the end."""
    block = f"{start}\n{body}\n{end}"
    text = doc.read_text() if doc.exists() else ""
    if start in text and end in text and text.index(start) < text.index(end):
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        lead = f"{heading}\n\n" if heading else ""
        text = text.rstrip("\n") + ("\n\n" if text else "") + lead + block + "\n"
    atomic_write_text(doc, text)


def json_default(value: Any) -> Any:
    """numpy scalars and arrays and paths as JSON values (results hold them straight from the measurements)."""
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json(path: Path, results: dict) -> None:
    atomic_write_text(path, json.dumps(results, indent=2, default=json_default) + "\n")


def publish(section: str, heading: str, results: dict, json_path: Path, results_md: Path, write: bool) -> None:
    """Print a benchmark's section and, unless told not to, write its JSON and its part of RESULTS.md — so the
    file holds exactly what the script printed."""
    print(section)
    if write:
        write_json(json_path, results)
        replace_section(results_md, heading, section)
        print(f"wrote {json_path} and the section of {results_md}")
