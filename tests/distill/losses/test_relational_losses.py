"""Tests for the relational / embedding losses: RKD (distance + angle), PKT, SP, and which student tensor
KDE / cos / RKD / PKT / SP read (the projected one, P z_s, or z_s itself).

Every loss is checked against an independent implementation written here with plain Python loops or
numpy in float64, plus hand-computed cases and the invariances the methods are built on.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from distill.losses import LOSSES, DistillInputs, build_criterion
from distill.losses.cosine import CosineEmbedding
from distill.losses.kde import NormalisedEmbeddingL2
from distill.losses.pkt import ProbabilisticKT
from distill.losses.rkd import RelationalKD, angle_loss, distance_loss
from distill.losses.sp import SimilarityPreserving, SimilarityPreservingEmbedding
from featstore.errors import InvalidInput

B = 5


def t64(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def randn(*shape, seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def inputs(
    z_s: torch.Tensor,
    z_t: torch.Tensor,
    z_s_t: torch.Tensor | None = None,
    classes: int = 3,
    feature_map: torch.Tensor | None = None,
) -> DistillInputs:
    batch = z_s.shape[0]
    labels = torch.arange(batch) % classes
    logits = torch.zeros(batch, classes, dtype=z_s.dtype)
    return DistillInputs(
        student_embedding=z_s,
        student_logits=logits,
        labels=labels,
        teacher_embedding=z_t,
        teacher_logits=logits.clone(),
        student_logits_th=logits.clone(),
        student_embedding_t=z_s_t,
        student_feature_map=feature_map,
    )


def orthonormal_rows(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Q (rows, cols) with Q Qᵀ = I (rows ≤ cols): z ↦ z Q preserves inner products and distances."""
    q, _ = torch.linalg.qr(randn(cols, rows, seed=seed))
    return q.T.contiguous()


# ------------------------------------------------------------------------------------------------------
# reference implementations (loops, float64, no torch.nn.functional)
# ------------------------------------------------------------------------------------------------------
def huber(x: float) -> float:
    """smooth-L1 with beta 1."""
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def ref_distance(z_s, z_t) -> float:
    def normalised(z):
        z = np.asarray(z, dtype=np.float64)
        n = len(z)
        d = [[math.dist(z[i], z[j]) for j in range(n)] for i in range(n)]
        off = [d[i][j] for i in range(n) for j in range(n) if i != j]
        mu = sum(off) / len(off)
        return [[d[i][j] / mu for j in range(n)] for i in range(n)]

    ds, dt = normalised(z_s), normalised(z_t)
    n = len(ds)
    return sum(huber(ds[i][j] - dt[i][j]) for i in range(n) for j in range(n)) / n**2


def ref_angles(z) -> list[float]:
    """cos ∠(e_i − e_j, e_k − e_j) for every (j, i, k); a zero difference vector gives 0 (as F.normalize)."""
    z = np.asarray(z, dtype=np.float64)
    n = len(z)

    def unit(v):
        norm = math.sqrt(sum(x * x for x in v))
        return [0.0] * len(v) if norm == 0 else [x / norm for x in v]

    out = []
    for j, i, k in itertools.product(range(n), repeat=3):
        a, b = unit(z[i] - z[j]), unit(z[k] - z[j])
        out.append(sum(x * y for x, y in zip(a, b)))
    return out


def ref_angle(z_s, z_t) -> float:
    a_s, a_t = ref_angles(z_s), ref_angles(z_t)
    return sum(huber(x - y) for x, y in zip(a_s, a_t)) / len(a_s)


def ref_pkt(z_s, z_t, eps: float = 1e-7) -> float:
    def conditional(z):
        z = np.asarray(z, dtype=np.float64)
        n = len(z)
        unit = [v / (math.sqrt(sum(x * x for x in v)) + eps) for v in z]  # ‖v‖ + eps, as the official code
        sim = [[(sum(a * b for a, b in zip(unit[i], unit[j])) + 1) / 2 for j in range(n)] for i in range(n)]
        return [[sim[i][j] / sum(sim[i]) for j in range(n)] for i in range(n)]

    ps, pt = conditional(z_s), conditional(z_t)
    n = len(ps)
    return sum(pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps)) for i in range(n) for j in range(n)) / n**2


def ref_sp(z_s, z_t) -> float:
    def gram(z):
        z = np.asarray(z, dtype=np.float64)
        g = z @ z.T
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    n = len(z_s)
    return float(((gram(z_s) - gram(z_t)) ** 2).sum() / n**2)


# ------------------------------------------------------------------------------------------------------
# RKD
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rkd_distance_matches_loop_reference(seed):
    z_s, z_t = randn(B, 3, seed=seed), randn(B, 7, seed=seed + 100) * 4
    got = distance_loss(z_s, z_t).item()
    assert got == pytest.approx(ref_distance(z_s.numpy(), z_t.numpy()), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rkd_angle_matches_loop_reference(seed):
    z_s, z_t = randn(B, 3, seed=seed), randn(B, 7, seed=seed + 100) * 4
    got = angle_loss(z_s, z_t).item()
    assert got == pytest.approx(ref_angle(z_s.numpy(), z_t.numpy()), rel=1e-9, abs=1e-12)


def test_rkd_large_differences_use_the_linear_huber_branch():
    """Distances differing by more than 1 after normalisation exercise |x| − 0.5."""
    z_s = t64([[0.0], [0.0 + 1e-3], [10.0], [10.001], [20.0]])
    z_t = t64([[0.0, 0.0], [5.0, 0.0], [5.0, 0.1], [0.0, 5.0], [0.1, 5.0]])
    assert distance_loss(z_s, z_t).item() == pytest.approx(ref_distance(z_s.numpy(), z_t.numpy()), rel=1e-9)
    assert angle_loss(z_s, z_t).item() == pytest.approx(ref_angle(z_s.numpy(), z_t.numpy()), rel=1e-9)


LINE = t64([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])  # distances 1, 1, 2: mean off-diagonal 4/3
TRIANGLE = t64([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])  # equilateral, side 1


def test_rkd_distance_hand_case():
    """Line: normalised distances 3/4, 3/4, 3/2; triangle: 1, 1, 1. Differences −1/4, −1/4, 1/2 (each twice),
    diagonal 0: Huber sum 2·(1/32 + 1/32 + 1/8) = 3/8 over 9 entries → 1/24."""
    assert distance_loss(LINE, TRIANGLE).item() == pytest.approx(1 / 24, rel=1e-12)
    assert distance_loss(TRIANGLE, LINE).item() == pytest.approx(1 / 24, rel=1e-12)


def test_rkd_angle_hand_case():
    """Of the 27 triplets the 12 non-degenerate ones differ only where i ≠ k: the line gives +1 at the
    ends and −1 at the middle point, the triangle cos 60° = 1/2 everywhere. Differences 1/2 (×4) and
    −3/2 (×2): Huber 4·1/8 + 2·(3/2 − 1/2) = 2.5, over 27."""
    assert angle_loss(LINE, TRIANGLE).item() == pytest.approx(2.5 / 27, rel=1e-12)


def test_rkd_module_weights_hand_case():
    loss = RelationalKD()(inputs(LINE, TRIANGLE)).item()
    assert loss == pytest.approx(25 / 24 + 50 * 2.5 / 27, rel=1e-12)
    custom = RelationalKD(distance_weight=2.0, angle_weight=0.0)(inputs(LINE, TRIANGLE)).item()
    assert custom == pytest.approx(2 / 24, rel=1e-12)


def test_rkd_scale_invariance():
    z_s, z_t = randn(B, 4, seed=3), randn(B, 6, seed=4)
    base = RelationalKD()(inputs(z_s, z_t)).item()
    for c in (0.01, 3.0, 1000.0):
        assert RelationalKD()(inputs(z_s, c * z_t)).item() == pytest.approx(base, rel=1e-9)
        assert RelationalKD()(inputs(c * z_s, z_t)).item() == pytest.approx(base, rel=1e-9)


def test_rkd_zero_for_identical_and_for_congruent_embeddings():
    z = randn(B, 6, seed=5)
    assert RelationalKD()(inputs(z, z.clone())).item() == pytest.approx(0.0, abs=1e-12)
    # a rotated, translated, scaled copy in a higher dimension has the same structure
    z_t = 2.5 * (z @ orthonormal_rows(6, 16)) + randn(1, 16, seed=6)
    assert z_t.shape == (B, 16)
    assert RelationalKD()(inputs(z, z_t)).item() == pytest.approx(0.0, abs=1e-10)


def test_rkd_positive_for_different_structure_and_gradient_to_student_only():
    z_s = randn(B, 8, seed=7).requires_grad_(True)
    z_t = randn(B, 16, seed=8).requires_grad_(True)
    loss = RelationalKD()(inputs(z_s, z_t))
    assert loss.item() > 0
    loss.backward()
    assert z_s.grad is not None and torch.isfinite(z_s.grad).all() and z_s.grad.abs().sum() > 0
    assert z_t.grad is None


def test_rkd_float32_duplicate_points_stay_finite():
    """Two equal student embeddings (distance 0 off the diagonal) must not give NaN gradients."""
    z_s = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0], [3.0, 0.0]], requires_grad=True)
    z_t = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    loss = RelationalKD()(inputs(z_s, z_t))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z_s.grad).all()


# ------------------------------------------------------------------------------------------------------
# PKT
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pkt_matches_loop_reference(seed):
    z_s, z_t = randn(B, 3, seed=seed), randn(B, 7, seed=seed + 100)
    got = ProbabilisticKT()(inputs(z_s, z_t)).item()
    assert got == pytest.approx(ref_pkt(z_s.numpy(), z_t.numpy()), rel=1e-9, abs=1e-15)
    # and it is (up to eps) the mean over (i, j) of the KL between the neighbourhood distributions
    assert got == pytest.approx(ref_pkt(z_s.numpy(), z_t.numpy(), eps=0.0), rel=1e-4)


def test_pkt_zero_for_identical_embeddings():
    z = randn(B, 6, seed=9)
    assert ProbabilisticKT()(inputs(z, z.clone())).item() == pytest.approx(0.0, abs=1e-12)
    z32 = z.float()
    assert abs(ProbabilisticKT()(inputs(z32, z32.clone())).item()) < 1e-6


def test_pkt_invariant_to_positive_scaling_of_either_side():
    z_s, z_t = randn(B, 4, seed=10), randn(B, 9, seed=11)
    base = ProbabilisticKT()(inputs(z_s, z_t)).item()
    assert base > 0
    for c in (0.05, 0.5, 7.0, 1e3):  # up to the eps added to ‖z‖ (official code): ~1e-7 / ‖c z‖ relative
        assert ProbabilisticKT()(inputs(c * z_s, z_t)).item() == pytest.approx(base, rel=1e-4)
        assert ProbabilisticKT()(inputs(z_s, c * z_t)).item() == pytest.approx(base, rel=1e-4)


def test_pkt_zero_for_rotated_embeddings_of_another_dimension():
    z_s = randn(B, 8, seed=12)
    z_t = 3.0 * (z_s @ orthonormal_rows(8, 16, seed=13))
    assert ProbabilisticKT()(inputs(z_s, z_t)).item() == pytest.approx(0.0, abs=1e-12)


def test_pkt_gradient_to_student_only():
    z_s = randn(B, 8, seed=14).requires_grad_(True)
    z_t = randn(B, 16, seed=15).requires_grad_(True)
    ProbabilisticKT()(inputs(z_s, z_t)).backward()
    assert z_s.grad is not None and z_s.grad.abs().sum() > 0 and z_t.grad is None


# ------------------------------------------------------------------------------------------------------
# SP
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sp_matches_numpy_formula(seed):
    z_s, z_t = randn(B, 8, seed=seed), randn(B, 16, seed=seed + 100)
    got = SimilarityPreservingEmbedding()(inputs(z_s, z_t)).item()
    assert got == pytest.approx(ref_sp(z_s.numpy(), z_t.numpy()), rel=1e-12)
    assert got > 0


def test_sp_hand_case():
    """z_s: two orthogonal unit vectors → Ĝ_s = I; z_t: two equal vectors → Ĝ_t = all 1/√2.
    ‖I − Ĝ_t‖² = 2·(1 − 1/√2)² + 2·(1/2), over B² = 4."""
    z_s = t64([[1.0, 0.0], [0.0, 1.0]])
    z_t = t64([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    expected = (2 * (1 - 1 / math.sqrt(2)) ** 2 + 2 * 0.5) / 4
    assert SimilarityPreservingEmbedding()(inputs(z_s, z_t, classes=2)).item() == pytest.approx(expected, rel=1e-12)


def test_sp_zero_when_gram_matrices_match_across_dimensions():
    z_s = randn(B, 8, seed=16)
    z_t = z_s @ orthonormal_rows(8, 16, seed=17)  # (B, 16) with z_t z_tᵀ = z_s z_sᵀ
    assert z_s.shape == (B, 8) and z_t.shape == (B, 16)
    torch.testing.assert_close(z_t @ z_t.T, z_s @ z_s.T)
    assert SimilarityPreservingEmbedding()(inputs(z_s, z_t)).item() == pytest.approx(0.0, abs=1e-20)
    # row-normalised Gram: a global scale of either side changes nothing
    assert SimilarityPreservingEmbedding()(inputs(5.0 * z_s, 0.1 * z_t)).item() == pytest.approx(0.0, abs=1e-20)


@pytest.mark.parametrize("seed", [0, 1])
def test_sp_compares_the_student_feature_map_with_the_teacher_embedding(seed):
    """RepDistiller's SP: the student's last pre-pool map flattened per sample (C·H·W values)."""
    feature_map = randn(B, 3, 2, 2, seed=seed).requires_grad_(True)
    z_s, z_t = randn(B, 8, seed=seed + 50), randn(B, 16, seed=seed + 100)
    got = SimilarityPreserving()(inputs(z_s, z_t, feature_map=feature_map))
    flat = feature_map.detach().reshape(B, -1).numpy()
    assert got.item() == pytest.approx(ref_sp(flat, z_t.numpy()), rel=1e-12)
    assert got.item() != pytest.approx(ref_sp(z_s.numpy(), z_t.numpy()), rel=1e-3)  # not the embedding
    got.backward()
    assert feature_map.grad.abs().sum() > 0
    with pytest.raises(InvalidInput, match="student_feature_map"):
        SimilarityPreserving()(inputs(z_s, z_t))


def test_sp_gradient_to_student_only():
    z_s = randn(B, 8, seed=18).requires_grad_(True)
    z_t = randn(B, 16, seed=19).requires_grad_(True)
    SimilarityPreservingEmbedding()(inputs(z_s, z_t)).backward()
    assert z_s.grad is not None and z_s.grad.abs().sum() > 0 and z_t.grad is None


# ------------------------------------------------------------------------------------------------------
# which student tensor each loss reads; dims
# ------------------------------------------------------------------------------------------------------
def test_distill_inputs_projection_defaults_to_student_embedding():
    z = randn(B, 4)
    assert inputs(z, z).student_embedding_t is z
    p = randn(B, 6, seed=1)
    assert inputs(z, randn(B, 6), p).student_embedding_t is p


@pytest.mark.parametrize("cls", [NormalisedEmbeddingL2, CosineEmbedding])
def test_kde_and_cos_use_the_projection_when_given(cls):
    z_s, z_t = randn(B, 8, seed=20), randn(B, 16, seed=21)
    projected = randn(B, 16, seed=22)
    loss = cls()(inputs(z_s, z_t, projected)).item()
    assert loss == pytest.approx(cls()(inputs(projected, z_t)).item(), rel=1e-12)
    if cls is NormalisedEmbeddingL2:
        ref = ((projected / projected.norm(dim=1, keepdim=True) - z_t / z_t.norm(dim=1, keepdim=True)) ** 2).sum()
    else:
        ref = (1 - (projected * z_t).sum(1) / (projected.norm(dim=1) * z_t.norm(dim=1))).mean()
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    # the projection equal to the teacher → zero
    assert cls()(inputs(z_s, z_t, 3.0 * z_t)).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("cls", [NormalisedEmbeddingL2, CosineEmbedding])
def test_kde_and_cos_fall_back_to_the_student_embedding(cls):
    z_s, z_t = randn(B, 16, seed=23), randn(B, 16, seed=24)
    assert cls()(inputs(z_s, z_t)).item() == pytest.approx(cls()(inputs(z_s, z_t, z_s)).item(), rel=1e-12)
    assert cls()(inputs(z_t * 2, z_t)).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(InvalidInput, match="needs equal embedding shapes"):  # different dims and no projection
        cls()(inputs(randn(B, 8), z_t))


@pytest.mark.parametrize("cls", [NormalisedEmbeddingL2, CosineEmbedding])
def test_kde_and_cos_train_the_projection(cls):
    z_s = randn(B, 8, seed=25).requires_grad_(True)
    projection = torch.nn.Linear(8, 16, bias=False).double()
    z_t = randn(B, 16, seed=26)
    cls()(inputs(z_s, z_t, projection(z_s))).backward()
    assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0
    assert z_s.grad is not None and z_s.grad.abs().sum() > 0


@pytest.mark.parametrize("cls", [RelationalKD, ProbabilisticKT, SimilarityPreservingEmbedding])
def test_relational_losses_read_the_raw_student_embedding(cls):
    """Dimension-free: they compare batch structure of z_s itself; a projection does not change them."""
    z_s, z_t = randn(B, 8, seed=27), randn(B, 16, seed=28)
    plain = cls()(inputs(z_s, z_t)).item()
    with_projection = cls()(inputs(z_s, z_t, randn(B, 16, seed=29))).item()
    assert with_projection == pytest.approx(plain, rel=1e-12)


@pytest.mark.parametrize("recipe", ["rkd", "pkt", "sp"])
def test_relational_recipes_accept_different_dims(recipe):
    z_s = randn(B, 8, seed=30).requires_grad_(True)
    z_t = randn(B, 16, seed=31)
    feature_map = randn(B, 2, 3, 3, seed=32).requires_grad_(True)
    out = build_criterion(recipe)(inputs(z_s, z_t, feature_map=feature_map))
    assert set(out.terms) == {"ce", recipe}
    assert torch.isfinite(out.total)
    out.total.backward()
    grad = feature_map.grad if recipe == "sp" else z_s.grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["rkd", "pkt", "sp-embed"])
def test_relational_losses_registered_and_check_batch(name):
    loss = LOSSES.get(name)()
    with pytest.raises(InvalidInput, match="teacher_embedding"):
        loss(
            DistillInputs(
                student_embedding=randn(B, 4), student_logits=randn(B, 3), labels=torch.zeros(B, dtype=torch.long)
            )
        )
    with pytest.raises(InvalidInput, match="batch"):
        loss(inputs(randn(B, 4), randn(B + 1, 4)))
