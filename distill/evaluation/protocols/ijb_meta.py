"""IJB-B / IJB-C meta files: read and validate the official protocol files of one dataset into an :class:`IjbMeta`.

One responsibility: text files in, validated arrays out, every problem an :class:`~featstore.errors.InvalidInput`
naming the file and line. What is done with them (templates, 1:1, 1:N) is :mod:`distill.evaluation.protocols.ijb`.

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

Image names in meta files must be relative paths that stay inside the data root (no absolute path, no ``..``),
and every meta file opened must resolve inside DIR.
"""

from __future__ import annotations

import csv
import io
import math
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from featstore.errors import InputNotFound, InvalidInput

__all__ = ["IjbMeta", "read_ijb_meta"]

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
    """(line number, "FILE line N", fields) of every non-blank line of a whitespace-separated meta file.

    Each line is checked to hold exactly ``fields`` fields named by ``layout``.
    """
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
    """Parse the pair file (IJB-C: 15.7 million lines).

    Numpy's C parser runs first; any problem found there is reported by the line-by-line parser, which names the file
    and line.
    """
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
