"""Store verification: read every chunk and check what a trainer would otherwise silently trust.

Static checks (:func:`verify_store`): each chunk decompresses, holds finite embeddings (and positive finite
int8 scales), labels lie in [-1, num_classes), view parameters are finite, its ``progress/done`` flag is
set; the head is finite; the shapes agree with the attributes. A chunk that fails is reported by index
with the reason.

Live check (:func:`verify_live`): K random (sample, view) rows are recomputed with the teacher and compared
with the stored (decoded) rows. Each picked row's stored view parameters must equal the ones the store's
seed draws (``sample_view_params(policy, seed, i, v)``), the view is re-rendered from the *stored*
parameters, embedded, and the cosine to the stored row must reach the dtype's threshold
(:data:`LIVE_COSINE_THRESHOLDS`). The teacher's checkpoint sha256, embedding size, input shape and head,
and the dataset's fingerprint, must be those the store records. featstore never imports distill: the
caller (the CLI) binds the teacher to the dataset and passes the :class:`~featstore.teacher.TeacherBinding` in
(a bare :class:`~featstore.teacher.TeacherSource` with its dataset is bound here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from featstore.datasets import Dataset
from featstore.errors import FsdError, InvalidInput, StoreDamaged
from featstore.loader import rows_batches
from featstore.progress import progress
from featstore.store import FeatureStore, open_store
from featstore.teacher import TeacherBinding, TeacherSource, bind_source, check_input_shape
from featstore.views import PARAM_NAMES, ViewPolicy, policy_mismatch, renderable_original, sample_view_params

# Smallest per-row cosine (live teacher output vs the stored, decoded row) a healthy store must reach.
# Measured worst rows on digits stores (trained 64-d and random 16-d convnet teachers, every row; see
# docs/store.md): float32 1 - 1e-14 when extraction and check run on the same CPU, float16 1 - 5e-8,
# bfloat16 1 - 3e-6, int8 1 - 5e-5. A store extracted on a GPU with TF32 convolutions (PyTorch's default
# on Ampere and later) and checked on a CPU differs by up to 1 - 1.3e-6 even in float32 (simulated on the
# trained digits teacher), so float32 gets 1e-5 rather than 1e-6. The others keep 20x or more headroom.
# A wrong teacher or a one-pixel shift/flip of the view lands far below (median cosine 0.2-0.9 on digits).
LIVE_COSINE_THRESHOLDS: dict[str, float] = {
    "float32": 0.99999,
    "float16": 0.9999,
    "bfloat16": 0.999,
    "int8": 0.999,
}
# The cosine ignores magnitude: a stored row scaled by any factor (wrong int8 scales, a rescaled import) would
# pass it. The norm of each stored row must also be within this relative tolerance of the live row's — a few
# times the dtype's rounding of a norm (float16 ~5e-4 relative per value, bfloat16 ~4e-3, int8 ~1 %).
LIVE_NORM_TOLERANCE: dict[str, float] = {
    "float32": 1e-4,
    "float16": 2e-3,
    "bfloat16": 2e-2,
    "int8": 5e-2,
}
DEFAULT_LIVE_SAMPLE = 64
_LISTED = 5  # how many offending rows a problem line names


@dataclass
class LiveCheck:
    """The outcome of :func:`verify_live`: per-row cosines of recomputed vs stored rows, and problems."""

    dtype: str
    threshold: float
    requested: int
    rows: np.ndarray = field(default_factory=lambda: np.empty((0, 2), dtype=np.int64))  # (n, 2) (sample, view)
    cosines: np.ndarray = field(default_factory=lambda: np.empty(0))  # (n,) per compared row
    max_abs_error: float = float("nan")
    view_mismatches: list[tuple[int, int]] = field(default_factory=list)  # stored params ≠ seeded params
    problems: list[str] = field(default_factory=list)
    norm_ratios: np.ndarray = field(default_factory=lambda: np.empty(0))  # (n,) ‖stored‖ / ‖live‖
    norm_tolerance: float = 0.0

    @property
    def bad_norm_rows(self) -> list[tuple[int, int, float]]:
        """(sample, view, ‖stored‖/‖live‖) of every compared row whose norm is off by more than the tolerance."""
        bad = np.flatnonzero(~(np.abs(self.norm_ratios - 1.0) <= self.norm_tolerance))
        return [(int(self.rows[k, 0]), int(self.rows[k, 1]), float(self.norm_ratios[k])) for k in bad]

    @property
    def checked(self) -> int:
        """Rows recomputed."""
        return len(self.cosines)

    @property
    def min_cosine(self) -> float:
        """The lowest cosine between a live and a stored row (NaN when none was checked)."""
        return float(self.cosines.min()) if self.checked else float("nan")

    @property
    def mean_cosine(self) -> float:
        """The mean cosine between live and stored rows (NaN when none was checked)."""
        return float(self.cosines.mean()) if self.checked else float("nan")

    @property
    def low_rows(self) -> list[tuple[int, int, float]]:
        """(sample, view, cosine) of every compared row below the threshold, worst first."""
        low = np.flatnonzero(~(self.cosines >= self.threshold))
        low = low[np.argsort(self.cosines[low], kind="stable")]
        return [(int(self.rows[k, 0]), int(self.rows[k, 1]), float(self.cosines[k])) for k in low]

    @property
    def ok(self) -> bool:
        """Whether rows were checked, every one matched within tolerance and nothing else was wrong."""
        return (
            self.checked > 0
            and not self.problems
            and not self.view_mismatches
            and not self.low_rows
            and not self.bad_norm_rows
        )

    def all_problems(self) -> list[str]:
        """Every problem found, the view mismatches and unrenderable rows summarised in one line each."""
        out = list(self.problems)
        if self.view_mismatches:
            listed = _listed([f"(sample {s}, view {v})" for s, v in self.view_mismatches])
            out.append(
                f"view params mismatch: {len(self.view_mismatches)} of {self.requested} rows store view "
                f"parameters that differ from the ones the store's seed draws: {listed}"
            )
        low = self.low_rows
        if low:
            listed = _listed([f"(sample {s}, view {v}) {c:.6f}" for s, v, c in low])
            out.append(f"{len(low)} of {self.checked} rows below cosine {self.threshold} ({self.dtype}): {listed}")
        bad_norms = self.bad_norm_rows
        if bad_norms:
            listed = _listed([f"(sample {s}, view {v}) ×{r:.4g}" for s, v, r in bad_norms])
            out.append(
                f"{len(bad_norms)} of {self.checked} rows have a stored norm off from the recomputed one by more "
                f"than {self.norm_tolerance:g} (relative; {self.dtype}): {listed}"
            )
        if self.checked == 0 and not self.problems:
            out.append("no row could be compared")
        return out

    def line(self) -> str:
        """One line: the verdict and the figures."""
        verdict = "OK" if self.ok else "FAILED"
        return (
            f"live check: {self.checked} rows, cosine min {self.min_cosine:.8f} mean {self.mean_cosine:.8f}, "
            f"max |Δ| {self.max_abs_error:.3g} ({self.dtype}, pass ≥ {self.threshold}): {verdict}"
        )

    def lines(self) -> list[str]:
        """The verdict line, then one line per problem."""
        return [self.line()] + [f"  live problem: {p}" for p in self.all_problems()]

    def to_dict(self) -> dict[str, Any]:
        """The check as JSON-ready values (``fsd store verify --json``)."""
        return {
            "dtype": self.dtype,
            "threshold": self.threshold,
            "requested": self.requested,
            "checked": self.checked,
            "min_cosine": self.min_cosine,
            "mean_cosine": self.mean_cosine,
            "max_abs_error": self.max_abs_error,
            "max_norm_deviation": float(np.abs(self.norm_ratios - 1.0).max()) if self.checked else None,
            "norm_tolerance": self.norm_tolerance,
            "ok": self.ok,
            "problems": self.all_problems(),
        }


def _listed(items: list[str]) -> str:
    """The first few offending rows of a problem line, and "…" when there are more."""
    return ", ".join(items[:_LISTED]) + ("…" if len(items) > _LISTED else "")


@dataclass
class VerifyReport:
    """What ``fsd store verify`` found: chunks read, bad chunks, store problems, notes and the live check."""

    url: str
    chunks_checked: int = 0
    bad_chunks: dict[int, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # store-level problems (attributes, head)
    notes: list[str] = field(default_factory=list)  # facts that are no failure (e.g. a format 1 store)
    live: LiveCheck | None = None  # set when a live check was run (fsd store verify --teacher)

    @property
    def ok(self) -> bool:
        """Whether no chunk was bad, nothing was wrong with the store and the live check (if run) passed."""
        return not self.bad_chunks and not self.problems and (self.live is None or self.live.ok)

    def lines(self) -> list[str]:
        """The report as the lines ``fsd store verify`` prints."""
        out = [f"store {self.url}: {self.chunks_checked} chunks checked, {len(self.bad_chunks)} bad"]
        out += [f"  note: {n}" for n in self.notes]
        out += [f"  problem: {p}" for p in self.problems]
        out += [f"  bad chunk {k}: {why}" for k, why in sorted(self.bad_chunks.items())]
        if self.live is not None:
            out += self.live.lines()
        out.append("OK" if self.ok else "FAILED")
        return out


def _check_chunk(store: FeatureStore, chunk: int, done: bool) -> str | None:
    if not done:
        return "not written (progress/done is false)"
    try:
        embeddings, labels, views = store.read_chunk(chunk)
        scales = store.read_scales(chunk)
    except StoreDamaged as exc:  # decoded, but labels or view parameters are out of bounds
        return "; ".join(exc.problems)
    except Exception as exc:  # noqa: BLE001 - any decode failure is exactly what we report
        return f"unreadable ({type(exc).__name__}: {exc})"
    if scales is not None and not (np.isfinite(scales).all() and (scales > 0).all()):
        return "int8 scales that are not positive and finite"
    if not np.isfinite(embeddings).all():
        return f"{int((~np.isfinite(embeddings)).sum())} non-finite embedding values"
    bad_labels = (labels < -1) | (labels >= store.shape.num_classes)
    if bad_labels.any():
        return f"{int(bad_labels.sum())} labels outside [-1, {store.shape.num_classes})"
    left_out = np.isnan(views).all(axis=(1, 2))  # samples left out at extraction: NaN rows, by design
    if not np.isfinite(views[~left_out]).all():
        return "non-finite view parameters"
    return None


def verify_store(url: str) -> VerifyReport:
    """Check a store without the teacher: every check of opening it, then every chunk read.

    The opening checks (layout, head, labels digest) are reported rather than raised, and every chunk is read
    through the same checked path the trainers use.
    """
    report = VerifyReport(url=url)
    try:
        store = open_store(url, require_complete=False, check=False)
    except StoreDamaged as exc:  # arrays and attributes disagree: no chunk can be trusted, none is read
        report.problems += exc.problems
        return report
    if not store.complete:
        report.problems.append("store is not marked complete")
    report.problems += store.content_problems()
    if not store.checksummed:
        report.notes.append("format 1 store: chunks carry no checksums (only decoding and value checks apply)")
    try:
        done = store.done_chunks()
    except Exception as exc:  # noqa: BLE001 - a damaged progress array
        report.problems.append(f"array progress/done cannot be read ({type(exc).__name__}: {exc})")
        return report
    # a long verify must not look hung (featstore.progress: a bar, or a few lines in a log)
    for chunk in progress(range(store.num_chunks), desc="verify", unit="chunk", leave=False):
        why = _check_chunk(store, chunk, bool(done[chunk]))
        report.chunks_checked += 1
        if why:
            report.bad_chunks[chunk] = why
    return report


# -- live check ------------------------------------------------------------------------------------------


def _store_policy(store: FeatureStore, dataset: Dataset) -> ViewPolicy:
    """The view policy the store records (the dataset's own when an older store did not record it)."""
    recorded = store.meta.get("views", {}).get("policy")
    if not recorded:
        return dataset.view_policy
    return ViewPolicy.from_dict(recorded)


def _renderable(params: np.ndarray, policy: ViewPolicy) -> np.ndarray:
    """Which rows of (n, P) view parameters describe a box ``render_views`` can cut.

    A row must be finite, integral where it counts, inside the padded image and flip 0/1: a tampered row is
    reported, not allowed to crash the renderer.
    """
    if policy.original:
        return renderable_original(params)
    h, w = policy.source_size
    finite = np.isfinite(params).all(axis=1)
    p = np.where(np.isfinite(params), params, -1.0)
    top, left, ch, cw, flip = (p[:, k] for k in range(len(PARAM_NAMES)))
    integral = (p == np.rint(p)).all(axis=1)
    inside = (
        (top >= 0)
        & (left >= 0)
        & (ch >= 1)
        & (cw >= 1)
        & (top + ch <= h + 2 * policy.pad)
        & (left + cw <= w + 2 * policy.pad)
    )
    return finite & integral & inside & np.isin(flip, (0.0, 1.0))


@dataclass(frozen=True)
class RowComparison:
    """How live rows compare with the stored rows: per-row cosine and norm ratio, and the largest |Δ|."""

    cosines: np.ndarray  # (n,) cosine of each live row to its stored row
    norm_ratios: np.ndarray  # (n,) ‖stored‖ / ‖live‖ (1 where both norms are equal, zero included)
    max_abs_error: float  # max |live - stored| over every value; NaN when there are no rows


def compare_rows(live: np.ndarray, stored: np.ndarray) -> RowComparison:
    """Compare (n, D) live rows with the (n, D) stored rows they should reproduce, in float64.

    A row pair that is zero on both sides has cosine 1; a zero row against a non-zero one has cosine -1 (a
    NaN cosine counts as the worst). The norm ratio is 1 where both norms are equal (two zero rows too) and
    ‖stored‖/‖live‖ otherwise (inf when only the live row is zero).
    """
    live64, stored64 = live.astype(np.float64), stored.astype(np.float64)
    live_norm, stored_norm = np.linalg.norm(live64, axis=1), np.linalg.norm(stored64, axis=1)
    dot = (live64 * stored64).sum(axis=1)
    both_zero = (live_norm == 0) & (stored_norm == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosines = np.nan_to_num(np.where(both_zero, 1.0, dot / (live_norm * stored_norm)), nan=-1.0)
        norm_ratios = np.where(live_norm == stored_norm, 1.0, stored_norm / live_norm)
    max_abs_error = float(np.abs(live - stored).max()) if len(live) else float("nan")
    return RowComparison(cosines=cosines, norm_ratios=norm_ratios, max_abs_error=max_abs_error)


def _pick_rows(store: FeatureStore, sample: int, seed: int) -> np.ndarray:
    """K distinct (sample, view) pairs among the chunks flagged done, drawn from ``seed``; sorted."""
    done = store.done_chunks()
    candidates = np.concatenate(
        [np.arange(*store.chunk_bounds(k)) for k in np.flatnonzero(done)] or [np.empty(0, dtype=np.int64)]
    ).astype(np.int64)
    total = len(candidates) * store.shape.num_views
    k = min(sample, total)
    flat = np.sort(np.random.default_rng(seed).choice(total, size=k, replace=False)) if k else np.empty(0, np.int64)
    return np.stack([candidates[flat // store.shape.num_views], flat % store.shape.num_views], axis=1)


def _identity_problems(
    store: FeatureStore, teacher: TeacherSource, dataset: Dataset, policy: ViewPolicy
) -> tuple[list[str], bool]:
    """(problems, comparable): provenance mismatches, and whether rows can still be compared at all."""
    problems: list[str] = []
    comparable = True
    recorded_teacher = store.meta.get("teacher", {})
    want_sha = recorded_teacher.get("checkpoint_sha256")
    if teacher.checkpoint_sha256 != want_sha:
        problems.append(
            f"teacher checkpoint sha256 {str(teacher.checkpoint_sha256)[:12]}… is not the store's "
            f"{str(want_sha)[:12]}… (the store was extracted from another checkpoint)"
        )
    if teacher.embedding_dim is not None and int(teacher.embedding_dim) != store.shape.dim:
        problems.append(f"teacher embeds to {teacher.embedding_dim} dims, the store holds {store.shape.dim}")
        comparable = False
    try:
        check_input_shape(teacher, list(dataset.image_shape), f"dataset {dataset.spec}")
    except InvalidInput as misfit:
        problems.append(str(misfit))
        comparable = False
    fitted = bool((store.meta.get("head") or {}).get("fitted"))  # fsd store fit-head: not the teacher's own
    if teacher.has_head and not store.has_head:
        problems.append("the store has no head but the teacher has a classifier")
    elif teacher.has_head and not fitted:
        head = store.head_weight()
        if head.shape != teacher.head_weight.shape or not np.array_equal(head, teacher.head_weight.astype(np.float32)):
            problems.append("the stored head/weight is not the teacher's classifier weights")
    recorded_data = store.meta.get("dataset", {})
    if recorded_data.get("fingerprint") != dataset.fingerprint() or len(dataset) != store.shape.num_samples:
        problems.append(
            f"dataset {dataset.spec!r} split {dataset.split!r} (fingerprint {dataset.fingerprint()[:12]}…, "
            f"{len(dataset)} samples) is not the one the store was extracted from (fingerprint "
            f"{str(recorded_data.get('fingerprint'))[:12]}…, {store.shape.num_samples} samples); "
            "rows cannot be paired with samples"
        )
        comparable = False
    else:
        labels_mismatch = store.labels_mismatch(dataset.labels)
        if labels_mismatch is not None:
            problems.append(labels_mismatch)
    mismatch = policy_mismatch(policy.to_dict(), dataset.view_policy)
    if mismatch is not None:
        problems.append(mismatch)
        comparable = comparable and policy.original == dataset.view_policy.original
    return problems, comparable


def _content_problems(store: FeatureStore, dataset: Dataset, chunks: np.ndarray) -> list[str]:
    """For each checked chunk of a lazy dataset, whether its files still hold the bytes extraction read.

    The digest covers every row of the chunk, not just the picked ones: reading bytes is cheap, decoding is not.
    """
    digests = store.content_digests()
    if digests is None or not dataset.lazy:
        return []
    problems = []
    for chunk in (int(c) for c in chunks):
        want = bytes(digests[chunk])
        if want == bytes(32):
            continue  # extracted without a digest
        start, stop = store.chunk_bounds(chunk)
        try:
            got = dataset.content_digest(np.arange(start, stop))
        except FsdError as err:
            problems.append(f"chunk {chunk} (rows {start}…{stop - 1}): {err}")
            continue
        if got != want:
            problems.append(
                f"chunk {chunk} (rows {start}…{stop - 1}): the dataset's files changed since extraction "
                "(their content digest differs); re-extract the store"
            )
    return problems


def _resolve_teacher(
    teacher: TeacherBinding | TeacherSource, dataset: Dataset | None
) -> tuple[TeacherBinding | None, TeacherSource, Dataset]:
    """(binding or None, source, dataset): a binding brings its own dataset, a bare source needs one passed."""
    bound = teacher if isinstance(teacher, TeacherBinding) else None
    source, dataset = (bound.source, bound.dataset) if bound is not None else (teacher, dataset)
    if dataset is None:
        raise InvalidInput("verify_live needs the dataset a TeacherSource is run over")
    return bound, source, dataset


@dataclass
class _StoredRows:
    """The picked rows as the store holds them: which (sample, view) pairs, their rows and view parameters."""

    rows: np.ndarray  # (n, 2) (sample, view)
    embeddings: np.ndarray  # (n, D) decoded stored rows
    params: np.ndarray  # (n, P) stored view parameters
    chunks: np.ndarray  # the chunks the rows were read from

    def subset(self, keep: np.ndarray) -> _StoredRows:
        return _StoredRows(self.rows[keep], self.embeddings[keep], self.params[keep], self.chunks)


def _read_picked(store: FeatureStore, picks: np.ndarray, problems: list[str]) -> _StoredRows | None:
    """The stored rows and view parameters of ``picks``, reading each touched chunk once.

    A chunk that fails to decode is reported in ``problems`` and its rows skipped; None when no chunk could be
    read.
    """
    stored_rows, stored_params, kept = [], [], []
    chunk_of = picks[:, 0] // store.chunk_rows
    for chunk in np.unique(chunk_of):
        members = np.flatnonzero(chunk_of == chunk)
        start, _ = store.chunk_bounds(int(chunk))
        try:
            embeddings, _, views = store.read_chunk(int(chunk))
        except Exception as exc:  # noqa: BLE001 - reported, like verify_store does
            problems.append(f"chunk {int(chunk)} unreadable ({type(exc).__name__}); {len(members)} picked rows skipped")
            continue
        local, view = picks[members, 0] - start, picks[members, 1]
        stored_rows.append(embeddings[local, view])
        stored_params.append(views[local, view])
        kept.append(members)
    if not kept:
        return None
    kept_idx = np.concatenate(kept)
    return _StoredRows(
        rows=picks[kept_idx],
        embeddings=np.concatenate(stored_rows),
        params=np.concatenate(stored_params),
        chunks=np.unique(chunk_of[kept_idx]),
    )


def _view_mismatches(
    rows: np.ndarray, params: np.ndarray, policy: ViewPolicy, view_seed: int, dataset: Dataset
) -> list[tuple[int, int]]:
    """(sample, view) of every row whose stored view parameters differ from the ones the seed draws."""
    sizes = dataset.source_sizes(rows[:, 0]) if policy.original else [None] * len(rows)
    expected = np.stack(
        [sample_view_params(policy, int(view_seed), int(s), int(v), size) for (s, v), size in zip(rows, sizes)]
    ).reshape(-1, len(PARAM_NAMES))
    mismatch = ~(params == expected).all(axis=1)
    return [(int(s), int(v)) for s, v in rows[mismatch]]


def _check_view_params(
    check: LiveCheck, store: FeatureStore, stored: _StoredRows, policy: ViewPolicy, dataset: Dataset
) -> _StoredRows:
    """The rows that can be rendered; the others are recorded in ``check``.

    Recorded: rows whose stored view parameters the store's seed does not draw, and rows whose parameters
    describe no crop.
    """
    view_seed = store.meta.get("views", {}).get("seed", 0)  # None: imported from a file without one
    if view_seed is not None:  # without a seed the stored parameters can only be replayed, not re-drawn
        check.view_mismatches = _view_mismatches(stored.rows, stored.params, policy, int(view_seed), dataset)
    renderable = _renderable(stored.params, policy)
    if not renderable.all():
        check.problems.append(
            f"{int((~renderable).sum())} picked rows have view parameters that describe no valid "
            "crop; they were not compared"
        )
    return stored.subset(renderable)


def _embed_views(
    bound: TeacherBinding,
    dataset: Dataset,
    rows: np.ndarray,
    params: np.ndarray,
    *,
    dim: int,
    batch_size: int,
    device: torch.device,
) -> np.ndarray:
    """(n, dim) float32 teacher embeddings, on ``device``, of the views rendered from the stored ``params``."""
    live = np.empty((len(rows), dim), dtype=np.float32)
    for start, rendered in zip(range(0, len(rows), batch_size), rows_batches(dataset, rows[:, 0], params, batch_size)):
        x = rendered.x[:, 0].to(device)
        live[start : start + len(x)] = bound.embed(x).float().cpu().numpy()
    return live


@torch.no_grad()
def verify_live(
    store: FeatureStore | str,
    teacher: TeacherBinding | TeacherSource,
    dataset: Dataset | None,
    sample: int,
    seed: int,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> LiveCheck:
    """Recompute ``sample`` random (sample, view) rows of ``store`` with ``teacher`` and compare.

    ``teacher`` is a binding (``dataset`` None: the binding's), or a source run over ``dataset``.

    Rows are drawn (by ``seed``) among the chunks flagged done; all of them when ``sample`` exceeds
    N × V. Each row's stored view parameters must equal ``sample_view_params(policy, store seed, i, v)``;
    the view is rendered from the stored parameters, embedded and compared with the stored decoded row
    (cosine, |Δ|, norm ratio). The result passes when every provenance check holds, no parameters differ,
    every cosine reaches ``LIVE_COSINE_THRESHOLDS[store dtype]`` and every norm ratio is within
    ``LIVE_NORM_TOLERANCE[store dtype]`` of 1. A store imported without a view seed skips the re-drawing of
    the parameters (they are only replayed). Every input and provenance check runs before any row is
    recomputed.
    """
    if sample <= 0:
        raise InvalidInput(f"sample must be positive, got {sample}")
    if isinstance(store, str):
        store = open_store(store, require_complete=False)
    check = LiveCheck(
        dtype=store.dtype,
        threshold=LIVE_COSINE_THRESHOLDS[store.dtype],
        requested=int(sample),
        norm_tolerance=LIVE_NORM_TOLERANCE[store.dtype],
    )
    bound, source, dataset = _resolve_teacher(teacher, dataset)
    policy = _store_policy(store, dataset)
    problems, comparable = _identity_problems(store, source, dataset, policy)
    check.problems += problems
    if not comparable:
        return check
    picks = _pick_rows(store, sample, seed)
    check.requested = len(picks)
    if not len(picks):
        check.problems.append("no chunk is flagged done: nothing to compare")
        return check
    stored = _read_picked(store, picks, check.problems)
    if stored is None:
        return check
    stored = stored.subset(~np.isnan(stored.params).all(axis=1))  # left out at extraction (--skip-bad-samples)
    stored = _check_view_params(check, store, stored, policy, dataset)
    device = torch.device(device)
    bound = (bound or bind_source(source, dataset)).to(device)
    live = _embed_views(
        bound, dataset, stored.rows, stored.params, dim=stored.embeddings.shape[1], batch_size=batch_size, device=device
    )
    check.problems += _content_problems(store, dataset, stored.chunks)
    comparison = compare_rows(live, stored.embeddings)
    check.rows = stored.rows
    check.cosines, check.norm_ratios = comparison.cosines, comparison.norm_ratios
    check.max_abs_error = comparison.max_abs_error
    return check
