"""Text tables of evaluation reports.

One report's sections (``fsd eval``) and one line per report (the demo's comparison). Values are shown in
percent; ``—`` marks a value a report does not have.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SUMMARY_COLUMNS", "comparison_table", "lookup", "protocol_lines", "report_table"]


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    return f"{100 * value:6.2f}" if isinstance(value, float) else str(value)


SUMMARY_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("top-1", ("classification", "top1")),
    ("R@1", ("retrieval", "recall_at_k", "1")),
    ("MAP@R", ("retrieval", "map_at_r")),
    ("TAR@1e-3", ("verification", "tar_at_far", "1e-03")),
    ("AUC", ("verification", "roc_auc")),
)


def lookup(report: dict[str, Any], path: tuple[str, ...]) -> Any:
    """``report[path[0]][path[1]]…``, or ``None`` where a key is missing or a level is not a dict."""
    for key in path:
        if not isinstance(report, dict) or key not in report:
            return None
        report = report[key]
    return report


def comparison_table(rows: dict[str, dict[str, Any]], columns=SUMMARY_COLUMNS) -> str:
    """One line per named report, metrics in percent: the table people read."""
    name_width = max([len("model")] + [len(n) for n in rows])
    header = f"{'model':<{name_width}}  " + "  ".join(f"{c:>8}" for c, _ in columns)
    lines = [header, "-" * len(header)]
    for name, report in rows.items():
        lines.append(f"{name:<{name_width}}  " + "  ".join(f"{_fmt(lookup(report, p)):>8}" for _, p in columns))
    return "\n".join(lines)


def report_table(report: dict[str, Any]) -> str:
    """A readable multi-section table of one report (percentages)."""
    lines = []
    if "classification" in report:
        lines.append(f"classification  top-1 {_fmt(report['classification']['top1'])}")
    r = report.get("retrieval")
    if r is not None and r.get("recall_at_k"):
        recalls = "  ".join(f"R@{k} {_fmt(v)}" for k, v in r["recall_at_k"].items())
        lines.append(
            f"retrieval       {recalls}  P@1 {_fmt(r.get('precision_at_1'))}  "
            f"R-prec {_fmt(r.get('r_precision'))}  MAP@R {_fmt(r.get('map_at_r'))}"
        )
    if r is not None and r.get("index"):
        lines.append(_index_line(r["index"]))
    v = report.get("verification")
    if v is not None:
        lines += _verification_lines("verification", "pairs", v)
    if "cross_model" in report:
        c = report["cross_model"]
        lines.append(
            f"cross-model     R@1 {_fmt(c['recall_at_k'].get('1') if c.get('recall_at_k') else None)}  "
            f"MAP@R {_fmt(c.get('map_at_r'))}"
        )
        if c.get("index"):
            lines.append(_index_line(c["index"]))
    if "ijb" in report:
        lines += _ijb_lines(report["ijb"])
    return "\n".join(lines)


def _verification_lines(title: str, what: str, v: dict[str, Any]) -> list[str]:
    tars = "  ".join(f"{k} {_fmt(t)}" for k, t in v["tar_at_far"].items())
    return [
        (
            f"{title:<15} {v['num_genuine']} genuine / {v['num_impostor']} impostor {what}; "
            f"AUC {_fmt(v.get('roc_auc'))}  EER {_fmt(v.get('eer'))}"
        ),
        f"  TAR@FAR       {tars}",
    ]


def _index_line(section: dict[str, Any]) -> str:
    params = ", ".join(f"{k}={v}" for k, v in section.get("params", {}).items())
    return (
        f"  index         {section['type']} ({params}): recall vs exact@{section['k']} "
        f"{_fmt(section.get('recall_vs_exact@k'))} on {section.get('num_queries_checked')} queries"
    )


def _ijb_lines(ijb: dict[str, Any]) -> list[str]:
    p = ijb.get("protocol", {})
    t = p.get("template", {})
    lines = [
        (
            f"IJB             {p.get('dataset')}: {p.get('num_faces')} faces, {p.get('num_templates')} "
            f"templates (flip-sum {'on' if t.get('flip') else 'off'}, quality weights "
            f"{'on' if t.get('quality') else 'off'})"
        )
    ]
    if "verification" in ijb:
        lines += _verification_lines("IJB 1:1", "template pairs", ijb["verification"])
    for name, g in ijb.get("identification", {}).items():
        ranks = "  ".join(f"rank-{k[5:]} {_fmt(v)}" for k, v in g.items() if k.startswith("rank_"))
        tpirs = "  ".join(f"{k} {_fmt(v)}" for k, v in g["tpir_at_fpir"].items())
        lines.append(f"IJB 1:N {name:<7} {ranks}  TPIR@FPIR {tpirs}")
    return lines


def protocol_lines(verification: dict[str, Any]) -> list[str]:
    """What the report table does not say about the pairs protocol (``fsd eval`` prints them below it)."""
    if verification.get("protocol") != "pairs":
        return []
    p = verification["pairs"]
    lines = [f"  protocol      {p['num_pairs']} pairs from {p['file']} ({p['format']} format)"]
    lfw = verification.get("lfw")
    if lfw:
        lines.append(
            f"  LFW accuracy  {100 * lfw['accuracy_mean']:.2f} ± {100 * lfw['accuracy_std']:.2f} "
            f"(mean ± std over {lfw['folds']} folds, threshold chosen on the other folds)"
        )
    return lines
