"""IJB-B / IJB-C template protocols.

The official meta files, template embeddings, 1:1 verification over the template pairs and 1:N identification
(closed-set CMC, open-set TPIR@FPIR) against galleries G1 and G2.

One responsibility: from image embeddings (matched to the meta files by image name) to the ``ijb`` section of
an evaluation report. Reading images or running a model is not done here: the embeddings come from an HDF5 file
whose ``names`` dataset holds the image names of the meta files' first column.

The meta files are read by :mod:`distill.evaluation.protocols.ijb_meta` (:func:`read_ijb_meta`, re-exported here).

Template rule (as insightface's IJB evaluation): face feature f = embedding (+ its flipped-image embedding when
given: flip-sum, "F2"), optionally L2-normalised (off by default: the norm acts as a quality, "N0"), times the
detector score when given; media feature = mean of the template's faces in that media; template feature = mean
of its media features, L2-normalised (an all-zero template stays zero and scores 0 against everything).

Metrics are docs/evaluation.md's: 1:1 uses :func:`distill.evaluation.metrics.verification_metrics` on the template-pair cosine
scores; 1:N is defined in :func:`distill.evaluation.metrics.identification_metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from distill.evaluation import metrics
from distill.evaluation.metrics.identification import FPIRS, RANKS, identification_metrics
from distill.evaluation.protocols.ijb_meta import IjbMeta, read_ijb_meta
from distill.evaluation.protocols.pairs import pair_verification
from distill.evaluation.search import knn_search
from distill.evaluation.validate import as_matrix, check_ks, int_vector, l2_normalize
from featstore.errors import InvalidInput

__all__ = [
    "FPIRS",
    "RANKS",
    "IjbMeta",
    "face_rows",
    "identification_metrics",
    "ijb_evaluation",
    "ijb_identification",
    "ijb_verification",
    "read_ijb_meta",
    "template_embeddings",
    "template_rows",
]


def face_rows(meta: IjbMeta, names: Sequence[str]) -> np.ndarray:
    """Row of ``names`` (the embeddings' image names) holding each meta face.

    A face is matched by exact name, else by the base name (``'loose_crop/1.jpg'`` matches ``'1.jpg'``) when that is unambiguous — and, for a
    face named with folders (``'img/5.jpg'``), only by an embedding name ending in that path (never ``'frames/5.jpg'``).
    Embeddings no face uses are ignored; a face without an embedding, or one matching several, is an
    :class:`InvalidInput`.
    """
    exact: dict[str, int] = {}
    for row, name in enumerate(names):
        exact[name] = -1 if name in exact else row
    base: dict[str, int] = {}
    for row, name in enumerate(names):
        b = PurePosixPath(name.replace("\\", "/")).name
        base[b] = -1 if b in base else row
    face_shown = meta.files.get("faces", "face_tid_mid")
    rows = np.empty(len(meta.face_names), dtype=np.int64)
    for i, face in enumerate(meta.face_names):
        row = exact.get(face)
        if row is None:
            row = base.get(PurePosixPath(face).name)
            if row is not None and row >= 0 and "/" in face:  # a face with folders needs the same folders
                name = names[row].replace("\\", "/")
                row = row if name.endswith("/" + face) else None
        if row is None:
            raise InvalidInput(
                f"{face_shown} line {meta.face_lines[i]}: image {face!r} has no embedding (not among "
                f"the {len(names)} names of the embeddings file)"
            )
        if row < 0:
            raise InvalidInput(
                f"{face_shown} line {meta.face_lines[i]}: image {face!r} matches several embedding names"
            )
        rows[i] = row
    return rows


def _id_vector(x: Any, n: int, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.shape != (n,) or (a.size and not np.issubdtype(a.dtype, np.integer)):
        raise InvalidInput(f"{name} must be {n} integers (one per face), got shape {a.shape}, dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def template_embeddings(
    embeddings: Any,
    names: Sequence[str] | None,
    face_template: Any,
    face_media: Any,
    quality: Any = None,
    flip: Any = None,
    *,
    normalize_faces: bool = False,
    rows: Any = None,
    block: int = 16384,
) -> tuple[np.ndarray, np.ndarray]:
    """Template features from face features.

    Returns ``(template_ids, feats)`` with ``template_ids`` the sorted unique template ids (int64) and ``feats`` ``(T,
    D)`` float32 rows of unit norm (zero rows stay zero).

    Inputs are aligned per face (face i): ``names`` ``(F,)`` image names (for messages only; may be ``None``);
    ``face_template``/``face_media`` ``(F,)`` integer ids; ``quality`` ``(F,)`` non-negative detector scores
    (weights). ``embeddings`` ``(N, D)`` and ``flip`` (``(N, D)`` embeddings of the flipped images) hold face
    i in row ``rows[i]`` (default: row i, N = F) — so a file's rows need not be copied into face order.

    Rule: f_i = (e_i + flip_i) [/ ||·|| if ``normalize_faces``] · quality_i; media feature = mean of f_i over
    the template's faces in that media; template feature = mean over its media, L2-normalised. Computed as
    the equal sum  Σ_i f_i / (#faces in i's media · #media in i's template)  in float64, ``block`` faces at a
    time, so memory beyond the inputs is O(T·D + block·D).
    """
    x = as_matrix(embeddings, "embeddings")
    t = np.asarray(face_template)
    n = t.shape[0] if t.ndim == 1 else -1
    t = _id_vector(face_template, n, "face_template")
    m = _id_vector(face_media, n, "face_media")
    if n == 0:
        raise InvalidInput("no faces: template embeddings need at least one")
    if names is not None and len(names) != n:
        raise InvalidInput(f"{len(names)} names for {n} faces")
    if rows is None:
        if x.shape[0] != n:
            raise InvalidInput(f"{x.shape[0]} embeddings for {n} faces")
        r = np.arange(n)
    else:
        r = _id_vector(rows, n, "rows")
        if r.min() < 0 or r.max() >= x.shape[0]:
            raise InvalidInput(f"face rows out of range for {x.shape[0]} embeddings")
    f = None
    if flip is not None:
        f = as_matrix(flip, "flipped embeddings")
        if f.shape != x.shape:
            raise InvalidInput(f"flipped embeddings {f.shape} do not match the embeddings {x.shape}")
    weight = np.ones(n, dtype=np.float64)
    if quality is not None:
        q = np.asarray(quality, dtype=np.float64)
        if q.shape != (n,):
            raise InvalidInput(f"quality must hold {n} scores (one per face), got shape {q.shape}")
        bad = np.flatnonzero(~np.isfinite(q) | (q < 0))
        if bad.size:
            who = f"face {names[bad[0]]!r}" if names is not None else f"face {bad[0]}"
            raise InvalidInput(f"quality of {who} is {q[bad[0]]!r}; scores must be finite and >= 0")
        weight = q.copy()
    block = int(block) if int(block) > 0 else 16384

    template_ids, t_idx = np.unique(t, return_inverse=True)
    t_idx = t_idx.ravel()
    media, m_idx, m_faces = np.unique(np.stack([t_idx, m], axis=1), axis=0, return_inverse=True, return_counts=True)
    m_idx = m_idx.ravel()
    media_per_template = np.bincount(media[:, 0], minlength=template_ids.size)
    weight /= m_faces[m_idx] * media_per_template[t_idx]

    sums = np.zeros((template_ids.size, x.shape[1]), dtype=np.float64)
    for start in range(0, n, block):
        sl = slice(start, start + block)
        xb = x[r[sl]].astype(np.float64)
        if f is not None:
            xb += f[r[sl]]
        if normalize_faces:
            norms = np.linalg.norm(xb, axis=1, keepdims=True)
            xb /= np.where(norms > 0, norms, 1.0)
        xb *= weight[sl, None]
        tb = t_idx[sl]
        order = np.argsort(tb, kind="stable")
        tb_sorted = tb[order]
        starts = np.flatnonzero(np.r_[True, tb_sorted[1:] != tb_sorted[:-1]])
        sums[tb_sorted[starts]] += np.add.reduceat(xb[order], starts, axis=0)  # template ids unique per block
    return template_ids.astype(np.int64), l2_normalize(sums)


def template_rows(template_ids: np.ndarray, wanted: Any, what: str = "template") -> np.ndarray:
    """Rows of ``wanted`` template ids in the sorted ``template_ids`` (as :func:`template_embeddings` returns).

    An id that is not there is an :class:`InvalidInput`.
    """
    ids = np.asarray(template_ids, dtype=np.int64)
    w = np.asarray(wanted, dtype=np.int64)
    pos = np.searchsorted(ids, w)
    pos_c = np.clip(pos, 0, max(ids.size - 1, 0))
    ok = (pos < ids.size) & (ids[pos_c] == w) if ids.size else np.zeros(w.shape, dtype=bool)
    if not np.all(ok):
        bad = w[~ok].ravel()[0]
        raise InvalidInput(f"{what} {bad} has no template embedding (no face of it among the faces)")
    return pos


def ijb_verification(
    template_feats: Any, pairs: Any, labels: Any, fars: Sequence[float] = metrics.FARS
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """TAR@FAR, ROC AUC and EER over template pairs.

    The metrics are those of docs/evaluation.md (:func:`distill.evaluation.metrics.verification_metrics`). ``pairs`` are
    ``(P, 2)`` rows of ``template_feats``, ``labels`` ``(P,)`` 1/True = same subject, 0/False = different (anything else
    is an error). Returns ``(report, (far, tar))``; the report also has ``num_pairs``.
    """
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise InvalidInput(f"labels must be 1-D, got shape {lab.shape}")
    if lab.size and lab.dtype != bool:
        if not np.issubdtype(lab.dtype, np.integer):
            raise InvalidInput(f"pair labels must be 1 (same) or 0 (different), got dtype {lab.dtype}")
        unknown = lab[(lab != 0) & (lab != 1)]
        if unknown.size:
            raise InvalidInput(f"pair labels must be 1 (same) or 0 (different), got {int(unknown[0])}")
        lab = lab == 1
    report, curve = pair_verification(template_feats, np.asarray(pairs), lab, fars)
    return {"num_pairs": int(lab.size), **report}, curve


def _search_gallery(
    gallery_feats: Any, probe_feats: Any, k: int, use_gpu: bool | None
) -> tuple[np.ndarray, np.ndarray]:
    return knn_search(probe_feats, gallery_feats, k, use_gpu=use_gpu)  # exact: identification must not approximate


def ijb_identification(
    gallery_feats: Any,
    gallery_subjects: Any,
    probe_feats: Any,
    probe_subjects: Any,
    ranks: Sequence[int] = RANKS,
    fpirs: Sequence[float] = FPIRS,
    *,
    use_gpu: bool | None = None,
) -> dict[str, Any]:
    """1:N identification of probe templates against one gallery by exact cosine search.

    The metrics are :func:`identification_metrics` (probes whose subject is not in this gallery are its non-mated
    probes).
    """
    report, _ = _identify(gallery_feats, gallery_subjects, probe_feats, probe_subjects, ranks, fpirs, 0, use_gpu)
    return report


def _identify(
    gallery_feats: Any,
    gallery_subjects: Any,
    probe_feats: Any,
    probe_subjects: Any,
    ranks: Sequence[int],
    fpirs: Sequence[float],
    cmc_rank: int,
    use_gpu: bool | None,
) -> tuple[dict[str, Any], np.ndarray]:
    """The report and the CMC up to ``cmc_rank`` (0: none) of the mated probes."""
    g = as_matrix(gallery_feats, "gallery_feats")
    gs = int_vector(gallery_subjects, "gallery_subjects")
    ps = int_vector(probe_subjects, "probe_subjects")
    if gs.size != g.shape[0]:
        raise InvalidInput(f"{gs.size} gallery subjects for {g.shape[0]} gallery templates")
    p = as_matrix(probe_feats, "probe_feats")
    if ps.size != p.shape[0]:
        raise InvalidInput(f"{ps.size} probe subjects for {p.shape[0]} probe templates")
    ranks_checked = check_ks(ranks)
    k = min(max(max(ranks_checked), cmc_rank), g.shape[0]) if g.shape[0] else 1
    scores, idx = _search_gallery(g, p, k, use_gpu)
    neighbor_subjects = gs[idx] if gs.size else np.zeros((ps.size, 0), dtype=np.int64)
    report = identification_metrics(neighbor_subjects, scores[:, 0], ps, gs, ranks_checked, fpirs)
    cmc = np.empty(0)
    if cmc_rank and report["num_mated"]:
        mated = np.isin(ps, gs)
        hit = neighbor_subjects[mated] == ps[mated, None]
        first = np.where(hit.any(axis=1), np.argmax(hit, axis=1), k)
        cmc = np.cumsum(np.bincount(first, minlength=k + 1)[:k]) / int(mated.sum())
        if cmc_rank > k:  # a gallery smaller than the plot: every mate is found by rank G
            cmc = np.concatenate([cmc, np.full(cmc_rank - k, cmc[-1] if cmc.size else 0.0)])
    return report, cmc


def _average(reports: dict[str, dict[str, Any]], ranks: Sequence[int]) -> dict[str, Any]:
    """Insightface's summary of G1 and G2.

    Rank-k is pooled over both galleries' mated probes (their hits over their count), TPIR is the mean of the two
    galleries' values (``None`` if either is).
    """
    g1, g2 = reports["G1"], reports["G2"]
    mated = g1["num_mated"] + g2["num_mated"]
    out: dict[str, Any] = {"num_mated": mated}
    for r in ranks:
        key = f"rank_{r}"
        hits = sum(rep[key] * rep["num_mated"] for rep in (g1, g2) if rep[key] is not None)
        out[key] = hits / mated if mated else None
    out["tpir_at_fpir"] = {
        key: (
            None
            if g1["tpir_at_fpir"][key] is None or g2["tpir_at_fpir"][key] is None
            else (g1["tpir_at_fpir"][key] + g2["tpir_at_fpir"][key]) / 2
        )
        for key in g1["tpir_at_fpir"]
    }
    return out


def ijb_evaluation(
    embeddings: Any,
    names: Sequence[str],
    meta: IjbMeta,
    *,
    flip: Any = None,
    fars: Sequence[float] = metrics.FARS,
    ranks: Sequence[int] = RANKS,
    fpirs: Sequence[float] = FPIRS,
    normalize_faces: bool = False,
    use_gpu: bool | None = None,
    cmc_rank: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``ijb`` report section and its curves for image ``embeddings`` named ``names``.

    ``flip`` holds optional embeddings of the flipped images, same rows.

    Returns ``(section, curves)``: ``section`` = ``{"protocol": meta.describe() + template options,
    "verification": {...} (when the pair file exists), "identification": {"G1", "G2", "average"} (when the 1:N
    files exist)}``; ``curves`` = ``{"roc": (far, tar)}`` and ``{"cmc": {"G1": …, "G2": …}}`` up to
    ``cmc_rank`` when asked.
    """
    x = as_matrix(embeddings, "embeddings")
    if len(names) != x.shape[0]:
        raise InvalidInput(f"{len(names)} names for {x.shape[0]} embeddings")
    rows = face_rows(meta, names)
    template_ids, feats = template_embeddings(
        x,
        meta.face_names,
        meta.face_template,
        meta.face_media,
        meta.quality,
        flip,
        normalize_faces=normalize_faces,
        rows=rows,
    )
    protocol = meta.describe()
    protocol["template"] = {
        "flip": flip is not None,
        "quality": meta.quality is not None,
        "normalize_faces": bool(normalize_faces),
        "rule": "mean over media of per-media mean face features, L2-normalised",
    }
    section: dict[str, Any] = {"protocol": protocol}
    curves: dict[str, Any] = {}
    if meta.pairs is not None:
        where = meta.files.get("pairs", "pairs")
        rows_pairs = template_rows(template_ids, meta.pairs, f"{where}: template")
        section["verification"], roc = ijb_verification(feats, rows_pairs, meta.pair_labels, fars)
        if roc[0].size:
            curves["roc"] = roc
    if meta.probes is not None:
        probe_t, probe_s = meta.probes
        probe_feats = feats[template_rows(template_ids, probe_t, "probe template")]
        ident: dict[str, Any] = {}
        cmcs: dict[str, np.ndarray] = {}
        for name, (gal_t, gal_s) in meta.galleries.items():
            gal_feats = feats[template_rows(template_ids, gal_t, f"gallery {name} template")]
            ident[name], cmcs[name] = _identify(gal_feats, gal_s, probe_feats, probe_s, ranks, fpirs, cmc_rank, use_gpu)
        ident["average"] = _average(ident, check_ks(ranks))
        section["identification"] = ident
        if cmc_rank:
            curves["cmc"] = {k: v for k, v in cmcs.items() if v.size}
    return section, curves
