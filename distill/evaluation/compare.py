"""Comparing saved reports side by side (``fsd compare``).

Rows are metrics, columns are reports, with each report's difference from a baseline and notes where the
reports are not comparable.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from distill.evaluation.tables import SUMMARY_COLUMNS, lookup
from featstore.errors import InputNotFound, InvalidInput

__all__ = ["compare_rows", "read_report", "side_by_side_table"]


def read_report(path: str | Path) -> dict[str, Any]:
    """A report JSON written by ``fsd eval --out``; anything else is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"report {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InvalidInput(f"{path} is not a UTF-8 text file") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if not (
        isinstance(data, dict)
        and (
            (isinstance(data.get("retrieval"), dict) and isinstance(data.get("verification"), dict))
            or isinstance(data.get("ijb"), dict)
        )
    ):
        raise InvalidInput(
            f"{path} is not an fsd eval report (a JSON object with 'retrieval' and 'verification' "
            "sections, or an 'ijb' section, as `fsd eval --out` writes)"
        )
    return data


def _ordered_keys(reports: list[dict[str, Any]], path: tuple[str, ...]) -> list[str]:
    keys: list[str] = []
    for report in reports:
        section = lookup(report, path)
        if isinstance(section, dict):
            keys += [k for k in section if k not in keys]
    return keys


def compare_rows(reports: list[dict[str, Any]]) -> list[tuple[str, tuple[str, ...]]]:
    """The metrics ``fsd compare`` shows, those that at least one report has.

    They are the summary columns, then every Recall@k, P@1, R-precision, EER, TAR at every FAR, LFW accuracy
    and cross-model retrieval.
    """
    rows = list(SUMMARY_COLUMNS)
    rows += [(f"R@{k}", ("retrieval", "recall_at_k", k)) for k in _ordered_keys(reports, ("retrieval", "recall_at_k"))]
    rows += [
        ("P@1", ("retrieval", "precision_at_1")),
        ("R-prec", ("retrieval", "r_precision")),
        ("EER", ("verification", "eer")),
    ]
    rows += [
        (f"TAR@{_short_far(k)}", ("verification", "tar_at_far", k))
        for k in _ordered_keys(reports, ("verification", "tar_at_far"))
    ]
    rows += [
        ("LFW acc", ("verification", "lfw", "accuracy_mean")),
        ("x-R@1", ("cross_model", "recall_at_k", "1")),
        ("x-MAP@R", ("cross_model", "map_at_r")),
    ]
    rows += [("ANN recall", ("retrieval", "index", "recall_vs_exact@k"))]
    rows += [
        (f"IJB TAR@{_short_far(k)}", ("ijb", "verification", "tar_at_far", k))
        for k in _ordered_keys(reports, ("ijb", "verification", "tar_at_far"))
    ]
    rows += [("IJB AUC", ("ijb", "verification", "roc_auc"))]
    for gallery in _ordered_keys(reports, ("ijb", "identification")):
        short = "avg" if gallery == "average" else gallery
        section = ("ijb", "identification", gallery)
        rows += [(f"IJB {short} R{k[5:]}", (*section, k)) for k in _ordered_keys_with_prefix(reports, section, "rank_")]
        rows += [
            (f"IJB {short} TPIR@{_short_far(k)}", section + ("tpir_at_fpir", k))
            for k in _ordered_keys(reports, section + ("tpir_at_fpir",))
        ]
    out, seen = [], set()
    for label, path in rows:
        if path not in seen and any(lookup(r, path) is not None for r in reports):
            seen.add(path)
            out.append((label, path))
    return out


def _ordered_keys_with_prefix(reports: list[dict[str, Any]], path: tuple[str, ...], prefix: str) -> list[str]:
    return [k for k in _ordered_keys(reports, path) if k.startswith(prefix)]


def _short_far(key: str) -> str:
    """'1e-03' -> '1e-3', as the summary column writes it; other keys unchanged."""
    mantissa, sep, exponent = key.partition("e")
    try:
        return f"{mantissa}e{int(exponent)}" if sep else key
    except ValueError:
        return key


def _number(value: Any, name: str, path: tuple[str, ...]) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"{name}: {'.'.join(path)} is {value!r}, not a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise InvalidInput(f"{name}: {'.'.join(path)} is not a finite number")
    return number


def side_by_side_table(reports: dict[str, dict[str, Any]], baseline: str | None = None) -> str:
    """Reports side by side, with each report's difference from ``baseline`` in percentage points.

    Rows are metrics in percent, columns are reports; notes follow where the reports are not comparable
    (different sample counts or verification protocols).

    Args:
        reports: Eval reports by name, in column order.
        baseline: The report the differences are taken against (default: the first).

    Returns:
        The table as text.

    Raises:
        InvalidInput: No report, or a baseline that is not among them.
    """
    if not reports:
        raise InvalidInput("nothing to compare")
    names = list(reports)
    baseline = names[0] if baseline is None else baseline
    if baseline not in reports:
        raise InvalidInput(f"baseline {baseline!r} is not among the reports {names}")
    rows = compare_rows(list(reports.values()))
    values = {name: [_number(lookup(rep, p), name, p) for _, p in rows] for name, rep in reports.items()}
    columns: list[tuple[str, list[str]]] = []
    for name in names:
        columns.append((name, ["—" if v is None else f"{100 * v:.2f}" for v in values[name]]))
        if name != baseline:
            deltas = [
                "—" if v is None or b is None else f"{100 * (v - b):+.2f}"
                for v, b in zip(values[name], values[baseline])
            ]
            columns.append(("Δ", deltas))
    label_width = max([len("metric")] + [len(label) for label, _ in rows])
    widths = [max([len(header)] + [len(c) for c in cells]) for header, cells in columns]
    header = f"{'metric':<{label_width}}  " + "  ".join(f"{h:>{w}}" for (h, _), w in zip(columns, widths))
    lines = [header, "-" * len(header)]
    for i, (label, _) in enumerate(rows):
        lines.append(
            f"{label:<{label_width}}  " + "  ".join(f"{cells[i]:>{w}}" for (_, cells), w in zip(columns, widths))
        )
    if len(names) > 1:
        lines.append(f"Δ: percentage points against {baseline}")
    lines += _comparability_notes(reports)
    return "\n".join(lines)


def _comparability_notes(reports: dict[str, dict[str, Any]]) -> list[str]:
    notes = []
    samples = {name: r.get("num_samples") for name, r in reports.items()}
    if len(set(map(str, samples.values()))) > 1:
        notes.append(
            "note: the reports cover different numbers of samples ("
            + ", ".join(f"{n}: {v}" for n, v in samples.items())
            + ")"
        )

    def field(section: Any, key: str) -> Any:
        """``section[key]`` when section is a dict (a hand-edited report may hold anything), else None."""
        return section.get(key) if isinstance(section, dict) else None

    def data(r: dict[str, Any]) -> str:
        """The evaluated data: dataset spec and split, and its fingerprint when recorded.

        The fingerprint tells apart two data sets of the same name (a folder dataset that changed).
        """
        src = r.get("source")
        name = f"{field(src, 'dataset') or '?'}/{field(src, 'split') or '?'}"
        fingerprint = field(src, "fingerprint")
        return f"{name} ({str(fingerprint)[:12]})" if fingerprint else name

    datasets = {name: data(r) for name, r in reports.items()}
    if len(set(datasets.values())) > 1:
        notes.append(
            "note: the reports come from different datasets ("
            + ", ".join(f"{n}: {v}" for n, v in datasets.items())
            + "); their numbers are not comparable"
        )

    def protocol(r: dict[str, Any]) -> str:
        if isinstance(r.get("ijb"), dict):
            return f"IJB templates ({field(r['ijb'].get('protocol'), 'dataset') or '?'})"
        v = r.get("verification")
        if field(v, "protocol") == "pairs":
            return f"pairs from {field(field(v, 'pairs'), 'file') or '?'}"
        return "all pairs"

    mixes = {name: field(r.get("source"), "th_mix") for name, r in reports.items()}
    if any(w is not None for w in mixes.values()):
        notes.append(
            "note: top-1 is scored on the mixed prediction p' = (1−W)·p_student + W·p_teacher-head for "
            + ", ".join(f"{n} (W = {w})" for n, w in mixes.items() if w is not None)
            + "; on the student head alone for the others"
        )
    protocols = {name: protocol(r) for name, r in reports.items()}
    if len(set(protocols.values())) > 1:
        notes.append(
            "note: verification protocols differ (" + ", ".join(f"{n}: {v}" for n, v in protocols.items()) + ")"
        )
    return notes
