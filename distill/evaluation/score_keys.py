"""Order-preserving uint32 keys of float32 scores: the integers every exact pair count is made of.

A module of its own because the tile scorers (:mod:`distill.evaluation.pair_tiles`), the tile fold
(:mod:`distill.evaluation.tile_counts`) and the one-pass plan (:mod:`distill.evaluation.one_pass`) all key
scores, and none of them may import another that imports it back.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ALL_BITS", "SIGN_BIT", "float32_keys", "keys_inplace"]

SIGN_BIT = 0x80000000  # a key with this bit set is a non-negative score
ALL_BITS = 0xFFFFFFFF


def float32_keys(scores: Any) -> np.ndarray:
    """Map float32 scores (no NaN) to order-preserving uint32 keys.

    ``a < b`` iff ``key(a) < key(b)`` and ``a == b`` iff ``key(a) == key(b)``; ``-0.0`` and ``+0.0`` get the
    same key.

    key = bits XOR (0xFFFFFFFF if negative else 0x80000000): negative floats reverse their order and end up
    below the positive ones. Adding +0.0 first turns -0.0 into +0.0 (IEEE round-to-nearest).
    """
    return keys_inplace(np.array(scores, dtype=np.float32))


def keys_inplace(s: np.ndarray) -> np.ndarray:
    """:func:`float32_keys` of a float32 array the caller owns (it is modified): two passes, one temporary."""
    s += np.float32(0.0)
    bits = s.view(np.int32)
    mask = bits >> 31  # -1 for negative numbers, 0 otherwise
    mask |= np.int32(-(1 << 31))
    mask ^= bits
    return mask.view(np.uint32)
