"""``crd-exact``: contrastive representation distillation with its teacher memory replaced by the store.

This is fsd's variant of CRD (Tian et al., ICLR 2020), not the objective RepDistiller runs (that is ``crd``,
distill/losses/crd.py).

Both embeddings are projected to 128-d unit vectors (trainable linear maps). Two contrastive directions:

* student anchor: the positive is the teacher embedding of the *same* sample and view (from the batch);
  negatives are teacher embeddings of K other samples. Because the teacher's embeddings are in the store,
  the teacher side of the memory is **exact**: the raw identity-view embeddings are read once from the
  store (chunk by chunk, kept as float16: N·D·2 bytes) and projected with the *current* teacher projection
  — no stale momentum copy as in the original CRD. As with CRD's memory, negatives carry no gradient.
* teacher anchor: the positive is the current student projection; negatives come from a student memory
  of 128-d vectors indexed by sample id and momentum-updated (momentum 0.5) as in CRD.

Each direction uses the softmax (InfoNCE) form of the contrastive objective over 1 positive + K negatives
at temperature τ = 0.07, with one set of K negatives per batch shared by its anchors; a negative that is
the anchor's own sample is masked out. K = 16,384 by default, at most N − 1.

How it differs from ``crd``: InfoNCE (softmax over 1 + K) instead of NCE with a fixed normaliser; exact
teacher rows instead of a momentum memory; the student anchor's positive is the live teacher projection of
its own batch row and the teacher anchor's the live student projection (``crd`` scores both against the
detached memory rows); one set of K negatives per batch drawn uniformly (same-class rows allowed; ``crd``
draws K per anchor from other classes). At the same weight β = 0.8 its student gradient is about twice
``crd``'s (docs/design-notes.md), so the two weights are not interchangeable.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distill.losses.base import LOSSES, DistillInputs, SeededDistillLoss, TrainingContext
from featstore.errors import InvalidInput, StoreError


def _teacher_bank(
    store, device: torch.device, skip_bad_chunks: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The identity-view teacher embeddings of every sample as float16 (N, D), and the rows usable as negatives.

    The embeddings are read chunk by chunk; the usable rows are None when every row is usable.

    A chunk that cannot be read or holds non-finite values is refused, as the stream refuses it — or, with
    ``skip_bad_chunks``, left out of the negatives (a NaN negative would make every CRD loss NaN).
    """
    bank = torch.zeros((store.shape.num_samples, store.shape.dim), dtype=torch.float16)
    usable = torch.ones(store.shape.num_samples, dtype=torch.bool)
    for chunk in range(store.num_chunks):
        start, stop = store.chunk_bounds(chunk)
        try:
            rows, _, _ = store.read_chunk(chunk)
            problem = None if np.isfinite(rows[:, 0]).all() else "non-finite teacher embeddings"
        except Exception as exc:  # noqa: BLE001 - a corrupt chunk surfaces as many exception types
            problem = f"unreadable ({type(exc).__name__}: {exc})"
        if problem is not None:
            message = f"chunk {chunk} of store {getattr(store, 'url', '')} is bad: {problem}"
            if not skip_bad_chunks:
                raise StoreError(f"{message}; run `fsd store verify` and re-extract it (or --skip-bad-chunks)")
            warnings.warn(f"{message}; its rows are left out of CRD's negatives", RuntimeWarning, stacklevel=3)
            usable[start:stop] = False
            continue
        bank[start:stop] = torch.from_numpy(np.ascontiguousarray(rows[:, 0])).to(torch.float16)
    valid = None if usable.all() else usable.nonzero().flatten()
    if valid is not None and len(valid) < 2:
        raise StoreError("crd-exact: fewer than 2 usable rows are left in the store's teacher memory")
    return bank.to(device), valid


def gather_from_ranks(idx: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's (indices, rows) of this step, concatenated in rank order — (idx, rows) outside DDP.

    Why: each rank sees only its own batch, but the student memory must be one memory. Updating it on every
    rank with every rank's rows keeps the copies identical without broadcasting them (DDP's buffer broadcast
    would instead overwrite the other ranks' updates with rank 0's memory, leaving rows rank 0 never saw at
    their random initial value).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return idx, rows
    world = dist.get_world_size()
    size = torch.tensor([len(idx)], device=idx.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    most = int(max(int(n) for n in sizes))
    pad = most - len(idx)
    idx_p = F.pad(idx, (0, pad))
    rows_p = F.pad(rows, (0, 0, 0, pad))
    idx_parts = [torch.empty_like(idx_p) for _ in range(world)]
    row_parts = [torch.empty_like(rows_p) for _ in range(world)]
    dist.all_gather(idx_parts, idx_p)
    dist.all_gather(row_parts, rows_p)
    keep = [int(n) for n in sizes]
    return (
        torch.cat([part[:n] for part, n in zip(idx_parts, keep)]),
        torch.cat([part[:n] for part, n in zip(row_parts, keep)]),
    )


@LOSSES.register("crd-exact")
class StoreBackedCRD(SeededDistillLoss):
    """``crd-exact``: InfoNCE against the store's exact teacher rows and a student memory (the module docstring).

    Args:
        feat_dim: Width of the two projections and of the student memory.
        negatives: K, negatives per batch (at most N − 1).
        tau: τ, the softmax temperature.
        momentum: m, the student memory's momentum.

    Raises:
        InvalidInput: A non-positive width, K or τ, or a momentum outside [0, 1).
    """

    needs = ("student_embedding", "teacher_embedding", "indices")

    def __init__(self, feat_dim: int = 128, negatives: int = 16384, tau: float = 0.07, momentum: float = 0.5) -> None:
        super().__init__()
        if feat_dim <= 0 or negatives <= 0 or tau <= 0 or not 0 <= momentum < 1:
            raise InvalidInput("crd-exact: feat_dim, negatives and tau must be positive and momentum in [0, 1)")
        self.feat_dim, self.negatives, self.tau, self.momentum = feat_dim, negatives, tau, momentum
        self.embed_s: nn.Module | None = None
        self.embed_t: nn.Module | None = None
        self.generator: torch.Generator | None = None
        self.valid_rows: torch.Tensor | None = None

    def setup(self, context: TrainingContext) -> None:
        """Read the store's teacher rows and create the projections and the student memory."""
        n = context.num_samples
        if context.store.shape.dim == 0:
            raise InvalidInput(
                "crd-exact needs a feature store: its teacher memory is the store (not --online-teacher)"
            )
        if n < 2:
            raise InvalidInput("crd-exact needs at least 2 samples in the store")
        self.k = min(self.negatives, n - 1)
        self.embed_s = nn.Linear(context.student_dim, self.feat_dim).to(context.device)
        self.embed_t = nn.Linear(context.teacher_dim, self.feat_dim).to(context.device)
        bank, self.valid_rows = _teacher_bank(context.store, context.device, context.skip_bad_chunks)
        self.register_buffer("teacher_bank", bank, persistent=False)
        if self.valid_rows is not None:
            self.k = min(self.k, len(self.valid_rows) - 1)
        self.generator = torch.Generator(device="cpu").manual_seed(context.seed + 7)
        memory = torch.randn(n, self.feat_dim, generator=self.generator)
        self.register_buffer("student_memory", F.normalize(memory, dim=1).to(context.device))  # saved for --resume

    def compute(self, inputs: DistillInputs) -> torch.Tensor:
        """Both InfoNCE directions against one set of K negatives, then the student memory update."""
        if self.embed_s is None:
            raise InvalidInput("crd-exact was not set up with a store (the trainer calls criterion.setup)")
        idx = inputs.indices.to(self.teacher_bank.device)
        s = F.normalize(self.embed_s(inputs.student_embedding), dim=1)
        t = F.normalize(self.embed_t(inputs.teacher_embedding), dim=1)
        if self.valid_rows is None:
            negatives = torch.randint(0, self.teacher_bank.shape[0], (self.k,), generator=self.generator)
        else:  # rows of skipped chunks are never negatives
            negatives = self.valid_rows[torch.randint(0, len(self.valid_rows), (self.k,), generator=self.generator)]
        negatives = negatives.to(idx.device)
        with torch.no_grad():  # negatives carry no gradient, as CRD's memory-bank negatives
            t_neg = F.normalize(self.embed_t(self.teacher_bank[negatives].to(self.embed_t.weight.dtype)), dim=1)
        s_neg = self.student_memory[negatives]
        own = idx[:, None] == negatives[None, :]  # (B, K): a negative that is the anchor's own sample
        loss = self._info_nce(s, t, t_neg, own) + self._info_nce(t, s, s_neg, own)
        with torch.no_grad():
            idx_all, s_all = gather_from_ranks(idx, s.detach())
            updated = self.momentum * self.student_memory[idx_all] + (1 - self.momentum) * s_all
            self.student_memory[idx_all] = F.normalize(updated, dim=1)
        return loss

    def _info_nce(
        self, anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, own: torch.Tensor
    ) -> torch.Tensor:
        pos = (anchor * positive).sum(dim=1, keepdim=True)
        neg = (anchor @ negatives.t()).masked_fill(own, float("-inf"))
        logits = torch.cat([pos, neg], dim=1) / self.tau
        return F.cross_entropy(logits, torch.zeros(len(anchor), dtype=torch.long, device=anchor.device))
