"""Triplet margin loss with in-batch mining.

The loss is FaceNet's (Schroff et al., CVPR 2015), with batch-hard mining from Hermans et al., *In Defense of
the Triplet Loss for Person Re-Identification* (2017). A metric-learning term on the student's own embedding z_s, no teacher involved: for a triplet (anchor a,
positive p of a's class, negative n of another class) the loss is relu(violation(a, p, n) + margin), where
violation is d(a,p) − d(a,n) for a distance and s(a,n) − s(a,p) for a similarity
(:mod:`distill.losses.distances`; cosine on unit-normalised embeddings by default). It pulls same-class
embeddings together and pushes the nearest other class away, which is what the paper's summary credits the
triplet loss with for fine-grained classes ("it helps reduce the class gap between similar classes").

Triplets come from the batch itself (``mining``):

* ``batch-hard`` — per anchor, the farthest positive and the closest negative (one triplet per anchor);
* ``semi-hard`` — every triplet whose negative is farther than the positive but within the margin;
* ``all`` — every (a, p, n) of the batch.

The mean is over the triplets with a loss above zero (0 when there are none), and an anchor without a
positive or a negative in its batch gives no triplet. This is pytorch-metric-learning's
``TripletMarginLoss`` (its default ``AvgNonZeroReducer``) on the triplets of ``BatchHardMiner``,
``TripletMarginMiner(type_of_triplets="semihard")`` or no miner, checked against it in
tests/distill/losses/test_triplet.py. A batch needs two samples of a class for a positive:
``--samples-per-class`` makes class-balanced batches (featstore/stream.py), and :meth:`setup` refuses a
stream whose batches cannot hold a positive at all.
"""

from __future__ import annotations

import warnings

import torch

from distill.losses.base import LOSSES, DistillInputs, DistillLoss, TrainingContext
from distill.losses.distances import Distance, distance_by_name
from featstore.errors import InvalidInput

MINING = ("batch-hard", "semi-hard", "all")


def _pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positives, negatives) as boolean (B, B) masks; an embedding is not its own positive."""
    same = labels[:, None] == labels[None, :]
    positives = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return positives, ~same


def mine_triplets(
    matrix: torch.Tensor, labels: torch.Tensor, distance: Distance, mining: str, margin: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch's triplets under ``mining``.

    They are chosen on the detached matrix, so the gradient flows only through the distances of the triplets
    kept.

    Args:
        matrix: (B, B) distances or similarities of the batch's embeddings.
        labels: (B,) classes.
        distance: The distance ``matrix`` was computed with.
        mining: One of ``MINING``.
        margin: The triplet margin (semi-hard mining keeps violations within it).

    Returns:
        (anchor, positive, negative) index tensors of equal length.
    """
    matrix = matrix.detach()
    positives, negatives = _pair_masks(labels)
    if mining == "batch-hard":
        anchors = torch.nonzero(positives.any(1) & negatives.any(1)).squeeze(1)
        p = distance.hardest_positive(matrix, positives)[anchors]
        n = distance.hardest_negative(matrix, negatives)[anchors]
        return anchors, p, n
    a, p, n = torch.nonzero(positives[:, :, None] & negatives[:, None, :], as_tuple=True)
    if mining == "semi-hard":  # the negative is farther than the positive, but not by the margin
        violation = distance.violation(matrix[a, p], matrix[a, n])
        keep = (violation < 0) & (violation >= -margin)
        a, p, n = a[keep], p[keep], n[keep]
    return a, p, n


@LOSSES.register("triplet")
class TripletMargin(DistillLoss):
    """relu(violation + margin) averaged over the mined triplets with a non-zero loss.

    Args:
        margin: m, the margin a triplet must satisfy (≥ 0).
        mining: One of ``MINING``.
        distance: A :class:`Distance` or its name in ``DISTANCES``.

    Raises:
        InvalidInput: An unknown mining or a negative margin.
    """

    needs = ("student_embedding", "labels")

    def __init__(self, margin: float = 0.2, mining: str = "batch-hard", distance: str | Distance = "cosine") -> None:
        super().__init__()
        if mining not in MINING:
            raise InvalidInput(f"unknown triplet mining {mining!r}; valid: {', '.join(MINING)}")
        if not margin >= 0:
            raise InvalidInput(f"triplet margin must be ≥ 0, got {margin}")
        self.margin, self.mining = float(margin), mining
        self.distance = distance_by_name(distance) if isinstance(distance, str) else distance

    def setup(self, context: TrainingContext) -> None:
        """Refuse batches that cannot hold a positive pair; warn where most anchors would lack one."""
        check_batches_hold_positives(context, "the triplet loss")

    def compute(self, inputs: DistillInputs) -> torch.Tensor:
        """The mean loss over the mined triplets above zero (a graph-attached 0 when there are none)."""
        z, labels = inputs.student_embedding, inputs.labels
        matrix = self.distance.matrix(z)
        a, p, n = mine_triplets(matrix, labels, self.distance, self.mining, self.margin)
        losses = torch.relu(self.distance.violation(matrix[a, p], matrix[a, n]) + self.margin)
        active = losses[losses > 0]
        if active.numel() == 0:
            return z.sum() * 0.0  # no triplet to learn from: zero, still attached to the graph
        return active.mean()


def check_batches_hold_positives(context: TrainingContext, who: str) -> None:
    """Refuse a stream whose batches cannot hold a positive pair; warn where most anchors would lack one.

    Class-balanced batches (``samples_per_class`` ≥ 2) always hold positives. A plain chunk-shuffled batch of
    B samples from C classes is guaranteed one only when B > C (pigeonhole): B ≤ C is refused; fewer than 4
    samples per class on average (B < 4·C) leaves most anchors with at most one positive or none, which is
    warned about.

    Args:
        context: The run's batch size, class balance and store.
        who: The loss's name, for the messages.

    Raises:
        InvalidInput: B ≤ C without class-balanced batches.
    """
    if context.samples_per_class is not None or context.batch_size <= 0:
        return
    classes = int(context.store.shape.num_classes)
    batch = context.batch_size
    if batch <= classes:
        raise InvalidInput(
            f"{who} needs two samples of a class in a batch, and a batch of {batch} from {classes} classes may "
            f"hold none: use --samples-per-class K (class-balanced batches) or a --batch-size above {classes}"
        )
    if batch < 4 * classes:
        warnings.warn(
            f"{who}: batches of {batch} from {classes} classes hold about {batch / classes:.1f} samples per "
            "class, so many anchors have no positive; --samples-per-class K makes class-balanced batches",
            RuntimeWarning,
            stacklevel=2,
        )


@LOSSES.register("triplet-semihard")
class SemiHardTripletMargin(TripletMargin):
    """``triplet`` with semi-hard mining, by name (``--loss triplet-semihard=1``)."""

    def __init__(self, margin: float = 0.2, distance: str | Distance = "cosine") -> None:
        super().__init__(margin=margin, mining="semi-hard", distance=distance)


@LOSSES.register("triplet-all")
class AllTripletMargin(TripletMargin):
    """``triplet`` over every triplet of the batch, by name (``--loss triplet-all=1``)."""

    def __init__(self, margin: float = 0.2, distance: str | Distance = "cosine") -> None:
        super().__init__(margin=margin, mining="all", distance=distance)
