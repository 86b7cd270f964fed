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


def publish(section: str, heading: str, results: dict, json_path: Path, results_md: Path, write: bool) -> None:
    """Print a benchmark's section and, unless told not to, write its JSON and its part of RESULTS.md — so the
    file holds exactly what the script printed."""
    import json

    print(section)
    if write:
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        replace_section(results_md, heading, section)
        print(f"wrote {json_path} and the section of {results_md}")
