"""Recipes are data: a name → {loss name: weight}. The criterion is their weighted sum.

Weights follow the HeadSharingKD README (resnet32x4 → resnet8x4) where it gives them (docs/methods.md):
``th-kd`` = 1·CE + 1.5·KD + 0.02·TH, and ``kd`` is the same without the TH term, so that the two differ only by
the shared head. ``crd`` is RepDistiller's CRD objective, ``crd-exact`` fsd's store-backed variant
(distill/losses/crd_exact.py). KDE's weight applies to a sum over the batch (distill/losses/kde.py), so it is
small. ``kd-triplet``/``th-kd-triplet`` add fsd's triplet term (distill/losses/triplet.py) at weight 1.
docs/design-notes.md and docs/methods.md give the reasons for each weight.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from distill.losses.base import LOSSES, DistillInputs, TrainingContext
from featstore.errors import InvalidInput, UnknownName

RECIPES: dict[str, dict[str, float]] = {
    "vanilla": {"ce": 1.0},
    "kd": {"ce": 1.0, "kd": 1.5},
    "kde": {"ce": 1.0, "kd": 1.5, "kde": 0.1},
    "th-kd": {"ce": 1.0, "kd": 1.5, "th": 0.02},
    "kde-th": {"ce": 1.0, "kd": 1.5, "kde": 0.1, "th": 0.02},
    # RKD at RepDistiller's β; SP and PKT at β chosen for a batch-normalised (signed) teacher embedding,
    # against which RepDistiller's β (set for pooled ReLU features) swamps CE (docs/design-notes.md)
    "rkd": {"ce": 1.0, "rkd": 1.0},
    "pkt": {"ce": 1.0, "pkt": 10.0},
    "sp": {"ce": 1.0, "sp": 3.0},
    # CRD as RepDistiller runs it (NCE, momentum memories, β = 0.8), and with the teacher head as in the
    # HeadSharingKD README
    "crd": {"ce": 1.0, "crd": 0.8},
    "crd-th": {"ce": 0.9, "kd": 1.0, "crd": 0.8, "th": 0.02},
    "crd-kd": {"ce": 1.0, "kd": 1.0, "crd": 0.8},  # SH-KD step 3 in the README
    # fsd's store-backed InfoNCE variant (exact teacher rows); crd's β, not the same strength (docs/design-notes.md)
    "crd-exact": {"ce": 1.0, "crd-exact": 0.8},
    # KD (and TH-KD) plus a batch-hard triplet term on the student embedding (cosine, margin 0.2) at weight 1
    # (docs/methods.md). Best with class-balanced batches (--samples-per-class).
    "kd-triplet": {"ce": 1.0, "kd": 1.5, "triplet": 1.0},
    "th-kd-triplet": {"ce": 1.0, "kd": 1.5, "th": 0.02, "triplet": 1.0},
}


def parse_loss_spec(spec: str) -> dict[str, float]:
    """Parse a ``--loss`` spec: ``"ce=1,kd=1.5,th=0.02"`` → {"ce": 1.0, "kd": 1.5, "th": 0.02}.

    Args:
        spec: Comma-separated NAME=WEIGHT items.

    Returns:
        The weight of each named loss.

    Raises:
        InvalidInput: An item that is not NAME=WEIGHT, a weight that is not a finite number ≥ 0, or no item.
        UnknownName: A name that is not in ``LOSSES``.
    """
    weights: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise InvalidInput(f"--loss item {item!r} is not NAME=WEIGHT")
        try:
            weight = float(value)
        except ValueError:
            raise InvalidInput(f"--loss weight of {name!r} is not a number: {value!r}") from None
        if not weight == weight or weight < 0 or weight == float("inf"):
            raise InvalidInput(f"--loss weight of {name!r} must be finite and ≥ 0, got {value}")
        LOSSES.get(name)  # raises UnknownName listing the valid losses
        weights[name] = weight
    if not weights:
        raise InvalidInput("--loss is empty; give NAME=WEIGHT pairs, e.g. ce=1,kd=1.5")
    return weights


def apply_th_alpha(weights: dict[str, float], alpha: float) -> dict[str, float]:
    """The paper's α_TH form (Eq. 1/2): split CE and KD between the student head and the teacher head.

    γ·CE → (1−α)·γ·CE + α·γ·CE_TH and a·KD → (1−α)·a·KD + α·a·TH (TH = KD of the teacher-head prediction
    against the teacher). An explicit ``th``/``ce_th`` weight is kept on top of the split.

    Args:
        weights: The recipe's weights.
        alpha: α_TH in [0, 1].

    Returns:
        The split weights.

    Raises:
        InvalidInput: ``alpha`` outside [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInput(f"--th-alpha must lie in [0, 1], got {alpha}")
    out = dict(weights)
    gamma, a = out.pop("ce", 0.0), out.pop("kd", 0.0)
    out.update({"ce": (1 - alpha) * gamma, "kd": (1 - alpha) * a})
    out["ce_th"] = out.get("ce_th", 0.0) + alpha * gamma
    out["th"] = out.get("th", 0.0) + alpha * a
    return out


def resolve_weights(recipe: str, loss_spec: str | None = None, th_alpha: float | None = None) -> dict[str, float]:
    """The recipe's weights, with ``--loss`` entries overriding or adding terms, then the α_TH split.

    Args:
        recipe: A name in ``RECIPES``.
        loss_spec: A ``--loss`` spec whose entries override or add terms (None: the recipe alone).
        th_alpha: α_TH of :func:`apply_th_alpha` (None: no split).

    Returns:
        The weight of every term with a weight above 0.

    Raises:
        UnknownName: An unknown recipe or loss name.
        InvalidInput: A malformed spec, an α_TH outside [0, 1], or no term left with a weight above 0.
    """
    if recipe not in RECIPES:
        raise UnknownName(f"unknown recipe {recipe!r}; valid: {', '.join(sorted(RECIPES))}")
    weights = dict(RECIPES[recipe])
    if loss_spec:
        weights.update(parse_loss_spec(loss_spec))
    if th_alpha is not None:
        weights = apply_th_alpha(weights, th_alpha)
    active = {name: w for name, w in weights.items() if w > 0}
    if not active:
        raise InvalidInput(f"recipe {recipe!r} with --loss {loss_spec!r} leaves no loss term with a weight > 0")
    return active


@dataclass
class CriterionOutput:
    """One step's weighted total and the unweighted value of each term."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]  # unweighted value of each term, for the log


class Criterion(nn.Module):
    """Σ_k w_k · loss_k(inputs) over the recipe's terms.

    Args:
        weights: The weight of each term, by loss name.
        temperature: T, passed to every loss that takes a temperature.
    """

    def __init__(self, weights: dict[str, float], temperature: float = 4.0) -> None:
        super().__init__()
        self.weights = dict(weights)
        built = {}
        for name in weights:
            factory = LOSSES.get(name)
            takes_t = "temperature" in inspect.signature(factory).parameters
            built[name] = factory(temperature=temperature) if takes_t else factory()
        self.losses = nn.ModuleDict(built)

    @property
    def needs(self) -> frozenset[str]:
        """Every :class:`DistillInputs` field some term reads: the trainer computes only these."""
        return frozenset(name for loss in self.losses.values() for name in loss.needs)

    def setup(self, context: TrainingContext) -> None:
        """Set every term up before training (:meth:`DistillLoss.setup`)."""
        for loss in self.losses.values():
            loss.setup(context)

    def resume_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Each term's resumable state (terms that keep none are left out)."""
        return {name: state for name, loss in self.losses.items() if (state := loss.resume_state())}

    def load_resume_state(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        """Restore each term's state from :meth:`resume_state`."""
        for name, loss_state in state.items():
            self.losses[name].load_resume_state(loss_state)

    def forward(self, inputs: DistillInputs) -> CriterionOutput:
        """Every term of one step and their weighted sum."""
        terms = {name: loss(inputs) for name, loss in self.losses.items()}
        total = sum(self.weights[name] * value for name, value in terms.items())
        return CriterionOutput(total=total, terms=terms)


def build_criterion(
    recipe: str, loss_spec: str | None = None, temperature: float = 4.0, th_alpha: float | None = None
) -> Criterion:
    """Build the criterion of a recipe, the way the CLI's ``--recipe``/``--loss``/``--th-alpha`` do.

    Args:
        recipe: A name in ``RECIPES``.
        loss_spec: ``--loss`` NAME=WEIGHT items overriding or adding terms.
        temperature: T of the KD terms.
        th_alpha: α_TH, splitting CE and KD between the student head and the teacher head.

    Returns:
        The weighted sum of the recipe's losses.

    Raises:
        UnknownName: An unknown recipe or loss name.
        InvalidInput: Weights that leave no term, or an invalid spec or α_TH.
    """
    return Criterion(resolve_weights(recipe, loss_spec, th_alpha), temperature=temperature)
