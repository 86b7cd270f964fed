"""IJB-B / IJB-C template protocols: the official meta files, template embeddings, 1:1 verification over the
template pairs and 1:N identification (closed-set CMC, open-set TPIR@FPIR) against galleries G1 and G2.

One responsibility: from image embeddings (matched to the meta files by image name) to the ``ijb`` section of
an evaluation report. Reading images or running a model is not done here: the embeddings come from an HDF5 file
whose ``names`` dataset holds the image names of the meta files' first column.

Meta files (in ``DIR/meta`` or ``DIR`` itself; ``<p>`` = ``ijbc`` or ``ijbb``, detected from the folder):

* ``<p>_face_tid_mid.txt`` (required): one face image per line, ``image_name template_id media_id``,
  space-separated, no header.
* ``<p>_template_pair_label.txt`` (1:1): ``template_id_1 template_id_2 label``, label 1 = same subject,
  0 = different.
* ``<p>_1N_gallery_G1.csv``, ``<p>_1N_gallery_G2.csv`` (IJB-B: ``_S1`` / ``_S2``) and
  ``<p>_1N_probe_mixed.csv`` (1:N): comma-separated with a header naming at least ``TEMPLATE_ID`` and
  ``SUBJECT_ID`` (official files: ``TEMPLATE_ID,SUBJECT_ID,FILENAME,...``); one row per image, so a template
  repeats over several rows, always with the same subject.
* ``<p>_name_5pts_score.txt`` (optional): ``image_name x1 y1 … x5 y5 score``; the detector score weights each
  face's feature (quality weighting, insightface's "D1").

Template rule (as insightface's IJB evaluation): face feature f = embedding (+ its flipped-image embedding when
given: flip-sum, "F2"), optionally L2-normalised (off by default: the norm acts as a quality, "N0"), times the
detector score when given; media feature = mean of the template's faces in that media; template feature = mean
of its media features, L2-normalised (an all-zero template stays zero and scores 0 against everything).

Metrics are docs/evaluation.md's: 1:1 uses :func:`distill.evaluation.metrics.verification_metrics` on the template-pair cosine
scores; 1:N is defined in :func:`identification_metrics`. Image names in meta files must be relative paths that
stay inside the data root (no absolute path, no ``..``), and every meta file opened must resolve inside DIR.
"""

from __future__ import annotations

import csv
import io
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from distill.evaluation import metrics
from distill.evaluation.protocols.pairs import pair_verification
from distill.evaluation.search import _matrix, knn_search, l2_normalize
from featstore.errors import InputNotFound, InvalidInput

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

RANKS: tuple[int, ...] = (1, 5, 10)
"""Closed-set identification ranks reported (CMC at rank k)."""

FPIRS: tuple[float, ...] = (1e-2, 1e-1)
"""Open-set false-positive identification rates at which the TPIR is reported."""

_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_GALLERY_NAMES = (("G1", "G2"), ("S1", "S2"))  # IJB-C names them G1/G2, IJB-B S1/S2; reported as G1/G2


@dataclass(frozen=True)
class IjbMeta:
    """The parsed, validated meta files of one IJB dataset."""

    root: Path  # the data root (the DIR given)
    prefix: str  # "ijbc", "ijbb", ...
    face_names: list[str]  # (F,) image name per face, the first column of <p>_face_tid_mid.txt
    face_template: np.ndarray  # (F,) int64
    face_media: np.ndarray  # (F,) int64
    face_lines: np.ndarray  # (F,) 1-based line numbers, for messages
    quality: np.ndarray | None = None  # (F,) float64 detector scores (aligned with face_names)
    pairs: np.ndarray | None = None  # (P, 2) int64 template ids
    pair_labels: np.ndarray | None = None  # (P,) bool, True = same subject
    # "G1"/"G2" -> (template ids, their subjects), sorted by template id
    galleries: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    probes: tuple[np.ndarray, np.ndarray] | None = None  # (templates, subjects) of the mixed probe set
    files: dict[str, str] = field(default_factory=dict)  # role ("faces", "pairs", ...) -> the file read

    def describe(self) -> dict[str, Any]:
        """What the report records about the protocol."""
        out: dict[str, Any] = {
            "dataset": self.prefix,
            "root": str(self.root),
            "files": dict(self.files),
            "num_faces": len(self.face_names),
            "num_templates": int(np.unique(self.face_template).size),
        }
        if self.pairs is not None:
            out["num_pairs"] = int(self.pairs.shape[0])
        if self.probes is not None:
            out["num_probe_templates"] = int(self.probes[0].size)
            out["num_gallery_templates"] = {g: int(t.size) for g, (t, _) in self.galleries.items()}
        return out


# --------------------------------------------------------------------------------------------------------------
# reading the meta files
# --------------------------------------------------------------------------------------------------------------


def _safe_relative(name: str) -> bool:
    """True when ``name`` is a relative path that cannot leave the folder it is joined to."""
    if not name or "\x00" in name:
        return False
    for pure in (PurePosixPath(name), PureWindowsPath(name)):
        if pure.is_absolute() or pure.anchor or ".." in pure.parts:
            return False
    return True


def _inside(root: Path, path: Path) -> Path:
    """``path`` resolved (symlinks followed), refused unless it lies inside the resolved ``root``."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise InvalidInput(f"{path} resolves to {resolved}, outside the data root {root}")
    return resolved


def _read_text(path: Path, shown: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{shown} is not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None


def _int_field(token: str, where: str, what: str) -> int:
    try:
        return int(token, 10)
    except ValueError:
        raise InvalidInput(f"{where}: {what} must be an integer, got {token!r}") from None


def _meta_dir(root: Path) -> Path:
    meta = root / "meta"
    if meta.is_dir() and any(meta.glob("*_face_tid_mid.txt")):
        return meta
    return root


def _detect_prefix(meta: Path, shown: str) -> str:
    found = sorted(p.name[: -len("_face_tid_mid.txt")] for p in meta.glob("*_face_tid_mid.txt"))
    if not found:
        raise InvalidInput(
            f"{shown} holds no <prefix>_face_tid_mid.txt (e.g. ijbc_face_tid_mid.txt): not an IJB meta folder"
        )
    if len(found) > 1:
        raise InvalidInput(f"{shown} holds meta files of several datasets ({', '.join(found)}); give the prefix")
    return found[0]


def _records(text: str, shown: str, layout: str, fields: int) -> Iterator[tuple[int, str, list[str]]]:
    """(line number, "FILE line N", fields) of every non-blank line of a whitespace-separated meta file, each
    checked to hold exactly ``fields`` fields named by ``layout``."""
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{shown} line {number}"
        if len(tokens) != fields:
            raise InvalidInput(f"{where}: expected '{layout}' ({fields} fields), got {len(tokens)} fields")
        yield number, where, tokens


def _parse_faces(text: str, shown: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    names: list[str] = []
    templates: list[int] = []
    medias: list[int] = []
    numbers: list[int] = []
    first_line: dict[str, int] = {}
    for number, where, tokens in _records(text, shown, "image_name template_id media_id", 3):
        name, t, m = tokens
        if not _safe_relative(name):
            raise InvalidInput(f"{where}: image path {name!r} escapes the data root (absolute or with '..')")
        tid = _int_field(t, where, "template_id")
        mid = _int_field(m, where, "media_id")
        if tid < 0 or mid < 0:
            raise InvalidInput(f"{where}: template and media ids must be >= 0, got {tid} and {mid}")
        if name in first_line:
            raise InvalidInput(f"{where}: image {name!r} is listed twice (first on line {first_line[name]})")
        first_line[name] = number
        names.append(name)
        templates.append(tid)
        medias.append(mid)
        numbers.append(number)
    if not names:
        raise InvalidInput(f"{shown} lists no faces")
    return (
        names,
        np.array(templates, dtype=np.int64),
        np.array(medias, dtype=np.int64),
        np.array(numbers, dtype=np.int64),
    )


def _parse_quality(text: str, shown: str, face_names: list[str], face_shown: str, face_lines: np.ndarray) -> np.ndarray:
    scores: dict[str, tuple[float, int]] = {}
    for number, where, tokens in _records(text, shown, "image_name x1 y1 ... x5 y5 score", 12):
        name = tokens[0]
        if not _safe_relative(name):
            raise InvalidInput(f"{where}: image path {name!r} escapes the data root (absolute or with '..')")
        try:
            values = [float(t) for t in tokens[1:]]
        except ValueError:
            raise InvalidInput(f"{where}: landmarks and score must be numbers") from None
        if not all(math.isfinite(v) for v in values):
            raise InvalidInput(f"{where}: landmarks and score must be finite (NaN or infinity found)")
        if values[-1] < 0:
            raise InvalidInput(f"{where}: detector score must be >= 0, got {tokens[-1]!r}")
        if name in scores:
            raise InvalidInput(f"{where}: image {name!r} is listed twice (first on line {scores[name][1]})")
        scores[name] = (values[-1], number)
    out = np.empty(len(face_names), dtype=np.float64)
    for i, name in enumerate(face_names):
        found = scores.get(name)
        if found is None:
            raise InvalidInput(f"{shown} has no score for image {name!r} ({face_shown} line {face_lines[i]})")
        out[i] = found[0]
    return out


def _parse_pairs(text: str, shown: str, known_templates: np.ndarray, face_shown: str) -> tuple[np.ndarray, np.ndarray]:
    """The pair file (IJB-C: 15.7 million lines): numpy's C parser first; any problem found there is reported
    by the line-by-line parser, which names the file and line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "input contained no data" -> the slow path says so
            table = np.loadtxt(io.StringIO(text), dtype=np.int64, comments=None, ndmin=2)
    except (ValueError, UserWarning):
        table = None
    if table is not None and table.shape[1] == 3 and table.shape[0] > 0:
        pairs, labels = table[:, :2], table[:, 2]
        if (
            np.isin(labels, (0, 1)).all()
            and not (pairs[:, 0] == pairs[:, 1]).any()
            and np.isin(pairs, known_templates).all()
        ):
            return np.ascontiguousarray(pairs), labels == 1
    return _parse_pairs_by_line(text, shown, known_templates, face_shown)


def _parse_pairs_by_line(
    text: str, shown: str, known_templates: np.ndarray, face_shown: str
) -> tuple[np.ndarray, np.ndarray]:
    rows: list[tuple[int, int]] = []
    labels: list[bool] = []
    numbers: list[int] = []
    for number, where, tokens in _records(text, shown, "template_id_1 template_id_2 label", 3):
        t1 = _int_field(tokens[0], where, "template_id_1")
        t2 = _int_field(tokens[1], where, "template_id_2")
        if tokens[2] not in ("0", "1"):
            raise InvalidInput(f"{where}: label must be 1 (same subject) or 0 (different), got {tokens[2]!r}")
        if t1 == t2:
            raise InvalidInput(f"{where}: pairs template {t1} with itself")
        rows.append((t1, t2))
        labels.append(tokens[2] == "1")
        numbers.append(number)
    if not rows:
        raise InvalidInput(f"{shown} lists no template pairs")
    pairs = np.array(rows, dtype=np.int64)
    missing = ~np.isin(pairs, known_templates)
    if missing.any():
        r, c = np.argwhere(missing)[0]
        raise InvalidInput(f"{shown} line {numbers[r]}: template {pairs[r, c]} has no face in {face_shown}")
    return pairs, np.array(labels, dtype=bool)


def _parse_templates_csv(
    text: str, shown: str, known_templates: np.ndarray, face_shown: str
) -> tuple[np.ndarray, np.ndarray]:
    """Unique (template, subject) of a 1:N csv (sorted by template id), validated line by line."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise InvalidInput(f"{shown} is empty (expected a header 'TEMPLATE_ID,SUBJECT_ID,...')") from None
    columns = [h.strip().lstrip("\ufeff").strip().upper() for h in header]  # tolerate a BOM
    if "TEMPLATE_ID" not in columns or "SUBJECT_ID" not in columns:
        raise InvalidInput(
            f"{shown} line 1: expected a header naming TEMPLATE_ID and SUBJECT_ID (official: "
            f"'TEMPLATE_ID,SUBJECT_ID,FILENAME,...'), got {','.join(header)!r}"
        )
    ti, si = columns.index("TEMPLATE_ID"), columns.index("SUBJECT_ID")
    fi = columns.index("FILENAME") if "FILENAME" in columns else None
    need = max(ti, si, fi if fi is not None else 0) + 1
    known = set(np.asarray(known_templates).tolist())
    subject_of: dict[int, tuple[int, int]] = {}
    for row in reader:
        number = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        where = f"{shown} line {number}"
        if len(row) < need:
            raise InvalidInput(f"{where}: expected at least {need} comma-separated fields, got {len(row)}")
        template = _int_field(row[ti].strip(), where, "TEMPLATE_ID")
        subject = _int_field(row[si].strip(), where, "SUBJECT_ID")
        if fi is not None and row[fi].strip() and not _safe_relative(row[fi].strip()):
            raise InvalidInput(f"{where}: FILENAME {row[fi].strip()!r} escapes the data root (absolute or with '..')")
        seen = subject_of.get(template)
        if seen is None:
            if template not in known:
                raise InvalidInput(f"{where}: template {template} has no face in {face_shown}")
            subject_of[template] = (subject, number)
        elif seen[0] != subject:
            raise InvalidInput(
                f"{where}: template {template} has subject {subject} here but {seen[0]} on line {seen[1]}"
            )
    if not subject_of:
        raise InvalidInput(f"{shown} lists no templates")
    templates = np.array(sorted(subject_of), dtype=np.int64)
    subjects = np.array([subject_of[t][0] for t in templates.tolist()], dtype=np.int64)
    return templates, subjects


def read_ijb_meta(directory: str | Path, dataset_prefix: str = "auto") -> IjbMeta:
    """Read and validate the IJB meta files under ``directory`` (the data root; see the module docstring).

    ``dataset_prefix``: ``"auto"`` (the one ``*_face_tid_mid.txt`` present) or e.g. ``"ijbc"``/``"ijbb"``.
    Needs the face file plus the 1:1 pair file and/or the three 1:N files (both galleries and the probes).
    Every error is an :class:`InvalidInput` naming the file and line; a missing root is :class:`InputNotFound`.
    """
    root = Path(directory)
    if not root.is_dir():
        raise InputNotFound(f"IJB meta folder {root} does not exist")
    meta = _inside(root, _meta_dir(root))
    meta_shown = root / meta.relative_to(root.resolve())
    if dataset_prefix == "auto":
        prefix = _detect_prefix(meta, str(meta_shown))
    else:
        prefix = str(dataset_prefix)
        if not _PREFIX.match(prefix):
            raise InvalidInput(f"dataset prefix must be letters, digits or '-' (e.g. ijbc), got {prefix!r}")

    files: dict[str, str] = {}

    def locate(name: str, required: bool) -> tuple[Path, str] | None:
        candidate = meta / name
        shown = str(meta_shown / name)
        if not candidate.exists():
            if required:
                raise InputNotFound(f"IJB meta file {shown} does not exist")
            return None
        resolved = _inside(root, candidate)
        if not resolved.is_file():
            raise InvalidInput(f"{shown} is not a file")
        return resolved, shown

    face_path, face_shown = locate(f"{prefix}_face_tid_mid.txt", True)  # type: ignore[misc]
    files["faces"] = face_shown
    names, templates, medias, lines = _parse_faces(_read_text(face_path, face_shown), face_shown)
    known = np.unique(templates)

    quality = None
    found = locate(f"{prefix}_name_5pts_score.txt", False)
    if found is not None:
        files["quality"] = found[1]
        quality = _parse_quality(_read_text(*found), found[1], names, face_shown, lines)

    pairs = pair_labels = None
    found = locate(f"{prefix}_template_pair_label.txt", False)
    if found is not None:
        files["pairs"] = found[1]
        pairs, pair_labels = _parse_pairs(_read_text(*found), found[1], known, face_shown)

    galleries: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    gallery_found = None
    for names_pair in _GALLERY_NAMES:
        located = [locate(f"{prefix}_1N_gallery_{g}.csv", False) for g in names_pair]
        if any(located):
            if gallery_found is not None:
                raise InvalidInput(f"{meta_shown} holds both G1/G2 and S1/S2 gallery files; keep one pair")
            gallery_found = (names_pair, located)
    probe = locate(f"{prefix}_1N_probe_mixed.csv", False)
    probes = None
    if gallery_found is not None or probe is not None:
        wanted = [f"{prefix}_1N_gallery_G1.csv", f"{prefix}_1N_gallery_G2.csv", f"{prefix}_1N_probe_mixed.csv"]
        if gallery_found is None or probe is None or not all(gallery_found[1]):
            raise InputNotFound(
                f"{meta_shown}: 1:N needs both gallery files and the probe file ({', '.join(wanted)};"
                " IJB-B: _S1/_S2), found only some"
            )
        for report_name, (path, shown) in zip(("G1", "G2"), gallery_found[1]):  # type: ignore[misc]
            files[f"gallery_{report_name}"] = shown
            galleries[report_name] = _parse_templates_csv(_read_text(path, shown), shown, known, face_shown)
        files["probes"] = probe[1]
        probes = _parse_templates_csv(_read_text(*probe), probe[1], known, face_shown)

    if pairs is None and probes is None:
        raise InputNotFound(
            f"{meta_shown} has neither {prefix}_template_pair_label.txt (1:1) nor the 1:N files "
            f"({prefix}_1N_gallery_G1.csv, …_G2.csv, {prefix}_1N_probe_mixed.csv)"
        )
    return IjbMeta(root, prefix, names, templates, medias, lines, quality, pairs, pair_labels, galleries, probes, files)


# --------------------------------------------------------------------------------------------------------------
# embeddings -> templates
# --------------------------------------------------------------------------------------------------------------


def face_rows(meta: IjbMeta, names: Sequence[str]) -> np.ndarray:
    """Row of ``names`` (the embeddings' image names) holding each meta face, matched by exact name, else by the
    base name (``'loose_crop/1.jpg'`` matches ``'1.jpg'``) when that is unambiguous — and, for a face named
    with folders (``'img/5.jpg'``), only by an embedding name ending in that path (never ``'frames/5.jpg'``).
    Embeddings no face uses are ignored; a face without an embedding, or one matching several, is an
    :class:`InvalidInput`."""
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
    """Template features from face features: ``(template_ids, feats)`` with ``template_ids`` the sorted unique
    template ids (int64) and ``feats`` ``(T, D)`` float32 rows of unit norm (zero rows stay zero).

    Inputs are aligned per face (face i): ``names`` ``(F,)`` image names (for messages only; may be ``None``);
    ``face_template``/``face_media`` ``(F,)`` integer ids; ``quality`` ``(F,)`` non-negative detector scores
    (weights). ``embeddings`` ``(N, D)`` and ``flip`` (``(N, D)`` embeddings of the flipped images) hold face
    i in row ``rows[i]`` (default: row i, N = F) — so a file's rows need not be copied into face order.

    Rule: f_i = (e_i + flip_i) [/ ||·|| if ``normalize_faces``] · quality_i; media feature = mean of f_i over
    the template's faces in that media; template feature = mean over its media, L2-normalised. Computed as
    the equal sum  Σ_i f_i / (#faces in i's media · #media in i's template)  in float64, ``block`` faces at a
    time, so memory beyond the inputs is O(T·D + block·D).
    """
    x = _matrix(embeddings, "embeddings")
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
        f = _matrix(flip, "flipped embeddings")
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
    """Rows of ``wanted`` template ids in the sorted ``template_ids`` (as :func:`template_embeddings` returns);
    an id that is not there is an :class:`InvalidInput`."""
    ids = np.asarray(template_ids, dtype=np.int64)
    w = np.asarray(wanted, dtype=np.int64)
    pos = np.searchsorted(ids, w)
    pos_c = np.clip(pos, 0, max(ids.size - 1, 0))
    ok = (pos < ids.size) & (ids[pos_c] == w) if ids.size else np.zeros(w.shape, dtype=bool)
    if not np.all(ok):
        bad = w[~ok].ravel()[0]
        raise InvalidInput(f"{what} {bad} has no template embedding (no face of it among the faces)")
    return pos


# --------------------------------------------------------------------------------------------------------------
# 1:1 verification
# --------------------------------------------------------------------------------------------------------------


def ijb_verification(
    template_feats: Any, pairs: Any, labels: Any, fars: Sequence[float] = metrics.FARS
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """TAR@FAR, ROC AUC and EER (docs/evaluation.md, :func:`distill.evaluation.metrics.verification_metrics`) over template
    pairs: ``pairs`` ``(P, 2)`` rows of ``template_feats``, ``labels`` ``(P,)`` 1/True = same subject,
    0/False = different (anything else is an error). Returns ``(report, (far, tar))``; the report also has
    ``num_pairs``."""
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


# --------------------------------------------------------------------------------------------------------------
# 1:N identification
# --------------------------------------------------------------------------------------------------------------


def _tpir(top1_scores: np.ndarray, hit1: np.ndarray, mated: np.ndarray, fpir: Fraction) -> float | None:
    nonmated = np.sort(top1_scores[~mated])[::-1]
    n_nm, n_m = nonmated.size, int(mated.sum())
    k = math.floor(fpir * n_nm)
    if k < 1 or n_m == 0:
        return None
    t = nonmated[k] if k < n_nm else -np.inf  # threshold s_(k+1): at most k non-mated top-1 scores exceed it
    return int(np.sum(hit1 & mated & (top1_scores > t))) / n_m


def identification_metrics(
    neighbor_subjects: Any,
    top1_scores: Any,
    probe_subjects: Any,
    gallery_subjects: Any,
    ranks: Sequence[int] = RANKS,
    fpirs: Sequence[float] = FPIRS,
) -> dict[str, Any]:
    """Closed-set CMC and open-set TPIR@FPIR of one gallery, from each probe's ranked gallery subjects.

    Args:
        neighbor_subjects: ``(P, K)`` subject of each probe's gallery templates in descending score order,
            K >= min(max(ranks), G) — no padding.
        top1_scores: ``(P,)`` each probe's best gallery score.
        probe_subjects: ``(P,)``; gallery_subjects: ``(G,)`` (a probe is *mated* iff its subject is among them).

    Definitions (M mated, N non-mated probes):

    * ``rank_k`` = #{mated probes with their subject among the first k gallery templates} / M (rank k > G
      counts all G); ``None`` when M = 0.
    * ``tpir_at_fpir[f]``: sort the non-mated probes' top-1 scores descending s_1 >= s_2 >= …, n = floor(f·N),
      threshold t = s_(n+1) (-inf when n = N); TPIR = #{mated probes whose rank-1 template is of their subject
      and whose top-1 score > t} / M, so the non-mated probes accepted (top-1 > t) are at most f·N. ``None`` where
      f·N < 1 or M = 0 — the exact sorted definition of TAR@FAR in docs/evaluation.md.

    Also ``num_probes``, ``num_mated``, ``num_nonmated``.
    """
    ns = np.asarray(neighbor_subjects)
    s = metrics._score_vector(top1_scores, "top1_scores")
    ps = metrics._int_vector(probe_subjects, "probe_subjects")
    gs = metrics._int_vector(gallery_subjects, "gallery_subjects")
    if ns.ndim != 2 or (ns.size and not np.issubdtype(ns.dtype, np.integer)):
        raise InvalidInput(f"neighbor_subjects must be a 2-D integer array (probes, K), got shape {ns.shape}")
    if not (ns.shape[0] == s.size == ps.size):
        raise InvalidInput(
            f"neighbor_subjects has {ns.shape[0]} rows, top1_scores {s.size} and probe_subjects "
            f"{ps.size}: they must describe the same probes"
        )
    ranks = metrics._check_ks(ranks)
    checked = [(metrics.far_key(f), metrics._check_far(f)) for f in fpirs]
    if gs.size == 0:
        raise InvalidInput("the gallery is empty")
    need = min(max(ranks), gs.size)
    if ns.shape[0] and ns.shape[1] < need:
        raise InvalidInput(
            f"neighbour lists have K={ns.shape[1]} columns; ranks up to {max(ranks)} in a gallery of "
            f"{gs.size} need K >= {need}"
        )
    mated = np.isin(ps, gs)
    m = int(mated.sum())
    hit = ns[:, :need] == ps[:, None]
    first = np.where(hit.any(axis=1), np.argmax(hit, axis=1), need)  # 0-based rank of the first hit
    report: dict[str, Any] = {"num_probes": int(ps.size), "num_mated": m, "num_nonmated": int(ps.size - m)}
    for r in ranks:
        report[f"rank_{r}"] = int(np.sum(mated & (first < r))) / m if m else None
    hit1 = first == 0
    report["tpir_at_fpir"] = {key: _tpir(s, hit1, mated, f) for key, f in checked}
    return report


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
    """1:N identification of probe templates against one gallery by exact cosine search; the metrics are
    :func:`identification_metrics` (probes whose subject is not in this gallery are its non-mated probes)."""
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
    g = _matrix(gallery_feats, "gallery_feats")
    gs = metrics._int_vector(gallery_subjects, "gallery_subjects")
    ps = metrics._int_vector(probe_subjects, "probe_subjects")
    if gs.size != g.shape[0]:
        raise InvalidInput(f"{gs.size} gallery subjects for {g.shape[0]} gallery templates")
    p = _matrix(probe_feats, "probe_feats")
    if ps.size != p.shape[0]:
        raise InvalidInput(f"{ps.size} probe subjects for {p.shape[0]} probe templates")
    ranks_checked = metrics._check_ks(ranks)
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
    """insightface's summary of G1 and G2: rank-k pooled over both galleries' mated probes (their hits over
    their count), TPIR the mean of the two galleries' values (``None`` if either is)."""
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


# --------------------------------------------------------------------------------------------------------------
# the whole protocol
# --------------------------------------------------------------------------------------------------------------


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
    """The ``ijb`` report section and its curves for image ``embeddings`` named ``names`` (and optional
    ``flip`` embeddings of the flipped images, same rows).

    Returns ``(section, curves)``: ``section`` = ``{"protocol": meta.describe() + template options,
    "verification": {...} (when the pair file exists), "identification": {"G1", "G2", "average"} (when the 1:N
    files exist)}``; ``curves`` = ``{"roc": (far, tar)}`` and ``{"cmc": {"G1": …, "G2": …}}`` up to
    ``cmc_rank`` when asked.
    """
    x = _matrix(embeddings, "embeddings")
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
        ident["average"] = _average(ident, metrics._check_ks(ranks))
        section["identification"] = ident
        if cmc_rank:
            curves["cmc"] = {k: v for k, v in cmcs.items() if v.size}
    return section, curves
