"""Tests for distill.losses: hand-computed values, direct-formula checks written with plain torch ops, the
TH-KD gradient path through a frozen teacher head, recipes / --loss parsing, the Criterion, and the registry.

Reference: /work/shared/docs/methods.md (RepDistiller convention; HeadSharingKD official-code TH-KD term).
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill.losses import (
    LOSSES,
    RECIPES,
    Criterion,
    DistillInputs,
    DistillLoss,
    TrainingContext,
    build_criterion,
    kl_soft_targets,
    parse_loss_spec,
    resolve_weights,
)
from distill.losses.ce import CrossEntropy
from distill.losses.cosine import CosineEmbedding
from distill.losses.kd import LogitKD
from distill.losses.kde import NormalisedEmbeddingL2
from distill.losses.th import TeacherHeadKD
from distill.models.heads import LinearHead, frozen_head_from_weights
from featstore.errors import FsdError, InvalidInput, UnknownName
from featstore.registry import Registry

B, D, C = 6, 5, 7


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def random_inputs(
    seed: int = 0, batch: int = B, dim: int = D, classes: int = C, dtype: torch.dtype = torch.float64
) -> DistillInputs:
    """A DistillInputs with every field filled, built the way the trainer builds it (g_t(z_s), g_t(z_t))."""
    g = torch.Generator().manual_seed(seed)
    z_s = torch.randn(batch, dim, generator=g, dtype=dtype)
    z_t = torch.randn(batch, dim, generator=g, dtype=dtype)
    w_t = torch.randn(classes, dim, generator=g, dtype=dtype)
    b_t = torch.randn(classes, generator=g, dtype=dtype)
    student_logits = torch.randn(batch, classes, generator=g, dtype=dtype) * 2
    labels = torch.randint(0, classes, (batch,), generator=g)
    return DistillInputs(
        student_embedding=z_s,
        student_logits=student_logits,
        labels=labels,
        teacher_embedding=z_t,
        teacher_logits=z_t @ w_t.T + b_t,
        student_logits_th=z_s @ w_t.T + b_t,
        indices=torch.arange(batch),
        student_feature_map=torch.randn(batch, 3, 2, 2, generator=g, dtype=dtype),
    )


def manual_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Σ_c p_t (log p_t − log p_s), averaged over the batch, × T² — plain exp/log/sum, no kl_div/softmax."""
    s = student_logits / temperature
    tt = teacher_logits / temperature
    log_p_s = s - torch.log(torch.exp(s).sum(dim=1, keepdim=True))
    log_p_t = tt - torch.log(torch.exp(tt).sum(dim=1, keepdim=True))
    p_t = torch.exp(log_p_t)
    per_sample = (p_t * (log_p_t - log_p_s)).sum(dim=1)
    return per_sample.sum() / student_logits.shape[0] * temperature**2


# --------------------------------------------------------------------------------------------------------------
# Hand-computed values
# --------------------------------------------------------------------------------------------------------------

# Two classes, s = [0, 0] → p_s = [1/2, 1/2]; t = [ln 3, 0] → p_t = [3/4, 1/4].
# KL(p_t ‖ p_s) = 3/4·ln((3/4)/(1/2)) + 1/4·ln((1/4)/(1/2)) = 0.75·ln 1.5 − 0.25·ln 2
#              = 0.75·0.4054651 − 0.25·0.6931472 = 0.3040988 − 0.1732868 = 0.1308120
KL_HAND = 0.75 * math.log(1.5) - 0.25 * math.log(2.0)


def test_kd_hand_value_temperature_one():
    assert KL_HAND == pytest.approx(0.1308120, abs=1e-7)
    inputs = DistillInputs(
        student_embedding=torch.zeros(1, 2),
        student_logits=t([[0.0, 0.0]]),
        labels=torch.tensor([0]),
        teacher_logits=t([[math.log(3.0), 0.0]]),
    )
    assert LogitKD(temperature=1.0)(inputs).item() == pytest.approx(0.1308120, abs=1e-7)


def test_kd_temperature_scales_by_t_squared():
    # T = 2 and t = [2 ln 3, 0]: t/T = [ln 3, 0] gives the same p_t = [3/4, 1/4]; s/T = [0, 0] the same p_s.
    # The KL is therefore again 0.1308120, and the term is × T² = 4 → 0.5232481.
    inputs = DistillInputs(
        student_embedding=torch.zeros(1, 2),
        student_logits=t([[0.0, 0.0]]),
        labels=torch.tensor([0]),
        teacher_logits=t([[2 * math.log(3.0), 0.0]]),
    )
    assert LogitKD(temperature=2.0)(inputs).item() == pytest.approx(4 * 0.1308120, abs=1e-6)
    assert LogitKD(temperature=2.0)(inputs).item() == pytest.approx(4 * KL_HAND, rel=1e-12)


def test_kd_default_temperature_is_four():
    # docs/methods.md: T = 4. t = [4 ln 3, 0] → t/4 = [ln 3, 0]; KL 0.1308120 × 16 = 2.0929922.
    assert LogitKD().temperature == 4.0
    assert TeacherHeadKD().temperature == 4.0
    inputs = DistillInputs(
        student_embedding=torch.zeros(1, 2),
        student_logits=t([[0.0, 0.0]]),
        labels=torch.tensor([0]),
        teacher_logits=t([[4 * math.log(3.0), 0.0]]),
    )
    assert LogitKD()(inputs).item() == pytest.approx(16 * KL_HAND, rel=1e-12)


def test_kd_batchmean_divides_by_batch_size():
    # Row 1 is the hand case (KL 0.1308120); row 2 has equal teacher and student logits (KL 0).
    # Summed over classes, divided by B = 2 (not by B·C = 4): 0.1308120 / 2 = 0.0654060.
    inputs = DistillInputs(
        student_embedding=torch.zeros(2, 2),
        student_logits=t([[0.0, 0.0], [1.0, -2.0]]),
        labels=torch.tensor([0, 1]),
        teacher_logits=t([[math.log(3.0), 0.0], [1.0, -2.0]]),
    )
    assert LogitKD(temperature=1.0)(inputs).item() == pytest.approx(0.0654060, abs=1e-7)


def test_kd_zero_when_student_matches_teacher_and_invariant_to_logit_shift():
    x = random_inputs(1)
    same = DistillInputs(
        student_embedding=x.student_embedding,
        student_logits=x.teacher_logits.clone(),
        labels=x.labels,
        teacher_logits=x.teacher_logits,
    )
    assert LogitKD()(same).item() == pytest.approx(0.0, abs=1e-12)
    shifted = DistillInputs(
        student_embedding=x.student_embedding,
        student_logits=x.teacher_logits + 3.5,
        labels=x.labels,
        teacher_logits=x.teacher_logits,
    )
    assert LogitKD()(shifted).item() == pytest.approx(0.0, abs=1e-10)


def test_kd_is_direction_teacher_to_student():
    # KL(p_t ‖ p_s), not KL(p_s ‖ p_t): swap the hand case. With p_s = [3/4, 1/4] and p_t = [1/2, 1/2]:
    # KL(p_t ‖ p_s) = 0.5·ln(0.5/0.75) + 0.5·ln(0.5/0.25) = 0.5·(−0.4054651) + 0.5·0.6931472 = 0.1438410,
    # which differs from the other direction's 0.1308120.
    inputs = DistillInputs(
        student_embedding=torch.zeros(1, 2),
        student_logits=t([[math.log(3.0), 0.0]]),
        labels=torch.tensor([0]),
        teacher_logits=t([[0.0, 0.0]]),
    )
    assert LogitKD(temperature=1.0)(inputs).item() == pytest.approx(0.1438410, abs=1e-7)


def test_ce_hand_values():
    # logits [ln 3, 0] → p = [3/4, 1/4]. Label 0: −ln 0.75 = 0.2876821; label 1: −ln 0.25 = 1.3862944.
    # Batch of both, mean reduction: (0.2876821 + 1.3862944) / 2 = 0.8369882.
    logits = t([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])
    ce = CrossEntropy()
    one = DistillInputs(student_embedding=torch.zeros(1, 2), student_logits=logits[:1], labels=torch.tensor([0]))
    assert ce(one).item() == pytest.approx(0.2876821, abs=1e-7)
    both = DistillInputs(student_embedding=torch.zeros(2, 2), student_logits=logits, labels=torch.tensor([0, 1]))
    assert ce(both).item() == pytest.approx(0.8369882, abs=1e-7)


def test_ce_matches_manual_formula():
    x = random_inputs(2)
    log_p = x.student_logits - torch.log(torch.exp(x.student_logits).sum(dim=1, keepdim=True))
    expected = -log_p[torch.arange(B), x.labels].mean()
    torch.testing.assert_close(CrossEntropy()(x), expected)


# z_s = [[3, 4], [1, 0]] → normalised [[0.6, 0.8], [1, 0]];  z_t = [[4, 3], [0, 2]] → [[0.8, 0.6], [0, 1]].
# Differences: [−0.2, 0.2] and [1, −1]; squares 0.04 + 0.04 + 1 + 1 = 2.08.
# Cosines: 0.6·0.8 + 0.8·0.6 = 0.96 and 0; so 1 − cos = 0.04 and 1.
Z_S = [[3.0, 4.0], [1.0, 0.0]]
Z_T = [[4.0, 3.0], [0.0, 2.0]]


def emb_inputs(z_s, z_t) -> DistillInputs:
    z_s, z_t = t(z_s), t(z_t)
    return DistillInputs(
        student_embedding=z_s,
        student_logits=torch.zeros(z_s.shape[0], 3, dtype=torch.float64),
        labels=torch.zeros(z_s.shape[0], dtype=torch.long),
        teacher_embedding=z_t,
    )


def test_kde_hand_value_sums_over_batch_and_dims():
    assert NormalisedEmbeddingL2()(emb_inputs(Z_S, Z_T)).item() == pytest.approx(2.08, abs=1e-12)
    # only the first row: 0.04 + 0.04 = 0.08 (sum, not mean, over dims)
    assert NormalisedEmbeddingL2()(emb_inputs(Z_S[:1], Z_T[:1])).item() == pytest.approx(0.08, abs=1e-12)


def test_cosine_hand_value_is_batch_mean():
    # mean(0.04, 1) = 0.52
    assert CosineEmbedding()(emb_inputs(Z_S, Z_T)).item() == pytest.approx(0.52, abs=1e-12)


def test_embedding_losses_are_scale_invariant():
    # Both compare directions only: scaling a row by a positive factor changes nothing.
    scaled_s = [[30.0, 40.0], [0.5, 0.0]]
    scaled_t = [[0.4, 0.3], [0.0, 7.0]]
    assert NormalisedEmbeddingL2()(emb_inputs(scaled_s, scaled_t)).item() == pytest.approx(2.08, abs=1e-12)
    assert CosineEmbedding()(emb_inputs(scaled_s, scaled_t)).item() == pytest.approx(0.52, abs=1e-12)


def test_kde_and_cosine_direct_formulas_and_their_relation():
    x = random_inputs(3, batch=9, dim=11)
    z_s, z_t = x.student_embedding, x.teacher_embedding
    u = z_s / torch.sqrt((z_s**2).sum(dim=1, keepdim=True))
    v = z_t / torch.sqrt((z_t**2).sum(dim=1, keepdim=True))
    kde_expected = ((u - v) ** 2).sum()
    cos_expected = (1 - (u * v).sum(dim=1)).mean()
    kde, cos = NormalisedEmbeddingL2()(x), CosineEmbedding()(x)
    torch.testing.assert_close(kde, kde_expected)
    torch.testing.assert_close(cos, cos_expected)
    torch.testing.assert_close(kde, 2 * 9 * cos)  # KDE = 2·B·cos (cosine.py docstring)


@pytest.mark.parametrize("loss", [NormalisedEmbeddingL2, CosineEmbedding])
def test_embedding_losses_reject_unequal_shapes(loss):
    x = random_inputs(4)
    x.teacher_embedding = torch.randn(B, D + 1, dtype=torch.float64)
    with pytest.raises(InvalidInput, match="shape"):
        loss()(x)


# --------------------------------------------------------------------------------------------------------------
# Direct-formula checks on random tensors
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 0.5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kd_equals_manual_formula(seed, temperature):
    x = random_inputs(seed)
    expected = manual_kd(x.student_logits, x.teacher_logits, temperature)
    torch.testing.assert_close(LogitKD(temperature=temperature)(x), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        kl_soft_targets(x.student_logits, x.teacher_logits, temperature), expected, rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_th_equals_kd_formula_on_teacher_head_of_student_embedding(seed, bias):
    g = torch.Generator().manual_seed(100 + seed)
    z_s = torch.randn(B, D, generator=g, dtype=torch.float64)
    z_t = torch.randn(B, D, generator=g, dtype=torch.float64)
    w = torch.randn(C, D, generator=g, dtype=torch.float64)
    b = torch.randn(C, generator=g, dtype=torch.float64) if bias else None
    g_t = frozen_head_from_weights(w, b).double()  # the head is built in float32; compare in float64
    w = g_t.weight  # the float32-rounded copy
    b = g_t.bias
    own_student_logits = torch.randn(B, C, generator=g, dtype=torch.float64)  # g_s(z_s): must NOT be used
    inputs = DistillInputs(
        student_embedding=z_s,
        student_logits=own_student_logits,
        labels=torch.zeros(B, dtype=torch.long),
        teacher_embedding=z_t,
        teacher_logits=g_t(z_t),
        student_logits_th=g_t(z_s),
    )
    # g_t written out by hand: z W^T (+ b)
    th_s = z_s @ w.T + (b if bias else 0)
    th_t = z_t @ w.T + (b if bias else 0)
    expected = manual_kd(th_s, th_t, 4.0)
    got = TeacherHeadKD()(inputs)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    # and it is not the plain KD term on the student's own logits
    assert not torch.allclose(got, manual_kd(own_student_logits, th_t, 4.0))


def test_frozen_head_copies_weights_and_is_frozen():
    w, b = torch.randn(C, D), torch.randn(C)
    head = frozen_head_from_weights(w, b)
    assert isinstance(head, LinearHead)
    assert head.in_features == D and head.out_features == C
    assert not head.training
    assert all(not p.requires_grad for p in head.parameters())
    torch.testing.assert_close(head.weight, w)
    torch.testing.assert_close(head.bias, b)
    w.add_(1.0)  # a copy, not a view of the caller's tensor
    assert not torch.allclose(head.weight, w)
    no_bias = frozen_head_from_weights(torch.randn(C, D), None)
    assert no_bias.bias is None


def test_th_gradient_flows_to_student_embedding_not_to_frozen_head():
    g = torch.Generator().manual_seed(7)
    head = frozen_head_from_weights(torch.randn(C, D, generator=g), torch.randn(C, generator=g))
    z_s = torch.randn(B, D, generator=g, requires_grad=True)
    z_t = torch.randn(B, D, generator=g)
    with torch.no_grad():
        teacher_logits = head(z_t)
    inputs = DistillInputs(
        student_embedding=z_s,
        student_logits=torch.randn(B, C, generator=g),
        labels=torch.zeros(B, dtype=torch.long),
        teacher_embedding=z_t,
        teacher_logits=teacher_logits,
        student_logits_th=head(z_s),
    )
    loss = TeacherHeadKD()(inputs)
    loss.backward()
    assert z_s.grad is not None and torch.isfinite(z_s.grad).all() and z_s.grad.abs().sum() > 0
    assert head.weight.requires_grad is False and head.bias.requires_grad is False
    assert head.weight.grad is None and head.bias.grad is None


def test_th_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(8)
    w, b = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    head = frozen_head_from_weights(w, b).double()  # gradcheck needs float64
    z_t = torch.randn(2, 4, generator=g, dtype=torch.float64)
    z_s = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)

    def f(z):
        return TeacherHeadKD()(
            DistillInputs(
                student_embedding=z,
                student_logits=torch.zeros(2, 3, dtype=z.dtype),
                labels=torch.zeros(2, dtype=torch.long),
                teacher_logits=head(z_t),
                student_logits_th=head(z),
            )
        )

    assert torch.autograd.gradcheck(f, (z_s,))


def test_kd_shape_mismatch_is_invalid_input():
    x = random_inputs(5)
    x.teacher_logits = torch.randn(B, C + 1, dtype=torch.float64)
    with pytest.raises(InvalidInput, match="KD"):
        LogitKD()(x)


# --------------------------------------------------------------------------------------------------------------
# Recipes, --loss parsing, Criterion
# --------------------------------------------------------------------------------------------------------------


def test_recipes_follow_paper():
    assert RECIPES["th-kd"] == {"ce": 1.0, "kd": 1.5, "th": 0.02}  # official README `kdth`: 1·CE + 1.5·KD + 0.02·KDTH
    assert RECIPES["kd"] == {"ce": 1.0, "kd": 1.5}  # same as th-kd without the TH term
    assert RECIPES["vanilla"] == {"ce": 1.0}
    assert set(RECIPES["kde-th"]) == {"ce", "kd", "kde", "th"}
    assert RECIPES["kde-th"]["th"] == 0.02


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_recipe_uses_registered_losses_with_positive_weights(recipe):
    weights = RECIPES[recipe]
    assert weights and all(name in LOSSES for name in weights)
    assert all(w > 0 and math.isfinite(w) for w in weights.values())
    assert resolve_weights(recipe) == weights
    assert set(build_criterion(recipe).losses) == set(weights)


def test_parse_loss_spec():
    assert parse_loss_spec("ce=1,kd=1.5,th=0.02") == {"ce": 1.0, "kd": 1.5, "th": 0.02}
    assert parse_loss_spec(" ce = 1 , kde=1e-1, ") == {"ce": 1.0, "kde": 0.1}
    assert parse_loss_spec("kd=0") == {"kd": 0.0}
    assert all(isinstance(v, float) for v in parse_loss_spec("ce=1,kd=2").values())


def test_resolve_weights_overrides_adds_and_drops():
    assert resolve_weights("kd", "th=0.02") == {"ce": 1.0, "kd": 1.5, "th": 0.02}
    assert resolve_weights("kd", "kd=3") == {"ce": 1.0, "kd": 3.0}
    assert resolve_weights("th-kd", "th=0") == {"ce": 1.0, "kd": 1.5}  # zero weight drops a term
    assert resolve_weights("kd", None) == RECIPES["kd"]
    assert resolve_weights("kd", "") == RECIPES["kd"]
    # the recipe table itself is not mutated by overrides
    resolve_weights("kd", "kd=9,cos=1")
    assert RECIPES["kd"] == {"ce": 1.0, "kd": 1.5}


def test_build_criterion_zero_weight_term_is_not_built():
    crit = build_criterion("th-kd", "th=0")
    assert set(crit.losses) == {"ce", "kd"}
    # so a step without the TH tensors works
    x = random_inputs(0)
    x.student_logits_th = None
    out = crit(x)
    assert set(out.terms) == {"ce", "kd"}


def test_unknown_loss_lists_valid_names():
    with pytest.raises(UnknownName, match="unknown loss 'focal'") as info:
        parse_loss_spec("ce=1,focal=2")
    msg = str(info.value)
    assert "focal" in msg
    for name in LOSSES.names():
        assert name in msg
    assert isinstance(info.value, FsdError) and isinstance(info.value, KeyError)
    with pytest.raises(UnknownName, match="unknown loss 'nope'"):
        resolve_weights("kd", "nope=1")
    with pytest.raises(UnknownName, match="unknown loss 'nope'"):
        Criterion({"nope": 1.0})


def test_unknown_recipe_lists_valid_names():
    with pytest.raises(UnknownName, match="unknown recipe 'crd-xx'") as info:
        resolve_weights("crd-xx")
    msg = str(info.value)
    assert "crd-th" in msg
    for name in RECIPES:
        assert name in msg
    assert not msg.startswith(("'", '"'))  # UnknownName.__str__ does not quote like KeyError
    with pytest.raises(UnknownName, match="unknown recipe 'nope'"):
        build_criterion("nope")


@pytest.mark.parametrize(
    "spec,reason",
    [
        ("ce", "is not NAME=WEIGHT"),
        ("ce=x", "is not a number"),
        ("ce=-1", "must be finite and ≥ 0"),
        ("ce=nan", "must be finite and ≥ 0"),
        ("", "--loss is empty"),
        (" , ", "--loss is empty"),
        ("ce=", "is not a number"),
        ("ce=inf", "must be finite and ≥ 0"),
        ("ce=1,kd=-0.5", "weight of 'kd' must be finite"),
        ("ce=1,kd", "'kd' is not NAME=WEIGHT"),
    ],
)
def test_malformed_loss_spec_is_invalid_input(spec, reason):
    with pytest.raises(InvalidInput, match=reason):
        parse_loss_spec(spec)


def test_malformed_spec_via_build_criterion():
    with pytest.raises(InvalidInput, match="must be finite"):
        build_criterion("kd", "kd=-1")


def test_all_zero_weights_rejected_up_front():
    with pytest.raises(InvalidInput, match="leaves no loss term"):
        build_criterion("vanilla", "ce=0")


@pytest.mark.parametrize("recipe", ["vanilla", "kd", "kde", "th-kd", "kde-th"])
def test_criterion_total_is_weighted_sum_of_unweighted_terms(recipe):
    x = random_inputs(11)
    crit = build_criterion(recipe, "cos=0.7")
    out = crit(x)
    weights = RECIPES[recipe] | {"cos": 0.7}
    assert set(out.terms) == set(weights) == set(crit.weights)
    expected = sum(weights[name] * LOSSES.get(name)()(x) for name in weights)  # default T = 4
    torch.testing.assert_close(out.total, expected)
    for name, value in out.terms.items():  # terms are logged unweighted
        torch.testing.assert_close(value, LOSSES.get(name)()(x))
    assert out.total.dim() == 0


def test_criterion_th_kd_hand_composition():
    x = random_inputs(12)
    out = build_criterion("th-kd")(x)
    ce = F.cross_entropy(x.student_logits, x.labels)
    kd = manual_kd(x.student_logits, x.teacher_logits, 4.0)
    th = manual_kd(x.student_logits_th, x.teacher_logits, 4.0)
    torch.testing.assert_close(out.total, 1.0 * ce + 1.5 * kd + 0.02 * th)


def test_criterion_passes_temperature_to_kd_terms():
    x = random_inputs(13)
    crit = build_criterion("th-kd", temperature=2.0)
    assert crit.losses["kd"].temperature == 2.0 and crit.losses["th"].temperature == 2.0
    out = crit(x)
    torch.testing.assert_close(out.terms["kd"], manual_kd(x.student_logits, x.teacher_logits, 2.0))
    torch.testing.assert_close(out.terms["th"], manual_kd(x.student_logits_th, x.teacher_logits, 2.0))


def test_criterion_backward_reaches_student_tensors_only():
    # the teacher tensors require grad here too, so a loss that forgot to detach them would give them one
    x = random_inputs(14, dtype=torch.float32)
    student = ("student_embedding", "student_logits", "student_logits_th")
    teacher = ("teacher_logits", "teacher_embedding")
    for name in student + teacher:
        getattr(x, name).requires_grad_(True)
    out = build_criterion("kde-th", "cos=1")(x)
    out.total.backward()
    for name in student:
        grad = getattr(x, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    for name in teacher:
        grad = getattr(x, name).grad
        assert grad is None or not grad.any(), f"the loss back-propagates into {name}"


@pytest.mark.parametrize(
    "name,missing",
    [
        ("kd", "teacher_logits"),
        ("th", "teacher_logits"),
        ("th", "student_logits_th"),
        ("kde", "teacher_embedding"),
        ("cos", "teacher_embedding"),
    ],
)
def test_loss_needing_missing_teacher_tensor_is_invalid_input(name, missing):
    x = random_inputs(15)
    setattr(x, missing, None)
    with pytest.raises(InvalidInput, match=missing):
        LOSSES.get(name)()(x)


def test_criterion_with_missing_teacher_tensor_is_invalid_input():
    x = random_inputs(16)
    x.student_logits_th = None
    with pytest.raises(InvalidInput, match="student_logits_th"):
        build_criterion("th-kd")(x)
    # the vanilla recipe only needs the student's logits and the labels
    x.teacher_logits = x.teacher_embedding = None
    out = build_criterion("vanilla")(x)
    torch.testing.assert_close(out.total, F.cross_entropy(x.student_logits, x.labels))


@pytest.mark.parametrize(
    "name,field",
    [
        ("ce", "labels"),
        ("kd", "teacher_logits"),
        ("th", "student_logits_th"),
        ("kde", "teacher_embedding"),
        ("cos", "teacher_embedding"),
    ],
)
def test_batch_size_mismatch_is_invalid_input(name, field):
    x = random_inputs(17)
    setattr(x, field, getattr(x, field)[:-1])
    with pytest.raises(InvalidInput, match="batch"):
        LOSSES.get(name)()(x)


# --------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------


def test_registry_contains_the_documented_losses():
    assert {"ce", "kd", "th", "kde", "cos"} <= set(LOSSES.names())
    assert LOSSES.get("th") is TeacherHeadKD and LOSSES.get("kd") is LogitKD


class _FakeStore:
    """Just enough of a FeatureStore for losses whose setup reads the store (CRD's teacher bank)."""

    def __init__(self, n: int = 40, dim: int = D) -> None:
        self.rows = np.random.default_rng(0).normal(size=(n, 1, dim)).astype(np.float32)
        self.shape = types.SimpleNamespace(num_samples=n, dim=dim, num_views=1)
        self.num_chunks = 2

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        half = self.shape.num_samples // 2
        return (0, half) if chunk == 0 else (half, self.shape.num_samples)

    def read_chunk(self, chunk: int):
        start, stop = self.chunk_bounds(chunk)
        return self.rows[start:stop], np.arange(start, stop) % C, None  # every class (CRD's negatives)


def _context() -> TrainingContext:
    return TrainingContext(store=_FakeStore(), student_dim=D, teacher_dim=D, num_samples=40, device=torch.device("cpu"))


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_registered_loss_gives_finite_scalar(name):
    factory = LOSSES.get(name)
    loss = factory()
    assert isinstance(loss, DistillLoss)
    loss.setup(_context())
    for dtype in (torch.float32, torch.float64):
        x = random_inputs(20, dtype=dtype)
        value = loss.to(dtype)(x)
        assert isinstance(value, torch.Tensor) and value.dim() == 0
        assert torch.isfinite(value) and value.item() >= -1e-6  # all registered losses are divergences / CE
    # and through the Criterion, alone with weight 1
    criterion = Criterion({name: 1.0})
    criterion.setup(_context())
    out = criterion.to(torch.float64)(random_inputs(21))
    torch.testing.assert_close(out.total, out.terms[name])


def test_duplicate_registration_raises_and_keeps_original():
    class Dummy(DistillLoss):
        pass

    with pytest.raises(ValueError, match="twice"):
        LOSSES.register("ce")(Dummy)
    assert LOSSES.get("ce") is CrossEntropy

    reg: Registry = Registry("thing")
    reg.register("a")(int)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(float)
    assert reg.get("a") is int
    with pytest.raises(UnknownName, match="valid: a"):
        reg.get("b")
