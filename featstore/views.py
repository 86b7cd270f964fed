"""Views: the exact, replayable augmentation of each (sample, view) pair.

Why this module exists: a precomputed teacher is only a good teacher if the student sees the *same* pixels
the teacher saw ("consistent teaching", Beyer et al. 2022; FKD). So a view is not an augmentation drawn at
training time but a small parameter vector drawn once, from a generator seeded by (store seed, sample,
view), stored next to the teacher's embedding, and rendered by one deterministic function on both sides.

Parameters of a view (``PARAM_NAMES``), in pixels of the source image after zero padding by ``pad``:
``top, left, height, width`` of a crop box and ``flip`` (1 = horizontal flip after cropping). The crop is
resized (bilinear) to the policy's output size when its size differs. View 0 is always the identity view:
the un-padded image, unflipped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from featstore.errors import InvalidInput

PARAM_NAMES: tuple[str, ...] = ("top", "left", "height", "width", "flip")
VIEW_KINDS: tuple[str, ...] = ("shift", "resized_crop")


@dataclass(frozen=True)
class ViewPolicy:
    """How views of one dataset are drawn.

    ``shift``: a crop of the source size from the image zero-padded by ``pad`` (RandomCrop(size, padding)),
    then a flip with probability ``flip_p``. ``resized_crop``: a random box with area fraction in ``scale``
    and aspect ratio in ``ratio`` (RandomResizedCrop), resized to the source size, then the flip.
    """

    kind: str
    source_size: tuple[int, int]  # (H, W) of the source images, which is also the rendered size
    pad: int = 0
    flip_p: float = 0.5
    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __post_init__(self) -> None:
        if self.kind not in VIEW_KINDS:
            raise InvalidInput(f"unknown view kind {self.kind!r}; valid: {', '.join(VIEW_KINDS)}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["source_size"] = list(self.source_size)
        out["scale"] = list(self.scale)
        out["ratio"] = list(self.ratio)
        return out


def identity_params(policy: ViewPolicy) -> np.ndarray:
    """View 0: the whole un-padded image, not flipped."""
    h, w = policy.source_size
    return np.array([policy.pad, policy.pad, h, w, 0], dtype=np.float32)


def _rng(seed: int, sample: int, view: int) -> np.random.Generator:
    # SeedSequence over the triple: independent streams per (sample, view), reproducible anywhere, and
    # independent of the order or the process in which samples are extracted (resume, dask workers).
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(sample), int(view)]))


def sample_view_params(policy: ViewPolicy, seed: int, sample: int, view: int) -> np.ndarray:
    """The parameter vector of view ``view`` of sample ``sample`` (float32, len(PARAM_NAMES))."""
    if view == 0:
        return identity_params(policy)
    rng = _rng(seed, sample, view)
    h, w = policy.source_size
    if policy.kind == "shift":
        top = int(rng.integers(0, 2 * policy.pad + 1))
        left = int(rng.integers(0, 2 * policy.pad + 1))
        ch, cw = h, w
    else:
        top, left, ch, cw = _random_resized_box(rng, h, w, policy.scale, policy.ratio)
        top, left = top + policy.pad, left + policy.pad
    flip = int(rng.random() < policy.flip_p)
    return np.array([top, left, ch, cw, flip], dtype=np.float32)


def _random_resized_box(
    rng: np.random.Generator, h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box: 10 tries at a random area/aspect, then the central crop as fallback."""
    area = h * w
    log_ratio = (np.log(ratio[0]), np.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = float(np.exp(rng.uniform(*log_ratio)))
        cw = int(round(np.sqrt(target * aspect)))
        ch = int(round(np.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def sample_views(policy: ViewPolicy, seed: int, samples: np.ndarray, num_views: int) -> np.ndarray:
    """Parameters for every (sample, view): shape (len(samples), num_views, P), float32."""
    out = np.empty((len(samples), num_views, len(PARAM_NAMES)), dtype=np.float32)
    for row, sample in enumerate(samples):
        for view in range(num_views):
            out[row, view] = sample_view_params(policy, seed, int(sample), view)
    return out


def render_views(images: torch.Tensor, params: np.ndarray | torch.Tensor, policy: ViewPolicy) -> torch.Tensor:
    """Render one view per image: (n, C, H, W) source images + (n, P) parameters → (n, C, H, W).

    Deterministic on a given device: the teacher (at extraction) and the student (at training) call this
    same function with the same stored parameters, so they see identical pixels.
    """
    params = torch.as_tensor(params, dtype=torch.float32).cpu().numpy().astype(np.int64)
    if images.ndim != 4 or params.shape != (images.shape[0], len(PARAM_NAMES)):
        raise InvalidInput(f"render_views: images {tuple(images.shape)} and params {params.shape} disagree")
    h, w = policy.source_size
    pad = policy.pad
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
    out = torch.empty((images.shape[0], images.shape[1], h, w), dtype=images.dtype, device=images.device)
    # Rows with identical parameters are rendered together: with shift views there are only a handful of
    # distinct boxes, so this is a few batched slices instead of one Python step per image.
    unique, inverse = np.unique(params, axis=0, return_inverse=True)
    for group, (top, left, ch, cw, flip) in enumerate(unique):
        rows = torch.from_numpy(np.flatnonzero(inverse.reshape(-1) == group)).to(images.device)
        crop = padded[rows, :, top : top + ch, left : left + cw]
        if (ch, cw) != (h, w):
            crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=False)
        if flip:
            crop = crop.flip(-1)
        out[rows] = crop
    return out
