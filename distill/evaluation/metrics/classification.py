"""Classification metric: top-1 accuracy of logits or predictions against labels (unknown labels dropped)."""

from __future__ import annotations

from typing import Any

import numpy as np

from distill.evaluation.metrics.retrieval import UNKNOWN_LABEL
from distill.evaluation.validate import int_vector, to_numpy
from featstore.errors import InvalidInput


def top1_accuracy(logits_or_predictions: Any, labels: Any) -> float:
    """Fraction of samples whose predicted class equals the label.

    Accepts ``(N, C)`` logits/probabilities (prediction = argmax, first index on ties) or ``(N,)`` integer
    predictions. Samples labelled -1 (unknown) are dropped, as everywhere in fsd's evaluation.

    Args:
        logits_or_predictions: ``(N, C)`` logits or probabilities, or ``(N,)`` predicted classes.
        labels: ``(N,)`` classes, -1 for unknown.

    Returns:
        The top-1 accuracy in [0, 1].

    Raises:
        InvalidInput: Mismatched lengths, non-finite logits, or no labelled sample.
    """
    y = int_vector(labels, "labels")
    p = to_numpy(logits_or_predictions)
    if p.ndim == 2:
        if p.shape[1] == 0:
            raise InvalidInput("logits have zero classes")
        if not np.issubdtype(p.dtype, np.number) or not np.all(np.isfinite(p)):
            raise InvalidInput("logits must be finite numbers")
        pred = np.argmax(p, axis=1)
    elif p.ndim == 1:
        pred = int_vector(p, "predictions")
    else:
        raise InvalidInput(f"expected (N, C) logits or (N,) predictions, got shape {p.shape}")
    if pred.shape[0] != y.size:
        raise InvalidInput(f"{pred.shape[0]} predictions but {y.size} labels")
    known = y != UNKNOWN_LABEL
    if not known.any():
        raise InvalidInput("no sample with a known label: top-1 accuracy is undefined")
    return float(np.mean(pred[known] == y[known]))
