"""Distances between embeddings, as objects a metric loss is given (not flags inside the loss).

A distance turns a batch (B, D) into its (B, B) matrix and says which way is "closer": a similarity
(cosine) grows as two embeddings approach, a distance (Euclidean) shrinks. :meth:`Distance.violation`
hides that direction, so a triplet loss is written once for both. Both normalise the embeddings to unit
length first, as pytorch-metric-learning's ``CosineSimilarity`` and (default) ``LpDistance`` do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from featstore.errors import UnknownName


class Distance:
    """Base class: :meth:`matrix` (B, D) → (B, B); ``is_similarity`` when larger means closer."""

    name = ""
    is_similarity = False

    def matrix(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """The (B, B) matrix of the distance (or similarity) between every two rows of ``z`` (B, D)."""
        raise NotImplementedError

    def violation(self, anchor_positive: torch.Tensor, anchor_negative: torch.Tensor) -> torch.Tensor:
        """How much closer the negative is than the positive.

        The violation is d(a,p) − d(a,n), or s(a,n) − s(a,p) for a similarity; a triplet satisfies margin m
        when its violation is ≤ −m.
        """
        if self.is_similarity:
            return anchor_negative - anchor_positive
        return anchor_positive - anchor_negative

    def hardest_positive(self, matrix: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        """Per row, the index of the farthest entry among ``positives`` (a boolean (B, B) mask)."""
        return self._extreme(matrix, positives, farthest=True)

    def hardest_negative(self, matrix: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Per row, the index of the closest entry among ``negatives``."""
        return self._extreme(matrix, negatives, farthest=False)

    def _extreme(self, matrix: torch.Tensor, mask: torch.Tensor, farthest: bool) -> torch.Tensor:
        take_max = farthest != self.is_similarity  # the farthest is the largest distance / smallest similarity
        fill = float("-inf") if take_max else float("inf")
        masked = matrix.masked_fill(~mask, fill)
        return (masked.max(dim=1) if take_max else masked.min(dim=1)).indices


class CosineSimilarity(Distance):
    """cos(a, b) of unit-normalised embeddings, in [−1, 1]."""

    name = "cosine"
    is_similarity = True

    def matrix(self, z: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every two rows."""
        unit = F.normalize(z, p=2, dim=1)
        return unit @ unit.t()


class EuclideanDistance(Distance):
    """‖a − b‖₂ of unit-normalised embeddings, in [0, 2]."""

    name = "euclidean"

    def matrix(self, z: torch.Tensor) -> torch.Tensor:
        """Euclidean distance of every two unit-normalised rows."""
        unit = F.normalize(z, p=2, dim=1)
        return torch.cdist(unit, unit, p=2)


DISTANCES: dict[str, type[Distance]] = {cls.name: cls for cls in (CosineSimilarity, EuclideanDistance)}


def distance_by_name(name: str) -> Distance:
    """The distance called ``name``; :class:`UnknownName` listing the valid ones otherwise."""
    if name not in DISTANCES:
        raise UnknownName(f"unknown distance {name!r}; valid: {', '.join(sorted(DISTANCES))}")
    return DISTANCES[name]()
