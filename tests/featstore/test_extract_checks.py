"""The embeddings' value range against the store dtype (featstore.extract_checks.check_value_range)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from featstore.errors import InvalidInput
from featstore.extract_checks import check_value_range


def _values(scale: float) -> np.ndarray:
    return scale * np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)


def test_values_float16_rounds_to_zero_are_refused_naming_the_dtypes_that_keep_them():
    with pytest.raises(
        InvalidInput, match=r"float16 would store 100% of them as zeros; use --dtype bfloat16 or float32"
    ):
        check_value_range(_values(1e-9), "float16", "t")


def test_values_beyond_float16_are_refused():
    with pytest.raises(InvalidInput, match=r"beyond float16's 65504: use --dtype bfloat16 or float32"):
        check_value_range(_values(1e5), "float16", "t")


def test_values_below_the_normal_range_warn():
    with pytest.warns(RuntimeWarning, match=r"below float16's normal range \(6.1e-5\).*bfloat16"):
        check_value_range(_values(1e-5), "float16", "t")


@pytest.mark.parametrize(("scale", "dtype"), [(1.0, "float16"), (1e-9, "bfloat16"), (1e-9, "float32"), (1e5, "int8")])
def test_values_a_dtype_keeps_pass_silently(scale, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_value_range(_values(scale), dtype, "t")


def test_zeros_and_an_empty_probe_pass():
    check_value_range(np.zeros((4, 8), np.float32), "float16", "t")
    check_value_range(np.zeros((0, 8), np.float32), "float16", "t")
