"""5-point face alignment to the standard 112×112 ArcFace template, and the IJB landmark files.

The similarity transform (rotation, uniform scale, translation) that maps the five detected points (eyes,
nose tip, mouth corners) onto the template in the least-squares sense is Umeyama's closed form (Umeyama
1991, the estimator skimage's ``SimilarityTransform`` and insightface's ``norm_crop`` use); it is a few
lines of numpy, so no OpenCV or scikit-image is needed. The warp is Pillow's affine transform, bilinear,
in OpenCV's pixel convention (pixel centres at integer coordinates), as insightface's ``cv2.warpAffine``.

IJB landmark files (``ijbc_name_5pts_score.txt``): one face per line, ``NAME x1 y1 … x5 y5 SCORE``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featstore.errors import InputNotFound, InvalidInput

ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
"""Left eye, right eye, nose tip, left and right mouth corner in a 112×112 aligned face (insightface)."""

MAX_COORDINATE = 1e6
"""The largest landmark coordinate accepted, in pixels: far beyond any photo, and small enough that the
alignment's squares stay finite (1e200 would overflow them to inf)."""


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2×3 matrix [sR | t] minimising Σ‖sR·src_i + t − dst_i‖² (Umeyama 1991, no reflection)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise InvalidInput(f"landmarks must be (K, 2) with K ≥ 2 points, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    sc, dc = src - mu_s, dst - mu_d
    var_s = (sc**2).sum(axis=1).mean()
    if var_s <= 1e-12:
        raise InvalidInput("the landmarks coincide: no transform maps them onto the template")
    u, sigma, vt = np.linalg.svd(dc.T @ sc / len(src))
    d = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ d @ vt
    scale = float(np.trace(np.diag(sigma) @ d) / var_s)
    t = mu_d - scale * rotation @ mu_s
    return np.hstack([scale * rotation, t[:, None]])


def align_face(image, landmarks: np.ndarray, size: int = 112):
    """The ``size``×``size`` aligned crop of a PIL image.

    Args:
        image: The PIL image the landmarks were detected on.
        landmarks: (5, 2) eyes, nose tip and mouth corners, in the image's pixels.
        size: The side of the crop; the template is scaled for sizes other than 112.

    Returns:
        The aligned PIL image.
    """
    from PIL import Image

    matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE * (size / 112.0))
    a, t = matrix[:, :2], matrix[:, 2]
    inverse = np.linalg.inv(a)
    # output pixel centre x+0.5 (Pillow) ↔ x (OpenCV): shift in and out of OpenCV's convention
    offset = inverse @ (-(t + 0.5)) + 0.5
    coefficients = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
    return image.transform((size, size), Image.AFFINE, coefficients, resample=Image.BILINEAR)


def read_landmarks(path: str | Path) -> dict[str, np.ndarray]:
    """Image name → (5, 2) landmarks from an IJB ``*_name_5pts_score.txt`` file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"landmarks file {path} does not exist")
    found: dict[str, np.ndarray] = {}
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise InvalidInput(f"{path}:{line}: not UTF-8 text (save the landmarks file as UTF-8)") from None
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) not in (11, 12):
            raise InvalidInput(
                f"{path}:{number}: expected NAME and 10 coordinates [and a score], got {len(tokens)} fields"
            )
        try:
            points = np.asarray([float(v) for v in tokens[1:11]], dtype=np.float64).reshape(5, 2)
        except ValueError:
            raise InvalidInput(f"{path}:{number}: the coordinates are not numbers") from None
        if not np.isfinite(points).all():
            raise InvalidInput(f"{path}:{number}: non-finite coordinates")
        if np.abs(points).max() > MAX_COORDINATE:
            raise InvalidInput(f"{path}:{number}: a coordinate beyond ±{MAX_COORDINATE:g} pixels")
        if tokens[0] in found:
            raise InvalidInput(f"{path}:{number}: image {tokens[0]!r} is listed twice")
        found[tokens[0]] = points
    if not found:
        raise InvalidInput(f"{path} lists no faces")
    return found
