"""Evaluation: embeddings from a checkpoint, a store or an HDF5 file → a report of DESIGN.md §4's metrics.

This module gathers embeddings and orchestrates; the numbers themselves come from the pure functions of
:mod:`distill.metrics`, and neighbour search from :mod:`distill.knn` (FAISS, GPU when present).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill import metrics
from distill.knn import knn_search, labels_at, pair_scores
from featstore.atomic import atomic_path, atomic_write_text
from featstore.errors import InputNotFound, InvalidInput


@dataclass
class EmbeddingSet:
    """What is evaluated: L2-normalisation happens in the metrics, so raw embeddings are kept here."""

    embeddings: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) int64, -1 = unknown
    logits: np.ndarray | None = None  # (N, C) when a classifier head is available
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or self.labels.ndim != 1 or len(self.embeddings) != len(self.labels):
            raise InvalidInput(f"embeddings {self.embeddings.shape} and labels {self.labels.shape} do not match "
                               "(need (N, D) and (N,))")
        if len(self.labels) < 2:
            raise InvalidInput(f"need at least 2 embeddings to evaluate, got {len(self.labels)}")
        if not np.isfinite(self.embeddings).all():
            raise InvalidInput("embeddings contain NaN or infinite values")


def embeddings_from_checkpoint(path: str | Path, dataset_spec: str, split: str = "test",
                               device: str = "auto") -> EmbeddingSet:
    """Run a teacher or student checkpoint over a dataset split (identity views)."""
    from distill.checkpoint import load_checkpoint
    from distill.training import embed_dataset, select_device
    from featstore.datasets import load_dataset

    ckpt = load_checkpoint(path)
    dataset = load_dataset(dataset_spec, split)
    if list(ckpt.dataset.get("image_shape", [])) != list(dataset.image_shape):
        raise InvalidInput(f"{path} expects images {ckpt.dataset.get('image_shape')}, {dataset_spec} gives "
                           f"{list(dataset.image_shape)}")
    embeddings, logits = embed_dataset(ckpt.build_model(), dataset, select_device(device))
    if ckpt.num_classes != dataset.num_classes:
        logits = None  # a head over other classes cannot be scored against these labels
    return EmbeddingSet(embeddings, dataset.labels.copy(), logits,
                        {"kind": ckpt.kind, "path": str(path), "arch": ckpt.arch, "dataset": dataset_spec,
                         "split": split, "fingerprint": dataset.fingerprint()})


def embeddings_from_store(url: str, view: int = 0) -> EmbeddingSet:
    """The stored teacher embeddings of one view (identity by default), read chunk by chunk; logits from
    the stored head, so the teacher's top-1 is reported too."""
    from featstore.store import open_store

    store = open_store(url)
    if not 0 <= view < store.shape.num_views:
        raise InvalidInput(f"view {view} outside the store's {store.shape.num_views} views")
    embeddings = np.empty((store.shape.num_samples, store.shape.dim), dtype=np.float32)
    labels = np.empty(store.shape.num_samples, dtype=np.int64)
    for chunk in range(store.num_chunks):
        start, stop = store.chunk_bounds(chunk)
        rows, chunk_labels, _ = store.read_chunk(chunk)
        embeddings[start:stop] = rows[:, view]
        labels[start:stop] = chunk_labels
    import torch

    from distill.heads import head_from_store

    with torch.no_grad():
        logits = head_from_store(store)(torch.from_numpy(embeddings)).numpy()
    dataset = store.meta.get("dataset", {})
    return EmbeddingSet(embeddings, labels, logits, {"kind": "store", "path": url, "dataset": dataset.get("spec"),
                                                     "split": dataset.get("split"),
                                                     "fingerprint": dataset.get("fingerprint")})


def embeddings_from_h5(path: str | Path) -> EmbeddingSet:
    """HDF5 with datasets ``embeddings`` (N, D) and ``labels`` (N,); anything else is a clear error."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"embeddings file {path} does not exist")
    if not h5py.is_hdf5(path):
        raise InvalidInput(f"{path} is not an HDF5 file")
    with h5py.File(path, "r") as handle:
        for name in ("embeddings", "labels"):
            if name not in handle or not isinstance(handle[name], h5py.Dataset):
                raise InvalidInput(f"{path} has no dataset {name!r} (it needs 'embeddings' (N, D) and 'labels' (N,))")
        emb, lab = handle["embeddings"], handle["labels"]
        if emb.ndim != 2 or lab.ndim != 1 or emb.shape[0] != lab.shape[0]:
            raise InvalidInput(f"{path}: embeddings {emb.shape} and labels {lab.shape} do not match (need (N, D), (N,))")
        if not (np.issubdtype(emb.dtype, np.floating) or np.issubdtype(emb.dtype, np.integer)):
            raise InvalidInput(f"{path}: embeddings have non-numeric dtype {emb.dtype}")
        if not np.issubdtype(lab.dtype, np.integer):
            raise InvalidInput(f"{path}: labels must be integers, got dtype {lab.dtype}")
        embeddings = np.asarray(emb[...], dtype=np.float32)
        labels = np.asarray(lab[...], dtype=np.int64)
    if (labels < -1).any():
        raise InvalidInput(f"{path}: labels must be ≥ 0 (or -1 for unknown)")
    return EmbeddingSet(embeddings, labels, None, {"kind": "embeddings", "path": str(path)})


def retrieval_report(queries: EmbeddingSet, gallery: EmbeddingSet | None = None,
                     use_gpu: bool | None = None) -> dict[str, Any]:
    """Leave-one-out retrieval within ``queries`` or, with ``gallery``, queries against the gallery.

    When both sets are the same samples (same dataset fingerprint and size, e.g. student vs teacher on the
    same split), the query's own counterpart in the gallery is excluded, as in leave-one-out.
    """
    q_known = metrics.known_mask(queries.labels)
    q_emb, q_lab = queries.embeddings[q_known], queries.labels[q_known]
    if gallery is None:
        k = int(max(max(metrics.DEFAULT_KS), metrics.count_relevant(q_lab, q_lab, leave_one_out=True).max(initial=0)))
        k = min(k, len(q_lab) - 1)
        if k < 1:
            raise InvalidInput("retrieval needs at least 2 samples with known labels")
        _, idx = knn_search(q_emb, q_emb, k, exclude_self=True, use_gpu=use_gpu)
        relevant = metrics.count_relevant(q_lab, q_lab, leave_one_out=True)
        return metrics.retrieval_metrics(labels_at(idx, q_lab), q_lab, relevant, ks=_ks(k))
    g_known = metrics.known_mask(gallery.labels)
    g_emb, g_lab = gallery.embeddings[g_known], gallery.labels[g_known]
    if q_emb.shape[1] != g_emb.shape[1]:
        raise InvalidInput(f"query dim {q_emb.shape[1]} ≠ gallery dim {g_emb.shape[1]}: cross-model retrieval "
                           "needs embeddings in one space")
    paired = (queries.source.get("fingerprint") is not None
              and queries.source.get("fingerprint") == gallery.source.get("fingerprint")
              and len(queries.labels) == len(gallery.labels))
    relevant = metrics.count_relevant(q_lab, g_lab, leave_one_out=False)
    if paired:
        relevant = relevant - 1  # the counterpart shares the label and is excluded
    k = min(int(max(max(metrics.DEFAULT_KS), relevant.max(initial=0))), len(g_lab) - int(paired))
    _, idx = knn_search(q_emb, g_emb, k + int(paired), use_gpu=use_gpu)
    if paired:
        own = np.flatnonzero(q_known)  # original index of each query = index of its counterpart
        g_index = np.flatnonzero(g_known)
        idx_orig = np.where(idx >= 0, g_index[np.clip(idx, 0, None)], -1)
        keep = idx_orig != own[:, None]
        # drop the counterpart (or the last entry when the counterpart is not among the k+1)
        keep[keep.all(axis=1), -1] = False
        idx = idx[keep].reshape(len(idx), k)
    return metrics.retrieval_metrics(labels_at(idx, g_lab), q_lab, relevant, ks=_ks(k))


def _ks(k: int) -> tuple[int, ...]:
    return tuple(x for x in metrics.DEFAULT_KS if x <= k) or (1,)


def evaluate(queries: EmbeddingSet, *, gallery: EmbeddingSet | None = None,
             fars: tuple[float, ...] = metrics.FARS, use_gpu: bool | None = None) -> tuple[dict[str, Any], dict]:
    """The report dict of DESIGN.md §4 and the ROC curve(s) for plotting: (report, {name: (far, tar)})."""
    report: dict[str, Any] = {"source": queries.source, "num_samples": int(len(queries.labels))}
    if queries.logits is not None:
        known = metrics.known_mask(queries.labels)
        report["classification"] = {"top1": metrics.top1_accuracy(queries.logits[known], queries.labels[known])}
    report["retrieval"] = retrieval_report(queries, use_gpu=use_gpu)
    genuine, impostor = pair_scores(queries.embeddings, queries.labels)
    report["verification"] = metrics.verification_metrics(genuine, impostor, fars)
    curves = {"": metrics.roc_curve(genuine, impostor)} if len(genuine) and len(impostor) else {}
    if gallery is not None:
        report["cross_model"] = retrieval_report(queries, gallery, use_gpu=use_gpu)
        report["cross_model"]["gallery"] = gallery.source
    return report, curves


def write_report(report: dict[str, Any], path: str | Path) -> None:
    atomic_write_text(path, json.dumps(report, indent=2, sort_keys=False) + "\n")


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


def _get(report: dict[str, Any], path: tuple[str, ...]) -> Any:
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
        lines.append(f"{name:<{name_width}}  " + "  ".join(f"{_fmt(_get(report, p)):>8}" for _, p in columns))
    return "\n".join(lines)


def report_table(report: dict[str, Any]) -> str:
    """A readable multi-section table of one report (percentages)."""
    lines = []
    if "classification" in report:
        lines.append(f"classification  top-1 {_fmt(report['classification']['top1'])}")
    r = report["retrieval"]
    if r.get("recall_at_k"):
        recalls = "  ".join(f"R@{k} {_fmt(v)}" for k, v in r["recall_at_k"].items())
        lines.append(f"retrieval       {recalls}  P@1 {_fmt(r.get('precision_at_1'))}  "
                     f"R-prec {_fmt(r.get('r_precision'))}  MAP@R {_fmt(r.get('map_at_r'))}")
    v = report["verification"]
    tars = "  ".join(f"{k} {_fmt(t)}" for k, t in v["tar_at_far"].items())
    lines.append(f"verification    {v['num_genuine']} genuine / {v['num_impostor']} impostor pairs; "
                 f"AUC {_fmt(v.get('roc_auc'))}  EER {_fmt(v.get('eer'))}")
    lines.append(f"  TAR@FAR       {tars}")
    if "cross_model" in report:
        c = report["cross_model"]
        lines.append(f"cross-model     R@1 {_fmt(c['recall_at_k'].get('1') if c.get('recall_at_k') else None)}  "
                     f"MAP@R {_fmt(c.get('map_at_r'))}")
    return "\n".join(lines)


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "ROC") -> None:
    """ROC curves on a log-FAR axis, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    for name, (far, tar) in curves.items():
        positive = far > 0
        ax.plot(far[positive], tar[positive], label=name or None)
    ax.set_xscale("log")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if any(curves):
        ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
