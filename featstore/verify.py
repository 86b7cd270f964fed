"""Store verification: read every chunk and check what a trainer would otherwise silently trust.

Checks: each chunk decompresses, holds finite embeddings (and positive finite int8 scales), labels lie in
[-1, num_classes), view parameters are finite, its ``progress/done`` flag is set; the head is finite; the
shapes agree with the attributes. A chunk that fails is reported by index with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from featstore.store import FeatureStore, open_store


@dataclass
class VerifyReport:
    url: str
    chunks_checked: int = 0
    bad_chunks: dict[int, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # store-level problems (attributes, head)

    @property
    def ok(self) -> bool:
        return not self.bad_chunks and not self.problems

    def lines(self) -> list[str]:
        out = [f"store {self.url}: {self.chunks_checked} chunks checked, {len(self.bad_chunks)} bad"]
        out += [f"  problem: {p}" for p in self.problems]
        out += [f"  bad chunk {k}: {why}" for k, why in sorted(self.bad_chunks.items())]
        out.append("OK" if self.ok else "FAILED")
        return out


def _check_chunk(store: FeatureStore, chunk: int, done: bool) -> str | None:
    if not done:
        return "not written (progress/done is false)"
    try:
        embeddings, labels, views = store.read_chunk(chunk)
    except Exception as exc:  # noqa: BLE001 - any decode failure is exactly what we report
        return f"unreadable ({type(exc).__name__}: {exc})"
    scales = store.read_scales(chunk)
    if scales is not None and not (np.isfinite(scales).all() and (scales > 0).all()):
        return "int8 scales that are not positive and finite"
    if not np.isfinite(embeddings).all():
        return f"{int((~np.isfinite(embeddings)).sum())} non-finite embedding values"
    bad_labels = (labels < -1) | (labels >= store.shape.num_classes)
    if bad_labels.any():
        return f"{int(bad_labels.sum())} labels outside [-1, {store.shape.num_classes})"
    if not np.isfinite(views).all():
        return "non-finite view parameters"
    return None


def verify_store(url: str) -> VerifyReport:
    store = open_store(url, require_complete=False)
    report = VerifyReport(url=url)
    if not store.complete:
        report.problems.append("store is not marked complete")
    expected_n = store.meta.get("dataset", {}).get("num_samples")
    if expected_n is not None and expected_n != store.shape.num_samples:
        report.problems.append(f"attributes say {expected_n} samples, arrays hold {store.shape.num_samples}")
    if store.meta.get("views", {}).get("count") not in (None, store.shape.num_views):
        report.problems.append("attributes and arrays disagree on the number of views")
    if not np.isfinite(store.head_weight()).all():
        report.problems.append("head weights are not finite")
    done = store.done_chunks()
    for chunk in range(store.num_chunks):
        why = _check_chunk(store, chunk, bool(done[chunk]))
        report.chunks_checked += 1
        if why:
            report.bad_chunks[chunk] = why
    return report
