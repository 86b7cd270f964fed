"""crd-exact (CRD with a store-backed memory): the loss equals a direct InfoNCE computation over the exact (projected)
teacher rows of the store; the anchor's own sample is never its negative; the student memory is
momentum-updated."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill.losses import DistillInputs, TrainingContext
from distill.losses.crd_exact import StoreBackedCRD as ContrastiveRepresentationKD
from featstore.errors import InvalidInput

N, D_S, D_T = 12, 6, 5


class _Store:
    def __init__(self) -> None:
        self.rows = np.random.default_rng(1).normal(size=(N, 2, D_T)).astype(np.float32)
        self.shape = types.SimpleNamespace(num_samples=N, dim=D_T, num_views=2)
        self.num_chunks = 3

    def chunk_bounds(self, chunk):
        return chunk * 4, min(chunk * 4 + 4, N)

    def read_chunk(self, chunk):
        start, stop = self.chunk_bounds(chunk)
        return self.rows[start:stop], np.zeros(stop - start, np.int64), None


def _setup(negatives=64, momentum=0.5):
    store = _Store()
    loss = ContrastiveRepresentationKD(feat_dim=4, negatives=negatives, tau=0.5, momentum=momentum)
    torch.manual_seed(0)
    loss.setup(
        TrainingContext(
            store=store, student_dim=D_S, teacher_dim=D_T, num_samples=N, device=torch.device("cpu"), seed=3
        )
    )
    return loss, store


def _inputs(idx):
    g = torch.Generator().manual_seed(5)
    z_s = torch.randn(len(idx), D_S, generator=g)
    z_t = torch.randn(len(idx), D_T, generator=g)
    return DistillInputs(
        student_embedding=z_s,
        student_logits=torch.zeros(len(idx), 2),
        labels=torch.zeros(len(idx)),
        teacher_embedding=z_t,
        indices=torch.tensor(idx),
    )


def test_loss_equals_direct_info_nce_over_exact_teacher_rows():
    loss, store = _setup()
    assert loss.k == N - 1  # at most N − 1 negatives
    idx = [2, 7, 9]
    x = _inputs(idx)
    memory_before = loss.student_memory.clone()
    generator_state = loss.generator.get_state()
    got = loss(x)

    negatives = torch.randint(0, N, (loss.k,), generator=torch.Generator().set_state(generator_state))
    s = F.normalize(loss.embed_s(x.student_embedding), dim=1)
    t = F.normalize(loss.embed_t(x.teacher_embedding), dim=1)
    bank = torch.from_numpy(store.rows[:, 0]).half().float()  # the store's identity view, kept as float16
    t_neg = F.normalize(loss.embed_t(bank[negatives]), dim=1)
    s_neg = memory_before[negatives]
    expected = 0.0
    for anchor, positive, negs in ((s, t, t_neg), (t, s, s_neg)):
        for row, i in enumerate(idx):
            logits = [float(anchor[row] @ positive[row]) / 0.5]
            logits += [float(anchor[row] @ negs[j]) / 0.5 for j in range(loss.k) if int(negatives[j]) != i]
            logits = torch.tensor(logits)
            expected += float(-(logits[0] - torch.logsumexp(logits, 0))) / len(idx)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_student_memory_is_momentum_updated_and_normalised():
    loss, _ = _setup(momentum=0.25)
    idx = [0, 5]
    x = _inputs(idx)
    before = loss.student_memory.clone()
    loss(x)
    s = F.normalize(loss.embed_s(x.student_embedding), dim=1).detach()
    expected = F.normalize(0.25 * before[idx] + 0.75 * s, dim=1)
    torch.testing.assert_close(loss.student_memory[idx], expected)
    untouched = [i for i in range(N) if i not in idx]
    torch.testing.assert_close(loss.student_memory[untouched], before[untouched])


def test_crd_needs_a_store_and_valid_options():
    with pytest.raises(InvalidInput, match="must be positive"):
        ContrastiveRepresentationKD(tau=0)
    online = types.SimpleNamespace(shape=types.SimpleNamespace(dim=0))
    with pytest.raises(InvalidInput, match="feature store"):
        ContrastiveRepresentationKD().setup(
            TrainingContext(store=online, student_dim=4, teacher_dim=4, num_samples=10, device=torch.device("cpu"))
        )
    with pytest.raises(InvalidInput, match="set up"):
        ContrastiveRepresentationKD()(_inputs([0]))
