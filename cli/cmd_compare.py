"""``fsd compare``: saved eval reports side by side, with differences from a baseline."""

from __future__ import annotations

from pathlib import Path

import click

import distill.evaluation as ev


@click.command("compare")
@click.argument("reports", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--baseline",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Report the differences are taken against (default: the first; added if not listed).",
)
def command(reports, baseline):
    """Print eval reports (written by fsd eval --out) side by side.

    One row per metric (in percent), one column per report (named by file stem), and each report's difference
    Δ from the baseline in percentage points.

    Example: fsd compare teacher.json kd.json th-kd.json --baseline teacher.json
    """
    paths = list(reports)
    if baseline is not None:
        matches = [p for p in paths if _same_file(p, baseline)]
        if not matches:
            paths.insert(0, baseline)
            matches = [baseline]
        baseline = matches[0]
    loaded = {p: ev.read_report(p) for p in paths}
    names = _column_names(list(loaded))
    table = ev.side_by_side_table(
        {names[p]: loaded[p] for p in loaded}, names[baseline] if baseline is not None else None
    )
    click.echo(table)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _column_names(paths: list[Path]) -> dict[Path, str]:
    """File stems, or the paths as given where stems collide."""
    stems = [p.stem for p in paths]
    return {p: (p.stem if stems.count(p.stem) == 1 else str(p)) for p in paths}
