"""One helper shared by the benchmark scripts: replace their own section of ``benchmarks/RESULTS.md``."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, heading: str, section: str) -> None:
    """Replace the section starting at ``heading`` (up to the next '## ' heading) with ``section``, or append it.

    Each script owns one section, so re-running one never touches the figures another wrote.
    """
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    start = text.find(heading)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        nxt = text.find("\n## ", start + len(heading))
        text = text[:start] + section + ("" if nxt < 0 else text[nxt + 1 :])
    path.write_text(text)
