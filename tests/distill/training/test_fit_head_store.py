"""fit_head against the store it installs into: it never trains on, or measures with, rows left out at
extraction, and it never installs a head into a store re-extracted while the head was being fitted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distill.evaluation.sources import embeddings_from_store
from distill.training import fit_head as fit_head_mod
from distill.training.fit_head import FitHeadConfig, fit_head
from featstore.errors import StoreError
from featstore.store import StoreShape, create_store, open_store, remove_store

N, V, D, P, C = 24, 2, 8, 5, 3
LEFT_OUT = [0, 5, 6]
META = {
    "teacher": {"arch": "t", "checkpoint_sha256": "a" * 64, "embedding_dim": D, "input_shape": [1, 8, 8]},
    "head": None,
    "dataset": {"spec": "digits", "split": "train", "num_samples": N, "fingerprint": "f" * 64, "num_classes": C},
    "views": {"count": V, "kind": "shift", "params_names": ["top", "left", "height", "width", "flip"], "seed": 0},
}


def headless_store(url: Path, sha: str = "a" * 64) -> None:
    """Class-separated embeddings; the LEFT_OUT rows hold zeros and NaN view parameters, as
    ``--skip-bad-samples`` leaves them, with real labels."""
    rng = np.random.default_rng(0)
    labels = np.arange(N) % C
    centres = rng.standard_normal((C, D)).astype(np.float32) * 3
    embeddings = centres[labels][:, None, :] + 0.1 * rng.standard_normal((N, V, D)).astype(np.float32)
    views = rng.random((N, V, P)).astype(np.float32)
    embeddings[LEFT_OUT], views[LEFT_OUT] = 0, np.nan
    meta = {**META, "teacher": {**META["teacher"], "checkpoint_sha256": sha}}
    store = create_store(
        url, shape=StoreShape(N, V, D, P, C), dtype="float32", chunk_rows=8, labels=labels,
        head_weight=None, head_bias=None, meta=meta,
    )  # fmt: skip
    for chunk in range(store.num_chunks):
        a, b = store.chunk_bounds(chunk)
        store.write_chunk(chunk, embeddings[a:b], views[a:b])
    store.mark_complete()


def test_rows_left_out_are_neither_trained_on_nor_evaluated(tmp_path):
    url = tmp_path / "s.zarr"
    headless_store(url)
    result = fit_head(FitHeadConfig(store=str(url), head="linear", epochs=3))
    assert result.samples == V * (N - len(LEFT_OUT))
    assert open_store(url).meta["head"]["fitted"]["samples"] == V * (N - len(LEFT_OUT))
    evaluated = embeddings_from_store(str(url))
    assert len(evaluated.embeddings) == len(evaluated.labels) == N - len(LEFT_OUT)
    assert np.abs(evaluated.embeddings).sum(axis=1).min() > 0  # no zero row among them
    assert evaluated.logits is not None and len(evaluated.logits) == N - len(LEFT_OUT)


def test_a_store_re_extracted_while_the_head_is_fitted_gets_no_head(tmp_path, monkeypatch):
    url = tmp_path / "s.zarr"
    headless_store(url)
    real_train = fit_head_mod._train

    def train_then_re_extract(*args, **kwargs):
        real_train(*args, **kwargs)
        remove_store(str(url))  # extract-teacher --overwrite with another teacher, meanwhile
        headless_store(url, sha="b" * 64)

    monkeypatch.setattr(fit_head_mod, "_train", train_then_re_extract)
    with pytest.raises(StoreError, match="re-extracted while its head was being fitted"):
        fit_head(FitHeadConfig(store=str(url), head="linear", epochs=1))
    store = open_store(url)
    assert not store.has_head and store.meta["teacher"]["checkpoint_sha256"] == "b" * 64
