"""``crd``: contrastive representation distillation (Tian et al., ICLR 2020) as RepDistiller's ``CRDLoss`` runs it.

Both embeddings go through a trainable linear map to 128-d and are L2-normalised: v_s = ê_s(z_s), v_t = ê_t(z_t).
Two memories of N rows (one per sample), M_s for student and M_t for teacher projections, start uniform in
±1/√(d/3) and are momentum-updated after every step: M[i] ← normalise(m·M[i] + (1 − m)·v_i), m = 0.5.

For each anchor i of the batch, the contrast set is (i, n_1 … n_K): its own sample first, then K negatives
drawn *per anchor* from the samples of other classes (RepDistiller's ``cls_negative``; without replacement
when the other classes hold at least K samples, else with). Scores are against the **detached memories**:

    h_s(i, j) = exp(M_t[j] · v_s,i / τ) / Z_s        (student anchor, teacher memory)
    h_t(i, j) = exp(M_s[j] · v_t,i / τ) / Z_t        (teacher anchor, student memory)

with τ = 0.07 and the normalisers Z = N · mean(exp(·/τ)) over the *first* batch's (B, K+1) scores, then
fixed for the run (kept with the memories, so --resume continues with the same Z). Each side's loss is
NCE against a uniform noise distribution P_n = 1/N:

    L = −(1/B) Σ_i [ log(h(i, i) / (h(i, i) + K·P_n + ε)) + Σ_k log(K·P_n / (h(i, n_k) + K·P_n + ε)) ]

and ``crd`` = L_s + L_t (ε = 1e-7). Gradients reach v_s through L_s and v_t (the teacher projection only:
the teacher itself is frozen) through L_t. K = 16,384 by default, at most N − 1.

Under DDP the memories are updated with every rank's rows (as ``crd-exact``'s student memory) and Z is the
mean over ranks of the first batch's estimate, so every rank keeps identical copies.

The store only provides z_t, so this loss works with --online-teacher too. ``crd-exact``
(distill/losses/crd_exact.py) is fsd's store-backed InfoNCE variant.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distill.losses.base import LOSSES, DistillInputs, SeededDistillLoss, TrainingContext
from distill.losses.crd_exact import gather_from_ranks
from featstore.errors import InvalidInput

EPS = 1e-7


def all_labels(source) -> np.ndarray:
    """The label of every sample of a store (or the online baseline's generated views), int64 (N,)."""
    if hasattr(source, "dataset"):
        return np.asarray(source.dataset.labels, dtype=np.int64)
    if callable(getattr(source, "labels", None)):
        return np.asarray(source.labels(), dtype=np.int64)
    parts = [source.read_chunk(chunk)[1] for chunk in range(source.num_chunks)]
    return np.concatenate(parts).astype(np.int64)


class OtherClassNegatives:
    """Per-anchor negatives from the samples of other classes (RepDistiller's ``cls_negative`` sampling).

    RepDistiller draws each anchor's K with ``np.random.choice(cls_negative[label], K, replace=False)``; so
    does this, with numpy's partial shuffle, which is cheaper than a full ``torch.randperm`` of the pool
    (docs/design-notes.md). Each batch's numpy generator is seeded from the torch ``generator``, whose state
    --resume saves, so a resumed run draws the same negatives.

    Args:
        labels: (N,) the class of every sample.
        k: Negatives per anchor (K).
        generator: The loss's torch generator, which seeds each batch's draw.

    Raises:
        InvalidInput: The data hold a single class, so no anchor has a negative.
    """

    def __init__(self, labels: np.ndarray, k: int, generator: torch.Generator) -> None:
        self.k, self.generator = k, generator
        self.others = {int(c): np.flatnonzero(labels != c) for c in np.unique(labels)}
        if any(len(rows) == 0 for rows in self.others.values()):
            raise InvalidInput("crd draws its negatives from other classes: the training data has only one class")

    def draw(self, indices: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, K + 1) sample ids: column 0 the anchor's own sample, then its K negatives."""
        out = np.empty((len(indices), self.k + 1), dtype=np.int64)
        out[:, 0] = indices.cpu().numpy()
        rng = np.random.default_rng(int(torch.randint(0, 2**63 - 1, (1,), generator=self.generator)))
        for row, label in enumerate(labels.cpu().tolist()):
            others = self.others.get(int(label))
            if others is None:
                raise InvalidInput(f"crd: batch label {label} is not a class of the training data")
            if self.k <= len(others):
                pick = rng.choice(len(others), self.k, replace=False)
            else:
                pick = rng.integers(0, len(others), self.k)
            np.take(others, pick, out=out[row, 1:])
        return torch.from_numpy(out)


def _dense_route(memory: torch.Tensor, contrast: torch.Tensor) -> bool:
    """Whether scores go through one product with the whole memory (B·(K+1) ≥ N) rather than gathered rows.

    :func:`memory_scores` and its adjoint must take the same route.
    """
    return contrast.numel() >= memory.shape[0]


def memory_scores(anchor: torch.Tensor, memory: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
    """(B, K+1) dot products memory[contrast[i, j]] · anchor[i], without gradient.

    When B·(K+1) rows exceed the memory, one (N, B) product then a gather is cheaper than gathering
    B·(K+1) rows of d values (the same numbers up to summation order). The product is taken as
    memory · anchorᵀ, not anchor · memoryᵀ, the faster order for a (N, d) row-major memory.
    """
    with torch.no_grad(), torch.autocast(anchor.device.type, enabled=False):  # NCE sums 16k terms: float32
        anchor, memory = anchor.float(), memory.float()
        if _dense_route(memory, contrast):
            return (memory @ anchor.t()).t().contiguous().gather(1, contrast)
        return torch.bmm(memory[contrast], anchor.unsqueeze(2)).squeeze(2)


def _scores_transpose(grad: torch.Tensor, memory: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
    """Σ_j grad[i, j] · memory[contrast[i, j]] (B, d): the adjoint of :func:`memory_scores`, by the same route."""
    if _dense_route(memory, contrast):
        dense = torch.zeros((grad.shape[0], memory.shape[0]), dtype=grad.dtype, device=grad.device)
        return (memory.t() @ dense.scatter_add_(1, contrast, grad).t()).t()
    return torch.bmm(grad.unsqueeze(1), memory[contrast]).squeeze(1)


def nce_terms(log_h: torch.Tensor, num_data: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, dloss/dlog_h) of RepDistiller's NCE for log-scores log h (B, 1+K), positive in column 0.

    With c = K·P_n + ε, log(h + c) = log c + softplus(log h − log c) exactly: one fused, overflow-free op
    in place of exp, add and log over the B·(K+1) scores, and its derivative is a sigmoid.
    """
    k = log_h.shape[1] - 1
    noise = k / num_data
    log_c = math.log(noise + EPS)
    shifted = log_h - log_c
    log_terms = F.softplus(shifted)  # log(h + c) − log c
    batch = log_h.shape[0]
    positive = (log_h[:, 0] - log_c - log_terms[:, 0]).sum()
    negative = k * batch * (math.log(noise) - log_c) - log_terms[:, 1:].sum()
    grad = torch.sigmoid(shifted) / batch  # dL/dlog h of a negative: σ(log h − log c) / B
    grad[:, 0] -= 1.0 / batch  # of the positive: −(1 − σ) / B
    return -(positive + negative) / batch, grad


class _MemoryNCE(torch.autograd.Function):
    """NCE of an anchor against detached memory rows, with its gradient computed in the forward pass.

    The memory is updated in place right after the scores; computing dL/d(anchor) while the memory is
    as scored saves keeping a copy of it (or of the (B, N) product) for backward.
    """

    @staticmethod
    def forward(ctx, anchor, memory, contrast, tau: float, log_z: float, num_data: int):
        log_h = memory_scores(anchor, memory, contrast) / tau - log_z
        loss, grad = nce_terms(log_h, num_data)
        with torch.autocast(anchor.device.type, enabled=False):
            grad_anchor = _scores_transpose(grad / tau, memory.float(), contrast)
        ctx.save_for_backward(grad_anchor.to(anchor.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        (grad_anchor,) = ctx.saved_tensors
        return grad_output * grad_anchor, None, None, None, None, None


def memory_nce(anchor: torch.Tensor, memory: torch.Tensor, contrast: torch.Tensor, tau: float, z: float, n: int):
    """One side of ``crd``: NCE of h(i, j) = exp(memory[contrast[i, j]] · anchor[i] / τ) / Z, P_n = 1/n."""
    return _MemoryNCE.apply(anchor, memory.detach(), contrast, tau, math.log(z), n)


def _mean_over_ranks(value: float) -> float:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor) / dist.get_world_size()


@LOSSES.register("crd")
class ContrastiveRepresentationKD(SeededDistillLoss):
    """``crd``: RepDistiller's CRD objective (the module docstring).

    Args:
        feat_dim: Width of the two projections and of the memories.
        negatives: K, negatives per anchor (at most N − 1).
        tau: τ, the temperature of the scores.
        momentum: m, the memories' momentum.

    Raises:
        InvalidInput: A non-positive width, K or τ, or a momentum outside [0, 1).
    """

    needs = ("student_embedding", "teacher_embedding", "indices", "labels")

    def __init__(self, feat_dim: int = 128, negatives: int = 16384, tau: float = 0.07, momentum: float = 0.5) -> None:
        super().__init__()
        if feat_dim <= 0 or negatives <= 0 or tau <= 0 or not 0 <= momentum < 1:
            raise InvalidInput("crd: feat_dim, negatives and tau must be positive and momentum in [0, 1)")
        self.feat_dim, self.negatives, self.tau, self.momentum = feat_dim, negatives, tau, momentum
        self.embed_s: nn.Module | None = None
        self.embed_t: nn.Module | None = None
        self.generator: torch.Generator | None = None  # saved and restored by --resume
        self.sampler: OtherClassNegatives | None = None

    def setup(self, context: TrainingContext) -> None:
        """Create the projections, the memories and the negative sampler for the run's N samples."""
        n = context.num_samples
        if n < 2:
            raise InvalidInput("crd needs at least 2 training samples")
        self.num_data, self.k = n, min(self.negatives, n - 1)
        self.embed_s = nn.Linear(context.student_dim, self.feat_dim).to(context.device)
        self.embed_t = nn.Linear(context.teacher_dim, self.feat_dim).to(context.device)
        self.generator = torch.Generator(device="cpu").manual_seed(context.seed + 7)
        self.sampler = OtherClassNegatives(all_labels(context.store), self.k, self.generator)
        bound = 1.0 / math.sqrt(self.feat_dim / 3)
        for name in ("memory_s", "memory_t"):  # persistent buffers: --resume restores them
            initial = torch.rand(n, self.feat_dim, generator=self.generator) * (2 * bound) - bound
            self.register_buffer(name, initial.to(context.device))
        self.register_buffer("normaliser", torch.full((2,), -1.0, dtype=torch.float64, device=context.device))

    def compute(self, inputs: DistillInputs) -> torch.Tensor:
        """L_s + L_t of the batch against freshly drawn negatives, then the memory update."""
        if self.embed_s is None:
            raise InvalidInput("crd was not set up (the trainer calls criterion.setup)")
        v_s = F.normalize(self.embed_s(inputs.student_embedding), dim=1)
        v_t = F.normalize(self.embed_t(inputs.teacher_embedding), dim=1)
        idx = inputs.indices.to(self.memory_s.device)
        contrast = self.sampler.draw(idx, inputs.labels).to(idx.device)
        loss = self.contrast(v_s, v_t, idx, contrast)
        return loss

    def contrast(self, v_s: torch.Tensor, v_t: torch.Tensor, idx: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
        """L_s + L_t for given contrast ids, then the memory update.

        Separate from :meth:`compute` so tests can give the memories and negatives.

        Args:
            v_s: (B, d) projected, normalised student embeddings.
            v_t: (B, d) projected, normalised teacher embeddings.
            idx: (B,) the batch's sample ids.
            contrast: (B, K+1) memory rows to score, each anchor's own sample first.

        Returns:
            The scalar loss.
        """
        if self.normaliser[0] < 0:  # Z fixed from the first batch, as RepDistiller
            for side, (anchor, memory) in enumerate(((v_s, self.memory_t), (v_t, self.memory_s))):
                first = torch.exp(memory_scores(anchor, memory, contrast) / self.tau).mean()
                self.normaliser[side] = _mean_over_ranks(float(first) * self.num_data)
        z_s, z_t = float(self.normaliser[0]), float(self.normaliser[1])
        loss = memory_nce(v_s, self.memory_t, contrast, self.tau, z_s, self.num_data) + memory_nce(
            v_t, self.memory_s, contrast, self.tau, z_t, self.num_data
        )
        with torch.no_grad():
            idx_all, rows = gather_from_ranks(idx, torch.cat([v_s.detach(), v_t.detach()], dim=1))
            for memory, new in ((self.memory_s, rows[:, : self.feat_dim]), (self.memory_t, rows[:, self.feat_dim :])):
                memory[idx_all] = F.normalize(self.momentum * memory[idx_all] + (1 - self.momentum) * new, dim=1)
        return loss
