"""Tests for featstore.codecs: round-trip error bounds per store dtype, int8 scales, zero rows, bfloat16
bit-compatibility with torch, and rejection of unknown dtypes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from featstore import codecs
from featstore.errors import InvalidInput


@pytest.fixture
def rows() -> np.ndarray:
    rng = np.random.default_rng(0)
    # Rows of very different magnitudes, (N, V, D) like a store chunk.
    mags = 10.0 ** rng.uniform(-2, 3, size=(64, 3, 1))
    return (rng.standard_normal((64, 3, 32)) * mags).astype(np.float32)


def test_storage_dtypes() -> None:
    assert set(codecs.DTYPES) == set(codecs.STORAGE_DTYPE)
    for name in codecs.DTYPES:
        stored, _ = codecs.encode(np.ones((2, 3), dtype=np.float32), name)
        assert stored.dtype == np.dtype(codecs.STORAGE_DTYPE[name])
        assert stored.shape == (2, 3)
        assert codecs.check_dtype(name) == name


def test_float32_exact(rows: np.ndarray) -> None:
    stored, scales = codecs.encode(rows, "float32")
    assert scales is None
    out = codecs.decode(stored, "float32")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, rows)


def test_float16_relative_error(rows: np.ndarray) -> None:
    stored, scales = codecs.encode(rows, "float16")
    assert scales is None and stored.dtype == np.float16
    out = codecs.decode(stored, "float16")
    assert out.dtype == np.float32 and out.shape == rows.shape
    normal = np.abs(rows) > 1e-4  # float16 normals start at 6.1e-5
    rel = np.abs(out - rows)[normal] / np.abs(rows)[normal]
    assert rel.max() < 1e-3
    np.testing.assert_array_equal(out, rows.astype(np.float16).astype(np.float32))


def test_bfloat16_relative_error(rows: np.ndarray) -> None:
    stored, scales = codecs.encode(rows, "bfloat16")
    assert scales is None and stored.dtype == np.uint16
    out = codecs.decode(stored, "bfloat16")
    assert out.dtype == np.float32 and out.shape == rows.shape
    rel = np.abs(out - rows) / np.abs(rows)
    assert rel.max() < 8e-3
    assert rel.max() > 1e-4  # really rounded to 8 mantissa bits, not stored as float32


def test_bfloat16_matches_torch(rows: np.ndarray) -> None:
    stored, _ = codecs.encode(rows, "bfloat16")
    ref = torch.from_numpy(rows).to(torch.bfloat16)
    np.testing.assert_array_equal(stored.view(np.int16), ref.view(torch.int16).numpy())
    np.testing.assert_array_equal(codecs.decode(stored, "bfloat16"), ref.to(torch.float32).numpy())


def test_bfloat16_round_to_nearest_even() -> None:
    ulp = 2.0**-7  # bfloat16 spacing at 1.0
    x = np.array([1.0 + ulp / 2, 1.0 + 3 * ulp / 2, 1.0 + ulp / 2 + 2.0**-20, -(1.0 + ulp / 2)], dtype=np.float32)
    out = codecs.decode(codecs.encode(x, "bfloat16")[0], "bfloat16")
    np.testing.assert_array_equal(out, np.array([1.0, 1.0 + 2 * ulp, 1.0 + ulp, -1.0], dtype=np.float32))
    # 1.0 is 0x3F80 in bfloat16.
    assert codecs.encode(np.array([1.0], dtype=np.float32), "bfloat16")[0][0] == 0x3F80


def test_int8_error_bound_and_scales(rows: np.ndarray) -> None:
    stored, scales = codecs.encode(rows, "int8")
    assert stored.dtype == np.int8 and stored.shape == rows.shape
    assert scales is not None and scales.dtype == np.float32 and scales.shape == rows.shape[:-1]
    np.testing.assert_allclose(scales, np.abs(rows).max(-1) / 127.0, rtol=1e-6)
    # The peak of each row uses the full range.
    assert np.all(np.abs(stored.astype(np.int32)).max(-1) == 127)
    out = codecs.decode(stored, "int8", scales)
    assert out.dtype == np.float32
    err = np.abs(out - rows).max(-1)
    assert np.all(err <= scales / 2 + 1e-6 * np.abs(rows).max(-1))


def test_int8_needs_scales() -> None:
    stored, _ = codecs.encode(np.ones((2, 4), dtype=np.float32), "int8")
    with pytest.raises(InvalidInput, match="needs its scales"):
        codecs.decode(stored, "int8")


@pytest.mark.parametrize("dtype", codecs.DTYPES)
def test_zero_rows(dtype: str) -> None:
    x = np.zeros((3, 2, 8), dtype=np.float32)
    x[1, 0] = np.linspace(-1, 1, 8)
    stored, scales = codecs.encode(x, dtype)
    out = codecs.decode(stored, dtype, scales)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[0], 0)
    np.testing.assert_array_equal(out[2], 0)
    np.testing.assert_array_equal(out[1, 1], 0)
    if dtype == "int8":
        assert scales[0, 0] == 1.0 and scales[1, 1] == 1.0
        np.testing.assert_allclose(out[1, 0], x[1, 0], atol=1 / 127 / 2 + 1e-7)


@pytest.mark.parametrize("dtype", codecs.DTYPES)
def test_empty_and_float64_input(dtype: str) -> None:
    empty = np.zeros((0, 4), dtype=np.float32)
    stored, scales = codecs.encode(empty, dtype)
    assert codecs.decode(stored, dtype, scales).shape == (0, 4)
    x64 = np.random.default_rng(1).standard_normal((5, 6))  # float64 input is accepted and cast
    stored, scales = codecs.encode(x64, dtype)
    np.testing.assert_allclose(codecs.decode(stored, dtype, scales), x64, rtol=1e-2, atol=2e-2)


def test_unknown_dtype_is_invalid_input() -> None:
    x = np.ones((2, 2), dtype=np.float32)
    with pytest.raises(InvalidInput, match="float8"):
        codecs.check_dtype("float8")
    with pytest.raises(InvalidInput, match="valid"):
        codecs.encode(x, "float8")
    with pytest.raises(InvalidInput, match="unknown store dtype 'float64'"):
        codecs.decode(x, "float64")


def test_float16_decode_takes_any_layout_and_equals_numpy() -> None:
    """The torch-based float16 decode matches numpy's cast on every non-NaN bit pattern, whatever the
    input's byte order, writeability or shape."""
    bits = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    halves = bits.view(np.float16)
    halves = halves[~np.isnan(halves)]
    want = halves.astype(np.float32)
    assert np.array_equal(codecs.decode(halves, "float16"), want)
    assert np.array_equal(codecs.decode(halves.astype(">f2"), "float16"), want)
    read_only = halves.copy()
    read_only.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "non-writable array" warning from torch
        assert np.array_equal(codecs.decode(read_only, "float16"), want)
    scalar = np.float16(1.5).reshape(())
    assert codecs.decode(scalar, "float16").shape == () and float(codecs.decode(scalar, "float16")) == 1.5
    grid = halves[:24].reshape(2, 3, 4)[:, ::2]  # non-contiguous
    assert np.array_equal(codecs.decode(grid, "float16"), grid.astype(np.float32))
