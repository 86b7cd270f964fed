"""Encoded image bytes → an 8-bit RGB Pillow image.

This is the one decoder of every image fsd reads (``folder:`` and ``mxrec:`` samples, verification ``.bin`` files, ``fsd
embed``'s folders).

Why one function: every reader must agree on the two things Pillow leaves to its caller.

* **16-bit and 32-bit integer images.** Pillow opens a 16-bit grayscale PNG as mode ``I;16`` (or
  ``I;16B``, ``I``), and ``convert("RGB")`` *clips* those values to 255 instead of scaling them: a mid-grey
  face becomes white. Here they are scaled by 255/65535 (rounded), so a 16-bit file renders as its 8-bit
  twin. Mode ``I`` (32-bit, as Pillow opens some 16-bit files) is read in the same 16-bit range; a value
  outside it (a true 32-bit or signed image) has no 8-bit meaning fsd could know, so the image is refused
  rather than clipped to white or black.
* **Decompression bombs.** A small file may declare billions of pixels. An image over
  :data:`MAX_IMAGE_PIXELS` is refused from its header, before any pixel is decoded (Pillow's own warning
  between its two limits becomes this refusal, so no warning is printed either).
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np

from featstore.errors import InvalidInput

MAX_IMAGE_PIXELS = 89_478_485
"""The most pixels a decoded image may have (Pillow's default limit: about 9459 × 9459)."""

_WIDE_INTEGER_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class UnreadableImage(InvalidInput):
    """Bytes that are not an image Pillow can decode within the bounds; the message is the reason."""


def _open(data: bytes) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UnreadableImage("not an image file") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise UnreadableImage(f"declares more than {MAX_IMAGE_PIXELS} pixels (a decompression bomb?)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise UnreadableImage(str(err) or type(err).__name__) from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        image.close()
        raise UnreadableImage(f"declares {width}×{height} pixels, over the limit of {MAX_IMAGE_PIXELS}")
    if width == 0 or height == 0:
        image.close()
        raise UnreadableImage(f"declares an empty {width}×{height} image")
    return image


def to_rgb(image: Any) -> Any:
    """Convert an open Pillow image to 8-bit RGB, 16/32-bit integer modes scaled (see the module docstring).

    Args:
        image: an open ``PIL.Image.Image``.

    Returns:
        The image in mode ``RGB``.

    Raises:
        UnreadableImage: 32-bit integer pixels outside the 16-bit range.
    """
    from PIL import Image

    if image.mode in _WIDE_INTEGER_MODES:
        values = np.asarray(image)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            outlier = low if low < 0 else high
            raise UnreadableImage(f"32-bit integer pixels (value {outlier}) outside the 16-bit range 0…65535")
        # v/257 rounded, in integers (no tie: v + 128.5 is never a multiple of 257), 4 bytes a pixel
        grey = ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return image.convert("RGB")


def decode_rgb(data: bytes) -> Any:
    """Decode encoded bytes into an 8-bit RGB Pillow image (the first frame of an animation).

    Args:
        data: the encoded file (PNG, JPEG, BMP, GIF, WebP, … whatever Pillow identifies).

    Returns:
        A loaded ``PIL.Image.Image`` of mode ``RGB``.

    Raises:
        UnreadableImage: not an image, truncated or damaged, or over :data:`MAX_IMAGE_PIXELS`.
    """
    image = _open(data)
    try:
        with image:
            image.load()
            return to_rgb(image)
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise UnreadableImage(str(err) or type(err).__name__) from None


def image_size(data: bytes) -> tuple[int, int]:
    """Read an image's size from its header, no pixel decoded.

    Args:
        data: the encoded file.

    Returns:
        ``(height, width)``.

    Raises:
        UnreadableImage: as :func:`decode_rgb` does.
    """
    with _open(data) as image:
        return image.height, image.width


__all__ = ["MAX_IMAGE_PIXELS", "UnreadableImage", "decode_rgb", "image_size", "to_rgb"]
