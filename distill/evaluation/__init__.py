"""Evaluation: FAISS search, metrics, protocols, reports, tables and plots.

The metrics cover retrieval, verification and identification; the protocols are pairs, LFW and IJB. This
room never imports training.

What a script needs is importable from here (loaded on first use, so ``import distill.evaluation`` stays cheap
and FAISS is imported only when a search runs)::

    from distill.evaluation import EvalRequest, run_eval

    result = run_eval(EvalRequest(embeddings="embeddings.h5", pairs="pairs.txt", out="report.json"), echo=print)
    result.report["verification"]["tar_at_far"]["1e-03"]

or, from arrays, ``evaluate(EmbeddingSet(embeddings, labels))`` and ``report_table(report)``.

Rooms: :mod:`~distill.evaluation.request` (one request, one run: what ``fsd eval`` calls),
:mod:`~distill.evaluation.sources` (where embeddings come from), :mod:`~distill.evaluation.report` (building a report), :mod:`~distill.evaluation.metrics` (pure functions and their name → function table),
:mod:`~distill.evaluation.search` (the one FAISS import), :mod:`~distill.evaluation.verification` (exact
all-pairs verification in bounded memory, over :mod:`~distill.evaluation.pair_tiles`), :mod:`~distill.evaluation.protocols` (pairs/LFW, IJB),
:mod:`~distill.evaluation.tables`, :mod:`~distill.evaluation.plots`, :mod:`~distill.evaluation.compare`,
:mod:`~distill.evaluation.validate` (shared argument checks) and :mod:`~distill.evaluation.testing`
(brute-force reference implementations for tests).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featstore._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "EvalRequest": "request",
    "EvalResult": "request",
    "run_eval": "request",
    "EmbeddingSet": "sources",
    "embeddings_from_checkpoint": "sources",
    "embeddings_from_h5": "sources",
    "embeddings_from_store": "sources",
    "mixed_prediction_logits": "sources",
    "CMC_MAX_RANK": "report",
    "cmc_curve": "report",
    "evaluate": "report",
    "evaluate_ijb": "report",
    "retrieval_report": "report",
    "verification_report": "report",
    "write_report": "report",
    "SUMMARY_COLUMNS": "tables",
    "comparison_table": "tables",
    "report_table": "tables",
    "plot_cmc": "plots",
    "plot_roc": "plots",
    "read_report": "compare",
    "side_by_side_table": "compare",
    "FARS": "metrics",
    "METRICS": "metrics",
    "cmc_from_neighbors": "metrics",
    "get_function_dict": "metrics",
    "knn_search": "search",
    "streaming_verification": "verification",
    "Pairs": "protocols.pairs",
    "read_pairs": "protocols.pairs",
    "resolve_pairs": "protocols.pairs",
    "IjbMeta": "protocols.ijb_meta",
    "read_ijb_meta": "protocols.ijb_meta",
}

__all__ = [
    "CMC_MAX_RANK",
    "EmbeddingSet",
    "EvalRequest",
    "EvalResult",
    "FARS",
    "IjbMeta",
    "METRICS",
    "Pairs",
    "SUMMARY_COLUMNS",
    "cmc_curve",
    "cmc_from_neighbors",
    "comparison_table",
    "embeddings_from_checkpoint",
    "embeddings_from_h5",
    "embeddings_from_store",
    "evaluate",
    "evaluate_ijb",
    "get_function_dict",
    "knn_search",
    "mixed_prediction_logits",
    "plot_cmc",
    "plot_roc",
    "read_ijb_meta",
    "read_pairs",
    "read_report",
    "report_table",
    "resolve_pairs",
    "retrieval_report",
    "run_eval",
    "side_by_side_table",
    "streaming_verification",
    "verification_report",
    "write_report",
]

if TYPE_CHECKING:  # what static tools see; at run time the names load lazily through __getattr__
    from distill.evaluation.compare import read_report, side_by_side_table
    from distill.evaluation.metrics import FARS, METRICS, cmc_from_neighbors, get_function_dict
    from distill.evaluation.plots import plot_cmc, plot_roc
    from distill.evaluation.protocols.ijb_meta import IjbMeta, read_ijb_meta
    from distill.evaluation.protocols.pairs import Pairs, read_pairs, resolve_pairs
    from distill.evaluation.report import (
        CMC_MAX_RANK,
        cmc_curve,
        evaluate,
        evaluate_ijb,
        retrieval_report,
        verification_report,
        write_report,
    )
    from distill.evaluation.request import EvalRequest, EvalResult, run_eval
    from distill.evaluation.search import knn_search
    from distill.evaluation.sources import (
        EmbeddingSet,
        embeddings_from_checkpoint,
        embeddings_from_h5,
        embeddings_from_store,
        mixed_prediction_logits,
    )
    from distill.evaluation.tables import SUMMARY_COLUMNS, comparison_table, report_table
    from distill.evaluation.verification import streaming_verification


__getattr__, __dir__ = lazy_exports(__name__, {name: f"{__name__}.{module}" for name, module in _EXPORTS.items()})
