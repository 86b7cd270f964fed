"""codecs.finite_rows tests the stored bit patterns and must agree with np.isfinite on decoded values;
encode refuses non-finite input and float16 overflow instead of storing garbage."""

from __future__ import annotations

import numpy as np
import pytest

from featstore import codecs
from featstore.errors import InvalidInput

BFLOAT16_BITS = {"nan": 0x7FC0, "inf": 0x7F80, "-inf": 0xFF80}


@pytest.mark.parametrize("dtype", ["float16", "float32", "bfloat16"])
@pytest.mark.parametrize("bad", [None, "nan", "inf", "-inf"])
def test_finite_rows_agrees_with_decoding(dtype, bad):
    rows = np.random.default_rng(0).normal(size=(5, 2, 7)).astype(np.float32) * 1e3
    stored, scales = codecs.encode(rows, dtype)
    if bad is not None:  # corruption on disk: a non-finite value in the stored array itself
        stored[3, 1, 4] = BFLOAT16_BITS[bad] if dtype == "bfloat16" else float(bad)
    expected = bool(np.isfinite(codecs.decode(stored, dtype, scales)).all())
    assert codecs.finite_rows(stored, dtype, scales) == expected == (bad is None)


def test_int8_checks_its_scales():
    stored, scales = codecs.encode(np.ones((2, 3, 4), np.float32), "int8")
    assert codecs.finite_rows(stored, "int8", scales)
    scales[1, 2] = np.nan
    assert not codecs.finite_rows(stored, "int8", scales)


@pytest.mark.parametrize("dtype", codecs.DTYPES)
def test_encode_refuses_non_finite_input(dtype):
    rows = np.zeros((2, 1, 3), np.float32)
    rows[0, 0, 1] = np.nan
    with pytest.raises(InvalidInput, match="NaN or Inf"):
        codecs.encode(rows, dtype)


def test_float16_overflow_is_refused_with_advice():
    with pytest.raises(InvalidInput, match="overflow float16.*bfloat16"):
        codecs.encode(np.full((1, 1, 2), 1e6, np.float32), "float16")
    stored, scales = codecs.encode(np.full((1, 1, 2), 1e6, np.float32), "bfloat16")
    # bfloat16 keeps float32's range: 1e6 survives, rounded to 8 significant bits (999,424 = 0x4974 << 16)
    np.testing.assert_array_equal(codecs.decode(stored, "bfloat16", scales), np.full((1, 1, 2), 999_424.0))
