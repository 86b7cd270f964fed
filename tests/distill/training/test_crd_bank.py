"""CRD's teacher memory never takes negatives from a bad chunk: refused, or left out with --skip-bad-chunks."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distill.losses import DistillInputs, TrainingContext
from distill.losses.crd_exact import StoreBackedCRD as ContrastiveRepresentationKD
from featstore.errors import StoreError

N, D, CHUNK = 30, 6, 10


def _store(bad_chunk: int) -> SimpleNamespace:
    emb = np.random.default_rng(0).standard_normal((N, 1, D)).astype(np.float32)
    emb[bad_chunk * CHUNK + 3, 0, 1] = np.nan

    def read_chunk(chunk: int):
        return emb[chunk * CHUNK : (chunk + 1) * CHUNK], None, None

    return SimpleNamespace(
        shape=SimpleNamespace(num_samples=N, dim=D),
        num_chunks=3,
        url="s.zarr",
        chunk_bounds=lambda c: (c * CHUNK, (c + 1) * CHUNK),
        read_chunk=read_chunk,
    )


def _context(skip: bool) -> TrainingContext:
    return TrainingContext(
        store=_store(bad_chunk=1),
        student_dim=D,
        teacher_dim=D,
        num_samples=N,
        device=torch.device("cpu"),
        seed=0,
        skip_bad_chunks=skip,
    )


def test_a_nan_chunk_is_refused_naming_it() -> None:
    with pytest.raises(StoreError, match="chunk 1 of store s.zarr is bad: non-finite"):
        ContrastiveRepresentationKD(negatives=8).setup(_context(skip=False))


def test_skipped_chunk_rows_are_never_negatives() -> None:
    loss = ContrastiveRepresentationKD(feat_dim=4, negatives=50)
    with pytest.warns(RuntimeWarning, match="chunk 1 .*left out of CRD's negatives"):
        loss.setup(_context(skip=True))
    assert loss.k == 19 and loss.valid_rows.tolist() == [*range(0, 10), *range(20, 30)]
    drawn = []
    real_randint = torch.randint

    def spy(*args, **kwargs):
        out = real_randint(*args, **kwargs)
        drawn.append(out)
        return out

    torch.randint = spy
    try:
        z = torch.randn(4, D)
        value = loss.compute(
            DistillInputs(
                student_embedding=z,
                student_logits=torch.zeros(4, 3),
                labels=torch.zeros(4, dtype=torch.long),
                teacher_embedding=z,
                indices=torch.tensor([0, 1, 20, 21]),
            )
        )
    finally:
        torch.randint = real_randint
    assert torch.isfinite(value)
    negatives = loss.valid_rows[drawn[0]]
    assert not ((negatives >= 10) & (negatives < 20)).any()
