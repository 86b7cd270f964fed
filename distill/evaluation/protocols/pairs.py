"""Pairs protocols: verification over a given list of pairs instead of all pairs, and LFW's 10-fold accuracy.

One responsibility: read a pairs file into index pairs with same/different flags, score those pairs, and
turn the scores into the verification report (:func:`distill.evaluation.metrics.verification_metrics`) and, for LFW,
the 10-fold accuracy. Three formats, one pair per line (blank lines and lines starting with ``#`` ignored):

* ``index``: ``i j label`` — row indices into the evaluated embeddings (0-based), label 1 = same identity,
  0 = different.
* ``names``: ``name_a name_b label`` — names from the embeddings file's ``names`` dataset.
* ``lfw``: LFW's ``pairs.txt``: a header ``folds n`` (e.g. ``10 300``), then per fold n matched lines
  ``name i1 i2`` and n mismatched lines ``name1 i1 name2 i2``; image ``i`` of ``name`` is the embedding named
  ``f"{name}_{i:04d}"`` (LFW's file name without ``.jpg``). A header with one number means one fold.

``auto`` picks the format from the first line: one or two integers → lfw; two integers and a label → index;
otherwise names. Every problem is an :class:`InvalidInput` naming the file and line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distill.evaluation import metrics
from distill.evaluation.validate import as_matrix, l2_normalize
from featstore.errors import InputNotFound, InvalidInput

FORMATS: tuple[str, ...] = ("auto", "index", "names", "lfw")
_LABELS = {"1": True, "0": False}


@dataclass(frozen=True)
class ParsedPairs:
    """A pairs file as written: references (ints or names) not yet checked against any embeddings."""

    path: str
    format: str  # index | names | lfw
    first: list[Any]  # int indices or str names
    second: list[Any]
    same: np.ndarray  # (P,) bool
    lines: np.ndarray  # (P,) 1-based line number of each pair, for error messages
    folds: np.ndarray | None = None  # (P,) int fold of each pair (lfw)


@dataclass(frozen=True)
class Pairs:
    """Resolved pairs: row indices into the evaluated embeddings."""

    a: np.ndarray  # (P,) int64
    b: np.ndarray  # (P,) int64
    same: np.ndarray  # (P,) bool
    folds: np.ndarray | None = None  # (P,) int64, lfw only
    path: str = ""
    format: str = "index"

    def describe(self) -> dict[str, Any]:
        """What the report records about the pairs."""
        out: dict[str, Any] = {"file": self.path, "format": self.format, "num_pairs": int(self.a.size)}
        if self.folds is not None:
            out["folds"] = int(np.unique(self.folds).size)
        return out


# --------------------------------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------------------------------


def _int(token: str) -> int | None:
    try:
        return int(token, 10)
    except ValueError:
        return None


def _content_lines(text: str) -> list[tuple[int, list[str]]]:
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            out.append((number, stripped.split()))
    return out


def detect_format(first_tokens: list[str]) -> str | None:
    """The format a first content line implies, or ``None`` if it fits none."""
    ints = [_int(t) is not None for t in first_tokens]
    if len(first_tokens) in (1, 2) and all(ints):
        return "lfw"
    if len(first_tokens) == 3:
        return "index" if ints[0] and ints[1] else "names"
    return None


def parse_pairs(text: str, fmt: str = "auto", path: str = "<pairs>") -> ParsedPairs:
    """Parse the text of a pairs file (see the module docstring for the formats)."""
    if fmt not in FORMATS:
        raise InvalidInput(f"pairs format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    lines = _content_lines(text)
    if not lines:
        raise InvalidInput(f"{path} holds no pairs")
    if fmt == "auto":
        fmt = detect_format(lines[0][1]) or ""
        if not fmt:
            raise InvalidInput(
                f"{path} line {lines[0][0]}: cannot tell the pairs format (expected 'i j label', "
                "'name_a name_b label' or an LFW header 'folds pairs'); give --pairs-format"
            )
    if fmt == "lfw":
        return _parse_lfw(lines, path)
    return _parse_simple(lines, fmt, path)


def _parse_simple(lines: list[tuple[int, list[str]]], fmt: str, path: str) -> ParsedPairs:
    first, second, same, numbers = [], [], [], []
    for number, tokens in lines:
        where = f"{path} line {number}"
        if len(tokens) != 3:
            shape = "'i j label'" if fmt == "index" else "'name_a name_b label'"
            raise InvalidInput(f"{where}: expected {shape} (3 fields), got {len(tokens)} fields")
        a, b, label = tokens
        if fmt == "index":
            ia, ib = _int(a), _int(b)
            bad = a if ia is None else b if ib is None else None
            if bad is not None:
                raise InvalidInput(f"{where}: {bad!r} is not an integer index")
            a, b = ia, ib
        if label not in _LABELS:
            raise InvalidInput(f"{where}: label must be 1 (same) or 0 (different), got {label!r}")
        first.append(a)
        second.append(b)
        same.append(_LABELS[label])
        numbers.append(number)
    return ParsedPairs(path, fmt, first, second, np.array(same, dtype=bool), np.array(numbers, dtype=np.int64))


def _parse_lfw(lines: list[tuple[int, list[str]]], path: str) -> ParsedPairs:
    number, header = lines[0]
    values = [_int(t) for t in header]
    if len(header) not in (1, 2) or any(v is None for v in values) or any(v < 1 for v in values):
        raise InvalidInput(
            f"{path} line {number}: an LFW pairs file starts with 'folds pairs_per_fold' "
            f"(e.g. '10 300'), got {' '.join(header)!r}"
        )
    folds, per = (values[0], values[1]) if len(values) == 2 else (1, values[0])
    body = lines[1:]
    expected = folds * 2 * per
    if len(body) != expected:
        raise InvalidInput(
            f"{path}: the header promises {folds} fold(s) × 2 × {per} = {expected} pairs, found {len(body)} pair lines"
        )
    first, second, same, numbers, fold_of = [], [], [], [], []
    for pos, (number, tokens) in enumerate(body):
        fold, within = divmod(pos, 2 * per)
        matched = within < per
        where = f"{path} line {number}"
        if matched and len(tokens) != 3:
            raise InvalidInput(
                f"{where}: expected a matched pair 'name n1 n2' (fold {fold + 1}, pair "
                f"{within + 1} of {per}), got {len(tokens)} fields"
            )
        if not matched and len(tokens) != 4:
            raise InvalidInput(
                f"{where}: expected a mismatched pair 'name1 n1 name2 n2' (fold {fold + 1}, pair "
                f"{within - per + 1} of {per}), got {len(tokens)} fields"
            )
        names = [tokens[0], tokens[0]] if matched else [tokens[0], tokens[2]]
        numbers_txt = [tokens[1], tokens[2]] if matched else [tokens[1], tokens[3]]
        ids = []
        for name, text in zip(names, numbers_txt):
            value = _int(text)
            if value is None or value < 1:
                raise InvalidInput(f"{where}: image number must be a positive integer, got {text!r}")
            ids.append(f"{name}_{value:04d}")
        first.append(ids[0])
        second.append(ids[1])
        same.append(matched)
        numbers.append(number)
        fold_of.append(fold)
    return ParsedPairs(
        path,
        "lfw",
        first,
        second,
        np.array(same, dtype=bool),
        np.array(numbers, dtype=np.int64),
        np.array(fold_of, dtype=np.int64),
    )


def read_pairs(path: str | Path, fmt: str = "auto") -> ParsedPairs:
    """Read and parse a pairs file (UTF-8)."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"pairs file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) must not change the format read
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path} is not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    return parse_pairs(text, fmt, str(path))


def resolve_pairs(parsed: ParsedPairs, num_samples: int, names: Sequence[str] | None = None) -> Pairs:
    """Turn a parsed file's references into row indices of ``num_samples`` embeddings (named ``names``)."""
    if parsed.format == "index":
        try:
            a = np.array(parsed.first, dtype=np.int64)
            b = np.array(parsed.second, dtype=np.int64)
        except OverflowError:  # an index past int64: find it the slow way, to name its line
            i = next(k for k, (x, y) in enumerate(zip(parsed.first, parsed.second)) if max(abs(x), abs(y)) >= 2**63)
            raise InvalidInput(
                f"{parsed.path} line {parsed.lines[i]}: index {max(parsed.first[i], parsed.second[i], key=abs)} out "
                f"of range for {num_samples} embeddings (valid: 0..{num_samples - 1})"
            ) from None
        bad = np.flatnonzero((a < 0) | (a >= num_samples) | (b < 0) | (b >= num_samples))
        if bad.size:
            i = int(bad[0])
            value = a[i] if not 0 <= a[i] < num_samples else b[i]
            raise InvalidInput(
                f"{parsed.path} line {parsed.lines[i]}: index {value} out of range for "
                f"{num_samples} embeddings (valid: 0..{num_samples - 1})"
            )
    else:
        if names is None:
            raise InvalidInput(
                f"{parsed.path} names its samples ({parsed.format} format), but the embeddings "
                "have no names: use --embeddings FILE.h5 with a 'names' dataset"
            )
        if len(names) != num_samples:
            raise InvalidInput(f"{len(names)} names for {num_samples} embeddings")
        index = _name_index(names)
        a = np.empty(len(parsed.first), dtype=np.int64)
        b = np.empty_like(a)
        for i, (na, nb) in enumerate(zip(parsed.first, parsed.second)):
            for out, name in ((a, na), (b, nb)):
                found = index.get(name)
                if found is None:
                    raise InvalidInput(
                        f"{parsed.path} line {parsed.lines[i]}: unknown name {name!r} (not among "
                        f"the {num_samples} names of the embeddings)"
                    )
                if found < 0:
                    raise InvalidInput(
                        f"{parsed.path} line {parsed.lines[i]}: name {name!r} is ambiguous "
                        "(several embeddings carry it)"
                    )
                out[i] = found
    selfpair = np.flatnonzero(a == b)
    if selfpair.size:
        i = int(selfpair[0])
        raise InvalidInput(f"{parsed.path} line {parsed.lines[i]}: pairs sample {a[i]} with itself")
    return Pairs(
        a, b, parsed.same.copy(), None if parsed.folds is None else parsed.folds.copy(), parsed.path, parsed.format
    )


def _name_index(names: Sequence[str]) -> dict[str, int]:
    """Image name → row (-1 when ambiguous).

    Each name is also reachable by its file stem ('dir/x_0001.jpg' -> 'x_0001') when that stem is not itself a name, so
    LFW file lists work as names.
    """
    index: dict[str, int] = {}
    for row, name in enumerate(names):
        index[name] = -1 if name in index else row
    stems: dict[str, int] = {}
    for row, name in enumerate(names):
        stem = Path(name).stem
        if stem != name and stem not in index:
            stems[stem] = -1 if stem in stems else row
    index.update(stems)
    return index


# --------------------------------------------------------------------------------------------------------------
# metrics over pairs
# --------------------------------------------------------------------------------------------------------------


def score_pairs(embeddings: Any, a: np.ndarray, b: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """float32 cosine similarity of rows ``a[p]`` and ``b[p]`` for every pair p, ``chunk`` pairs at a time."""
    x = l2_normalize(as_matrix(embeddings, "embeddings"))
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if a.shape != b.shape or a.ndim != 1:
        raise InvalidInput("pair index arrays must be 1-D and of equal length")
    if a.size and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= x.shape[0]):
        raise InvalidInput(f"pair indices out of range for {x.shape[0]} embeddings")
    out = np.empty(a.size, dtype=np.float32)
    for start in range(0, a.size, chunk):
        sl = slice(start, start + chunk)
        out[sl] = np.einsum("ij,ij->i", x[a[sl]], x[b[sl]])
    return out


def pair_verification(
    embeddings: Any, pairs: Any, labels_same: Any, fars: Sequence[float] = metrics.FARS
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """Verification report over the given pairs.

    ``pairs`` is ``(P, 2)`` row indices, ``labels_same`` ``(P,)`` booleans (True = genuine). Returns ``(report, (far,
    tar))`` like :func:`distill.evaluation.verification.streaming_verification`; the ROC is empty where undefined.
    """
    p = np.asarray(pairs)
    if p.ndim != 2 or p.shape[1] != 2 or (p.size and not np.issubdtype(p.dtype, np.integer)):
        raise InvalidInput(f"pairs must be a (P, 2) integer array, got shape {p.shape}")
    same = np.asarray(labels_same)
    if same.shape != (p.shape[0],) or (same.size and same.dtype != bool):
        raise InvalidInput(f"labels_same must be {p.shape[0]} booleans, got shape {same.shape}, dtype {same.dtype}")
    return _verification(score_pairs(embeddings, p[:, 0], p[:, 1]), same, fars)


def _verification(
    scores: np.ndarray, same: np.ndarray, fars: Sequence[float]
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    gen, imp = scores[same], scores[~same]
    report = metrics.verification_metrics(gen, imp, fars)
    curve = metrics.roc_curve(gen, imp) if gen.size and imp.size else (np.empty(0), np.empty(0))
    return report, curve


def best_threshold(scores: Any, same: Any) -> float:
    """The threshold t maximising accuracy of "same iff score > t" on these pairs.

    Candidates are -inf (everything "same") and every distinct score; among equally accurate thresholds
    the lowest is taken. Returns ``-inf`` or one of the scores.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same, dtype=bool)
    candidates = np.concatenate(([-np.inf], np.unique(s)))
    gen, imp = np.sort(s[y]), np.sort(s[~y])
    correct = (gen.size - np.searchsorted(gen, candidates, side="right")) + np.searchsorted(
        imp, candidates, side="right"
    )
    return float(candidates[int(np.argmax(correct))])


def lfw_accuracy(scores: Any, same: Any, folds: Any) -> dict[str, Any]:
    """LFW's protocol (View 2), fold by fold.

    For each fold, choose the threshold on the other folds (:func:`best_threshold`) and measure accuracy on the held-out
    fold.

    Returns ``accuracy_mean``, ``accuracy_std`` (sample standard deviation over folds, ddof = 1, as LFW's
    README defines σ̂), ``accuracy_sem`` (σ̂ / √folds, the "standard error" LFW tables print), ``folds``
    (their number), ``fold_accuracy`` and ``fold_threshold`` (``None`` for -inf, JSON has no infinity).
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same)
    f = np.asarray(folds)
    if not (s.ndim == y.ndim == f.ndim == 1 and s.size == y.size == f.size):
        raise InvalidInput("scores, same and folds must be 1-D arrays of one length")
    if y.size and y.dtype != bool:
        raise InvalidInput(f"same must hold booleans, got dtype {y.dtype}")
    if not np.all(np.isfinite(s)):
        raise InvalidInput("scores contain NaN or infinite values")
    fold_ids = np.unique(f)
    if fold_ids.size < 2:
        raise InvalidInput(
            f"LFW accuracy needs at least 2 folds (the threshold is chosen on the others), got {fold_ids.size}"
        )
    accuracies, thresholds = [], []
    for fold in fold_ids:
        test = f == fold
        t = best_threshold(s[~test], y[~test])
        accuracies.append(float(np.mean((s[test] > t) == y[test])))
        thresholds.append(None if math.isinf(t) else t)
    acc = np.array(accuracies)
    std = float(np.std(acc, ddof=1))
    return {
        "accuracy_mean": float(np.mean(acc)),
        "accuracy_std": std,
        "accuracy_sem": std / math.sqrt(acc.size),
        "folds": int(acc.size),
        "fold_accuracy": accuracies,
        "fold_threshold": thresholds,
    }


def pairs_report(
    embeddings: Any, pairs: Pairs, fars: Sequence[float] = metrics.FARS
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """The ``verification`` section under the pairs protocol.

    It is :func:`pair_verification` plus ``"protocol": "pairs"``, a ``pairs`` description and, for files with several
    folds, ``lfw``.
    """
    scores = score_pairs(embeddings, pairs.a, pairs.b)
    report, curve = _verification(scores, pairs.same, fars)
    report["protocol"] = "pairs"
    report["pairs"] = pairs.describe()
    if pairs.folds is not None and np.unique(pairs.folds).size >= 2:
        report["lfw"] = lfw_accuracy(scores, pairs.same, pairs.folds)
    return report, curve
