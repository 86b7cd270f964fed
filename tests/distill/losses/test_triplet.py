"""The triplet loss against pytorch-metric-learning's TripletMarginLoss with the matching miner (values and
gradients on random batches), hand-computed cases, and its refusals."""

from __future__ import annotations

import pytest
import torch

from distill.losses import DistillInputs, TrainingContext
from distill.losses.distances import CosineSimilarity, EuclideanDistance, distance_by_name
from distill.losses.triplet import TripletMargin
from featstore.errors import InvalidInput, UnknownName

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
pml_distances = pytest.importorskip("pytorch_metric_learning.distances")


def _inputs(z: torch.Tensor, labels: torch.Tensor) -> DistillInputs:
    return DistillInputs(student_embedding=z, student_logits=torch.zeros(len(z), 3), labels=labels)


def _pml(z: torch.Tensor, labels: torch.Tensor, mining: str, margin: float, distance: str) -> torch.Tensor:
    dist = pml_distances.CosineSimilarity() if distance == "cosine" else pml_distances.LpDistance()
    loss = pml_losses.TripletMarginLoss(margin=margin, distance=dist)
    if mining == "all":
        return loss(z, labels)
    if mining == "batch-hard":
        miner = pml_miners.BatchHardMiner(distance=dist)
    else:
        miner = pml_miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard", distance=dist)
    return loss(z, labels, miner(z, labels))


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("mining", ["batch-hard", "semi-hard", "all"])
def test_equals_pytorch_metric_learning_values_and_gradients(mining, distance):
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        batch, classes = (24, 4) if seed % 2 else (16, 6)
        z = torch.randn(batch, 8, generator=g, dtype=torch.float64)
        labels = torch.randint(0, classes, (batch,), generator=g)
        margin = (0.1, 0.2, 0.5)[seed % 3]
        ours_z = z.clone().requires_grad_(True)
        ours = TripletMargin(margin=margin, mining=mining, distance=distance)(_inputs(ours_z, labels))
        ours.backward()
        theirs_z = z.clone().requires_grad_(True)
        theirs = _pml(theirs_z, labels, mining, margin, distance)
        theirs.backward()
        assert ours.item() > 0, "the random batch should hold violating triplets"
        torch.testing.assert_close(ours, theirs.to(ours.dtype))
        torch.testing.assert_close(ours_z.grad, theirs_z.grad)


def test_registered_variants_mine_as_named():
    from distill.losses import LOSSES

    assert LOSSES.get("triplet")().mining == "batch-hard"
    assert LOSSES.get("triplet-semihard")().mining == "semi-hard"
    assert LOSSES.get("triplet-all")().mining == "all"


def test_hand_computed_batch_hard_cosine():
    # classes 0: e1, (e1+e2)/√2 ; class 1: e2. Anchor 0: hardest positive cos 1/√2, hardest negative cos 0
    z = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    loss = TripletMargin(margin=0.2)(_inputs(z, labels))
    s = 2**-0.5
    per_anchor = [max(0.0, 0 - s + 0.2), max(0.0, s - s + 0.2)]  # 0 and 0.2; anchor 2 has no positive
    assert per_anchor[0] == 0.0
    assert loss.item() == pytest.approx(per_anchor[1])  # the mean over the triplets with a loss above zero


def test_no_triplet_gives_zero_with_a_gradient():
    z = torch.randn(4, 3, requires_grad=True)
    loss = TripletMargin()(_inputs(z, torch.tensor([0, 1, 2, 3])))  # no positives
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_distances_and_refusals():
    assert isinstance(distance_by_name("cosine"), CosineSimilarity)
    assert isinstance(distance_by_name("euclidean"), EuclideanDistance)
    with pytest.raises(UnknownName, match="valid: cosine, euclidean"):
        distance_by_name("manhattan")
    with pytest.raises(InvalidInput, match="valid: batch-hard, semi-hard, all"):
        TripletMargin(mining="hardest")
    with pytest.raises(InvalidInput, match="margin"):
        TripletMargin(margin=-1)


class _Shape:
    num_classes = 10


class _Store:
    shape = _Shape()


def _context(batch_size: int, samples_per_class: int | None = None) -> TrainingContext:
    return TrainingContext(
        store=_Store(),
        student_dim=4,
        teacher_dim=4,
        num_samples=100,
        device=torch.device("cpu"),
        batch_size=batch_size,
        samples_per_class=samples_per_class,
    )


def test_setup_refuses_batches_without_positives_and_warns_on_few():
    with pytest.raises(InvalidInput, match="--samples-per-class"):
        TripletMargin().setup(_context(10))
    with pytest.warns(RuntimeWarning, match="samples per class"):
        TripletMargin().setup(_context(32))
    TripletMargin().setup(_context(64))  # 6.4 per class: silent
    TripletMargin().setup(_context(8, samples_per_class=4))  # balanced: always positives
