"""Evaluation: embeddings from a checkpoint, a store or an HDF5 file → a report of DESIGN.md §4's metrics.

This module gathers embeddings and orchestrates; the numbers themselves come from the pure functions of
:mod:`distill.evaluation.metrics`, and neighbour search from :mod:`distill.evaluation.search` (FAISS, GPU when present; exact unless an
approximate ``index`` is asked for). IJB-B/C template protocols live in :mod:`distill.evaluation.protocols.ijb`
(:func:`evaluate_ijb` here gathers its report).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill.evaluation import metrics
from distill.evaluation.protocols.pairs import Pairs, pairs_report
from distill.evaluation.search import knn_search, labels_at, recall_vs_exact, resolve_index_params
from distill.evaluation.verification import streaming_verification
from distill.plotting import save_png, subplots
from featstore.atomic import atomic_write_text
from featstore.errors import InputNotFound, InvalidInput


@dataclass
class EmbeddingSet:
    """What is evaluated: L2-normalisation happens in the metrics, so raw embeddings are kept here."""

    embeddings: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) int64, -1 = unknown
    logits: np.ndarray | None = None  # (N, C) when a classifier head is available
    source: dict[str, Any] = field(default_factory=dict)
    names: list[str] | None = None  # (N,) sample names (e.g. LFW image names) for name-based pairs files
    flip: np.ndarray | None = None  # (N, D) embeddings of the horizontally flipped images (IJB flip-sum)

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or self.labels.ndim != 1 or len(self.embeddings) != len(self.labels):
            raise InvalidInput(
                f"embeddings {self.embeddings.shape} and labels {self.labels.shape} do not match (need (N, D) and (N,))"
            )
        if self.names is not None and len(self.names) != len(self.labels):
            raise InvalidInput(f"{len(self.names)} names for {len(self.labels)} embeddings")
        if len(self.labels) < 2:
            raise InvalidInput(f"need at least 2 embeddings to evaluate, got {len(self.labels)}")
        if not np.isfinite(self.embeddings).all():
            raise InvalidInput("embeddings contain NaN or infinite values")
        if self.flip is not None:
            if self.flip.shape != self.embeddings.shape:
                raise InvalidInput(
                    f"flipped embeddings {self.flip.shape} do not match the embeddings {self.embeddings.shape}"
                )
            if not np.isfinite(self.flip).all():
                raise InvalidInput("flipped embeddings contain NaN or infinite values")


def mixed_prediction_logits(ckpt, embeddings: np.ndarray, logits: np.ndarray, weight: float) -> np.ndarray:
    """log p' with p' = (1−w)·softmax(student head) + w·softmax(teacher head on P z) — the paper's mixed
    prediction, from the teacher head and projection a student checkpoint carries."""
    import torch

    from distill.models.heads import frozen_head

    if not 0.0 <= weight <= 1.0:
        raise InvalidInput(f"--th-mix must lie in [0, 1], got {weight}")
    state = ckpt.extra.get("teacher_head")
    if ckpt.kind != "student" or not state:
        raise InvalidInput("--th-mix needs a student checkpoint trained by fsd (it carries the teacher head)")
    head = frozen_head(state["type"], state["weight"], state["bias"], state["scale"], state["margin"])
    with torch.no_grad():
        z = torch.from_numpy(embeddings)
        weight_p = ckpt.extra.get("projection", {}).get("weight")
        if weight_p is not None:
            z = z @ weight_p.t()
        p_th = torch.softmax(head(z), dim=1)
        p_s = torch.softmax(torch.from_numpy(logits), dim=1)
        return torch.log((1 - weight) * p_s + weight * p_th).numpy()


def embeddings_from_checkpoint(
    path: str | Path,
    dataset_spec: str,
    split: str = "test",
    device: str = "auto",
    th_mix: float | None = None,
    trust_code: bool = False,
) -> EmbeddingSet:
    """Run a model over a dataset split (identity views): an fsd teacher or student checkpoint, or any teacher
    spec (``onnx:``, ``timm:``, ``torchscript:``, ``module:function``). ``th_mix`` = w mixes a student's
    prediction with its teacher head's (see :func:`mixed_prediction_logits`)."""
    from distill.models.checkpoint import load_checkpoint
    from distill.models.inference import embed_dataset, select_device
    from distill.models.teachers import is_checkpoint_spec
    from featstore.datasets import load_dataset

    if not is_checkpoint_spec(path):
        if th_mix is not None:
            raise InvalidInput("--th-mix needs a student checkpoint trained by fsd (it carries the teacher head)")
        return embeddings_from_model_spec(str(path), dataset_spec, split, device, trust_code)
    ckpt = load_checkpoint(path)
    dataset = load_dataset(dataset_spec, split)
    if list(ckpt.dataset.get("image_shape", [])) != list(dataset.image_shape):
        raise InvalidInput(
            f"{path} expects images {ckpt.dataset.get('image_shape')}, {dataset_spec} gives {list(dataset.image_shape)}"
        )
    embeddings, logits = embed_dataset(ckpt.build_model(), dataset, select_device(device))
    if th_mix is not None:
        logits = mixed_prediction_logits(ckpt, embeddings, logits, th_mix)
    if ckpt.num_classes != dataset.num_classes:
        logits = None  # a head over other classes cannot be scored against these labels
    return EmbeddingSet(
        embeddings,
        dataset.labels.copy(),
        logits,
        {
            "kind": ckpt.kind,
            "path": str(path),
            "arch": ckpt.arch,
            "dataset": dataset_spec,
            "split": split,
            "fingerprint": dataset.fingerprint(),
        },
    )


def embeddings_from_model_spec(
    spec: str, dataset_spec: str, split: str = "test", device: str = "auto", trust_code: bool = False
) -> EmbeddingSet:
    """A non-checkpoint model (see :func:`distill.models.teachers.load_teacher`) over a dataset split; logits
    only when it has a head over the dataset's classes."""
    from distill.models.inference import embed_source, select_device
    from distill.models.teachers import load_teacher
    from featstore.datasets import load_dataset

    source = load_teacher(spec, trust_code=trust_code)
    dataset = load_dataset(dataset_spec, split)
    if source.input_shape is not None and list(source.input_shape) != list(dataset.image_shape):
        raise InvalidInput(
            f"{spec} expects images {source.input_shape}, {dataset_spec} gives {list(dataset.image_shape)}"
        )
    embeddings, logits = embed_source(source, dataset, select_device(device))
    if logits is not None and logits.shape[1] != dataset.num_classes:
        logits = None
    meta = {"kind": "model", "path": spec, "arch": source.arch, "dataset": dataset_spec, "split": split}
    return EmbeddingSet(embeddings, dataset.labels.copy(), logits, {**meta, "fingerprint": dataset.fingerprint()})


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

    from distill.models.heads import head_from_store

    with torch.no_grad():
        logits = head_from_store(store)(torch.from_numpy(embeddings)).numpy()
    dataset = store.meta.get("dataset", {})
    return EmbeddingSet(
        embeddings,
        labels,
        logits,
        {
            "kind": "store",
            "path": url,
            "dataset": dataset.get("spec"),
            "split": dataset.get("split"),
            "fingerprint": dataset.get("fingerprint"),
        },
    )


def embeddings_from_h5(path: str | Path, *, labels_required: bool = True, with_flip: bool = False) -> EmbeddingSet:
    """HDF5 with datasets ``embeddings`` (N, D) and ``labels`` (N,), optionally ``names`` (N,) strings (for
    name-based pairs files and IJB meta files); anything else is a clear error.

    ``labels_required=False`` (IJB: identities come from the meta files) accepts a file without ``labels``
    (all samples then have the unknown label -1); ``with_flip=True`` also reads the optional
    ``embeddings_flip`` (N, D) (embeddings of the flipped images) into :attr:`EmbeddingSet.flip`.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"embeddings file {path} does not exist")
    if not h5py.is_hdf5(path):
        raise InvalidInput(f"{path} is not an HDF5 file")
    with h5py.File(path, "r") as handle:
        needed = ("embeddings", "labels") if labels_required or "labels" in handle else ("embeddings",)
        for name in needed:
            if name not in handle or not isinstance(handle[name], h5py.Dataset):
                raise InvalidInput(f"{path} has no dataset {name!r} (it needs 'embeddings' (N, D) and 'labels' (N,))")
        emb = handle["embeddings"]
        if "labels" not in needed:
            if emb.ndim != 2:
                raise InvalidInput(f"{path}: embeddings {emb.shape} must be (N, D)")
            lab = np.full(emb.shape[0], -1, dtype=np.int64)
        else:
            lab = handle["labels"]
        if emb.ndim != 2 or lab.ndim != 1 or emb.shape[0] != lab.shape[0]:
            raise InvalidInput(
                f"{path}: embeddings {emb.shape} and labels {lab.shape} do not match (need (N, D), (N,))"
            )
        if not (np.issubdtype(emb.dtype, np.floating) or np.issubdtype(emb.dtype, np.integer)):
            raise InvalidInput(f"{path}: embeddings have non-numeric dtype {emb.dtype}")
        if not np.issubdtype(lab.dtype, np.integer):
            raise InvalidInput(f"{path}: labels must be integers, got dtype {lab.dtype}")
        embeddings = np.asarray(emb[...], dtype=np.float32)
        labels = np.asarray(lab[...], dtype=np.int64)
        names = _h5_names(handle, path, len(labels))
        flip = _h5_flip(handle, path, emb.shape) if with_flip else None
    if (labels < -1).any():
        raise InvalidInput(f"{path}: labels must be ≥ 0 (or -1 for unknown)")
    return EmbeddingSet(embeddings, labels, None, {"kind": "embeddings", "path": str(path)}, names, flip)


def _h5_flip(handle: Any, path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The optional ``embeddings_flip`` dataset: (N, D) numbers like ``embeddings``."""
    import h5py

    if "embeddings_flip" not in handle:
        return None
    ds = handle["embeddings_flip"]
    if not isinstance(ds, h5py.Dataset) or ds.shape != tuple(shape):
        raise InvalidInput(f"{path}: 'embeddings_flip' must be a dataset of shape {tuple(shape)} like 'embeddings'")
    if not (np.issubdtype(ds.dtype, np.floating) or np.issubdtype(ds.dtype, np.integer)):
        raise InvalidInput(f"{path}: embeddings_flip have non-numeric dtype {ds.dtype}")
    return np.asarray(ds[...], dtype=np.float32)


def _h5_names(handle: Any, path: Path, n: int) -> list[str] | None:
    """The optional ``names`` dataset: N strings (variable or fixed length, UTF-8)."""
    import h5py

    if "names" not in handle:
        return None
    ds = handle["names"]
    if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or ds.shape[0] != n:
        raise InvalidInput(f"{path}: 'names' must be a dataset of {n} strings (one per embedding)")
    if h5py.check_string_dtype(ds.dtype) is None and ds.dtype.kind not in "SU":
        raise InvalidInput(f"{path}: 'names' must hold strings, got dtype {ds.dtype}")
    try:
        raw = ds.asstr()[...] if h5py.check_string_dtype(ds.dtype) is not None else ds[...]
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in raw.tolist()]
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: 'names' are not valid UTF-8") from None


def retrieval_report(
    queries: EmbeddingSet,
    gallery: EmbeddingSet | None = None,
    use_gpu: bool | None = None,
    *,
    index: str = "exact",
    index_options: dict[str, Any] | None = None,
    recall_queries: int | None = 1000,
) -> dict[str, Any]:
    """Leave-one-out retrieval within ``queries`` or, with ``gallery``, queries against the gallery.

    When both sets are the same samples (same dataset fingerprint and size, e.g. student vs teacher on the
    same split), the query's own counterpart in the gallery is excluded, as in leave-one-out.

    ``index`` = ``"ivf"``/``"hnsw"`` searches with an approximate FAISS index (``index_options``: ``nlist``,
    ``nprobe``, ``hnsw_m``, ``ef_search`` of :func:`distill.evaluation.search.knn_search`) and adds ``index`` =
    ``{"type", "k", "recall_vs_exact@k", "num_queries_checked", "params"}``: the fraction of the exact top-k
    neighbours the index found, checked on ``recall_queries`` random queries (all when ``None``).
    """
    opts = dict(index_options or {})
    search = dict(use_gpu=use_gpu, index=index, **opts)
    q_known = metrics.known_mask(queries.labels)
    q_emb, q_lab = queries.embeddings[q_known], queries.labels[q_known]
    if gallery is None:
        k = int(max(max(metrics.DEFAULT_KS), metrics.count_relevant(q_lab, q_lab, leave_one_out=True).max(initial=0)))
        k = min(k, len(q_lab) - 1)
        if k < 1:
            raise InvalidInput("retrieval needs at least 2 samples with known labels")
        _, idx = knn_search(q_emb, q_emb, k, exclude_self=True, **search)
        relevant = metrics.count_relevant(q_lab, q_lab, leave_one_out=True)
        report = metrics.retrieval_metrics(_padded(labels_at(idx, q_lab)), q_lab, relevant, ks=metrics.DEFAULT_KS)
        if index != "exact":
            report["index"] = _index_section(q_emb, q_emb, idx, True, index, opts, use_gpu, recall_queries)
        return report
    g_known = metrics.known_mask(gallery.labels)
    g_emb, g_lab = gallery.embeddings[g_known], gallery.labels[g_known]
    if q_emb.shape[1] != g_emb.shape[1]:
        raise InvalidInput(
            f"query dim {q_emb.shape[1]} ≠ gallery dim {g_emb.shape[1]}: cross-model retrieval "
            "needs embeddings in one space"
        )
    paired = (
        queries.source.get("fingerprint") is not None
        and queries.source.get("fingerprint") == gallery.source.get("fingerprint")
        and len(queries.labels) == len(gallery.labels)
    )
    relevant = metrics.count_relevant(q_lab, g_lab, leave_one_out=False)
    if paired:
        relevant = relevant - 1  # the counterpart shares the label and is excluded
    k = min(int(max(max(metrics.DEFAULT_KS), relevant.max(initial=0))), len(g_lab) - int(paired))
    _, idx = knn_search(q_emb, g_emb, k + int(paired), **search)
    index_section = (
        _index_section(q_emb, g_emb, idx, False, index, opts, use_gpu, recall_queries) if index != "exact" else None
    )
    if paired:
        own = np.flatnonzero(q_known)  # original index of each query = index of its counterpart
        g_index = np.flatnonzero(g_known)
        idx_orig = np.where(idx >= 0, g_index[np.clip(idx, 0, None)], -1)
        keep = idx_orig != own[:, None]
        # drop the counterpart (or the last entry when the counterpart is not among the k+1)
        keep[keep.all(axis=1), -1] = False
        idx = idx[keep].reshape(len(idx), k)
    report = metrics.retrieval_metrics(_padded(labels_at(idx, g_lab)), q_lab, relevant, ks=metrics.DEFAULT_KS)
    if index_section is not None:
        report["index"] = index_section
    return report


def _index_section(
    q_emb: np.ndarray,
    g_emb: np.ndarray,
    idx: np.ndarray,
    exclude_self: bool,
    index: str,
    opts: dict[str, Any],
    use_gpu: bool | None,
    recall_queries: int | None,
) -> dict[str, Any]:
    """What the report says about an approximate search: its parameters and its recall against exact search."""
    k = int(idx.shape[1])
    recall, checked = recall_vs_exact(
        q_emb,
        q_emb if exclude_self else g_emb,
        idx,
        exclude_self=exclude_self,
        max_queries=recall_queries,
        use_gpu=use_gpu,
    )
    params = resolve_index_params(index, len(g_emb), min(k + int(exclude_self), len(g_emb)), **opts)
    params.pop("type")
    return {"type": index, "k": k, "recall_vs_exact@k": recall, "num_queries_checked": checked, "params": params}


def _padded(neighbor_labels: np.ndarray) -> np.ndarray:
    """Neighbour labels padded with unknown (-1) columns to the largest default k: with fewer than k others,
    Recall@k ("any of the k nearest others") is over all of them, and every report has the same keys."""
    missing = max(metrics.DEFAULT_KS) - neighbor_labels.shape[1]
    if missing <= 0:
        return neighbor_labels
    return np.pad(neighbor_labels, ((0, 0), (0, missing)), constant_values=metrics.UNKNOWN_LABEL)


def evaluate(
    queries: EmbeddingSet,
    *,
    gallery: EmbeddingSet | None = None,
    fars: tuple[float, ...] = metrics.FARS,
    use_gpu: bool | None = None,
    pairs: Pairs | None = None,
    index: str = "exact",
    index_options: dict[str, Any] | None = None,
    ijb: Any = None,
) -> tuple[dict[str, Any], dict]:
    """The report dict of DESIGN.md §4 and the ROC curve(s) for plotting: (report, {name: (far, tar)}).

    Verification covers every unordered pair of known-label samples, computed exactly in bounded memory by
    :func:`distill.evaluation.verification.streaming_verification`; with ``pairs`` (from :mod:`distill.evaluation.protocols.pairs`) it covers
    those pairs instead and the section carries ``"protocol": "pairs"`` (and ``lfw`` for LFW files).
    ``index``/``index_options``: approximate search for retrieval and cross-model retrieval (see
    :func:`retrieval_report`). ``ijb`` (a :class:`distill.evaluation.protocols.ijb.IjbMeta`): the IJB template protocols instead of
    the per-sample sections — see :func:`evaluate_ijb`.
    """
    if ijb is not None:
        if pairs is not None or gallery is not None:
            raise InvalidInput("the IJB protocol cannot be combined with a pairs file or a cross-model gallery")
        report, curves = evaluate_ijb(queries, ijb, fars=fars, use_gpu=use_gpu)
        return report, curves.get("roc", {})
    report: dict[str, Any] = {"source": queries.source, "num_samples": int(len(queries.labels))}
    if queries.logits is not None:
        known = metrics.known_mask(queries.labels)
        report["classification"] = {"top1": metrics.top1_accuracy(queries.logits[known], queries.labels[known])}
    search = {"index": index, "index_options": index_options}
    if pairs is not None and int(metrics.known_mask(queries.labels).sum()) < 2:
        # a pairs protocol needs no labels: retrieval is then undefined (null), not a reason to refuse the run
        report["retrieval"] = metrics.retrieval_metrics(
            np.zeros((0, 1), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), ks=metrics.DEFAULT_KS
        )
    else:
        report["retrieval"] = retrieval_report(queries, use_gpu=use_gpu, **search)
    report["verification"], roc = verification_report(queries, fars, use_gpu=use_gpu, pairs=pairs)
    curves = {"": roc} if roc[0].size else {}
    if gallery is not None:
        report["cross_model"] = retrieval_report(queries, gallery, use_gpu=use_gpu, **search)
        report["cross_model"]["gallery"] = gallery.source
    return report, curves


def evaluate_ijb(
    queries: EmbeddingSet,
    meta: Any,
    *,
    fars: tuple[float, ...] = metrics.FARS,
    use_gpu: bool | None = None,
    cmc_rank: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The IJB report: ``{"source", "num_samples", "ijb": {"protocol", "verification", "identification"}}``
    (:func:`distill.evaluation.protocols.ijb.ijb_evaluation`) from embeddings named by image (``queries.names``), flip-summed with
    ``queries.flip`` when present. The per-sample retrieval/verification sections are not computed (IJB images
    carry no labels, and all image pairs of IJB-C would be 10^11). Returns ``(report, curves)`` with curves
    ``{"roc": {"": (far, tar)}, "cmc": {"G1": …, "G2": …}}`` (those that exist; CMC up to ``cmc_rank``)."""
    from distill.evaluation.protocols.ijb import ijb_evaluation

    if queries.names is None:
        raise InvalidInput(
            "the IJB protocol matches embeddings to the meta files by image name: the embeddings "
            "need a 'names' dataset (--embeddings FILE.h5)"
        )
    section, raw = ijb_evaluation(
        queries.embeddings, queries.names, meta, flip=queries.flip, fars=fars, use_gpu=use_gpu, cmc_rank=cmc_rank
    )
    report: dict[str, Any] = {"source": queries.source, "num_samples": len(queries.labels), "ijb": section}
    curves: dict[str, Any] = {}
    if "roc" in raw:
        curves["roc"] = {"": raw["roc"]}
    if raw.get("cmc"):
        curves["cmc"] = raw["cmc"]
    return report, curves


def verification_report(
    queries: EmbeddingSet,
    fars: tuple[float, ...] = metrics.FARS,
    *,
    use_gpu: bool | None = None,
    pairs: Pairs | None = None,
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """The ``verification`` section and its ROC curve: all pairs (streaming, exact) or the given ``pairs``."""
    if pairs is not None:
        return pairs_report(queries.embeddings, pairs, fars)
    return streaming_verification(queries.embeddings, queries.labels, fars, use_gpu=use_gpu)


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


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "ROC") -> None:
    """ROC curves on a log-FAR axis, written atomically as PNG."""
    fig, ax = subplots(figsize=(5, 4), dpi=120)
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
    save_png(fig, path)


# --------------------------------------------------------------------------------------------------------------
# CMC curve (rank-k identification accuracy) — drawn by `fsd eval --plot` beside the ROC
# --------------------------------------------------------------------------------------------------------------

CMC_MAX_RANK = 50


def cmc_from_neighbors(neighbor_labels: Any, query_labels: Any, num_relevant: Any, max_rank: int) -> np.ndarray:
    """CMC: for k = 1..max_rank, the fraction of queries whose first same-label neighbour is at rank <= k.

    Same inputs and exclusions as :func:`distill.evaluation.metrics.retrieval_metrics` (queries with R = 0 or an unknown
    label take no part), so ``cmc[k - 1]`` equals Recall@k. Returns a float64 array of length ``max_rank``,
    empty when no query is left.
    """
    nl = np.asarray(neighbor_labels)
    q = np.asarray(query_labels).astype(np.int64, copy=False)
    r = np.asarray(num_relevant).astype(np.int64, copy=False)
    if nl.ndim != 2 or nl.shape[0] != q.size or q.size != r.size:
        raise InvalidInput(
            f"neighbor_labels {nl.shape}, query_labels {q.shape} and num_relevant {r.shape} do not "
            "describe the same queries"
        )
    if max_rank < 1 or nl.shape[1] < max_rank:
        raise InvalidInput(
            f"a CMC up to rank {max_rank} needs at least {max_rank} neighbours per query, got {nl.shape[1]}"
        )
    keep = (r > 0) & (q != metrics.UNKNOWN_LABEL)
    if not keep.any():
        return np.empty(0)
    rel = nl[keep, :max_rank] == q[keep, None]
    hit = rel.any(axis=1)
    first = np.argmax(rel, axis=1)[hit]  # 0-based rank of the first hit
    return np.cumsum(np.bincount(first, minlength=max_rank)) / int(keep.sum())


def cmc_curve(queries: EmbeddingSet, max_rank: int = CMC_MAX_RANK, use_gpu: bool | None = None) -> np.ndarray:
    """Leave-one-out CMC of ``queries`` up to rank min(max_rank, N - 1), N = known-label samples."""
    known = metrics.known_mask(queries.labels)
    emb, lab = queries.embeddings[known], queries.labels[known]
    k = min(max_rank, len(lab) - 1)
    if k < 1:
        return np.empty(0)
    _, idx = knn_search(emb, emb, k, exclude_self=True, use_gpu=use_gpu)
    relevant = metrics.count_relevant(lab, lab, leave_one_out=True)
    return cmc_from_neighbors(labels_at(idx, lab), lab, relevant, k)


def plot_cmc(curves: dict[str, np.ndarray], path: str | Path, title: str = "CMC") -> None:
    """CMC curves (identification rate against rank), written atomically as PNG."""
    fig, ax = subplots(figsize=(5, 4), dpi=120)
    for name, cmc in curves.items():
        ax.plot(np.arange(1, len(cmc) + 1), cmc, marker=".", label=name or None)
    if not any(len(c) for c in curves.values()):
        ax.text(0.5, 0.5, "no query has a same-label neighbour", ha="center", va="center", transform=ax.transAxes)
    lowest = min((float(np.min(c)) for c in curves.values() if len(c)), default=0.0)
    ax.set_ylim(max(0.0, lowest - 0.05), 1.005)
    ax.set_xlabel("rank")
    ax.set_ylabel("identification rate")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if any(curves):
        ax.legend(loc="lower right")
    save_png(fig, path)


# --------------------------------------------------------------------------------------------------------------
# side-by-side comparison of saved reports (`fsd compare`)
# --------------------------------------------------------------------------------------------------------------


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
        section = _get(report, path)
        if isinstance(section, dict):
            keys += [k for k in section if k not in keys]
    return keys


def compare_rows(reports: list[dict[str, Any]]) -> list[tuple[str, tuple[str, ...]]]:
    """The metrics ``fsd compare`` shows: the summary columns, then every Recall@k, P@1, R-precision, EER,
    TAR at every FAR, LFW accuracy and cross-model retrieval — those that at least one report has."""
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
        if path not in seen and any(_get(r, path) is not None for r in reports):
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
    """Reports side by side (rows = metrics in percent, columns = reports) with each report's difference
    from ``baseline`` (default: the first) in percentage points; notes where the reports are not comparable
    (different sample counts or verification protocols)."""
    if not reports:
        raise InvalidInput("nothing to compare")
    names = list(reports)
    baseline = names[0] if baseline is None else baseline
    if baseline not in reports:
        raise InvalidInput(f"baseline {baseline!r} is not among the reports {names}")
    rows = compare_rows(list(reports.values()))
    values = {name: [_number(_get(rep, p), name, p) for _, p in rows] for name, rep in reports.items()}
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

    def protocol(r: dict[str, Any]) -> str:
        if isinstance(r.get("ijb"), dict):
            return f"IJB templates ({field(r['ijb'].get('protocol'), 'dataset') or '?'})"
        v = r.get("verification")
        if field(v, "protocol") == "pairs":
            return f"pairs from {field(field(v, 'pairs'), 'file') or '?'}"
        return "all pairs"

    protocols = {name: protocol(r) for name, r in reports.items()}
    if len(set(protocols.values())) > 1:
        notes.append(
            "note: verification protocols differ (" + ", ".join(f"{n}: {v}" for n, v in protocols.items()) + ")"
        )
    return notes
