"""featstore.datasets.images: wide integer pixels are scaled from the 16-bit range, and 32-bit values that lie
outside it are refused rather than clipped to white or black."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from featstore.datasets.images import UnreadableImage, decode_rgb

SIZE = 8


def tiff_i(values: np.ndarray) -> bytes:
    """A 32-bit integer (mode ``I``) TIFF of ``values``."""
    buffer = io.BytesIO()
    Image.frombytes("I", (SIZE, SIZE), values.astype(np.int32).tobytes()).save(buffer, "TIFF")
    assert Image.open(io.BytesIO(buffer.getvalue())).mode == "I"
    return buffer.getvalue()


@pytest.mark.parametrize("level,expected", [(0, 0), (257, 1), (128 * 257, 128), (65535, 255), (385, 1), (386, 2)])
def test_mode_i_within_16_bits_is_scaled_and_rounded(level, expected) -> None:
    rgb = np.asarray(decode_rgb(tiff_i(np.full((SIZE, SIZE), level))))
    assert rgb.shape == (SIZE, SIZE, 3) and (rgb == expected).all()


@pytest.mark.parametrize("outlier", [65536, 1 << 30, -1])
def test_mode_i_outside_16_bits_is_refused(outlier) -> None:
    values = np.full((SIZE, SIZE), 1000)
    values[3, 5] = outlier
    with pytest.raises(UnreadableImage, match=rf"32-bit integer pixels .*{outlier}.* 16-bit range"):
        decode_rgb(tiff_i(values))
