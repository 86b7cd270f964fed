"""Views: the exact, replayable augmentation of each (sample, view) pair.

Why this module exists: a precomputed teacher is only a good teacher if the student sees the *same* pixels
the teacher saw ("consistent teaching", Beyer et al. 2022; FKD). So a view is not an augmentation drawn at
training time but a small parameter vector drawn once, from a generator seeded by (store seed, sample,
view), stored next to the teacher's embedding, and rendered by one deterministic function on both sides.

Parameters of a view (``PARAM_NAMES``), in pixels of the source image after zero padding by ``pad``:
``top, left, height, width`` of a crop box and ``flip`` (1 = horizontal flip after cropping). The crop is
resized (bilinear) to the policy's output size when its size differs. View 0 is always the identity view:
the un-padded image, unflipped.

**Views in original-image coordinates** (kind ``original_crop``, views format 2, for datasets read from
image files): the same five numbers are *fractions* of the original file's height and width — the
RandomResizedCrop box FKD stores — so a view does not depend on the size it is rendered to. The teacher may
render it at 224 × 224 and the student at 160 × 160 and both see the same part of the photograph. The box
is drawn in pixels of the original (torchvision's RandomResizedCrop rule) and then divided by its size;
:func:`render_original` cuts it from the decoded image and resizes it (Pillow, bilinear, antialiased). View 0 is deterministic: the central square of side
``crop_fraction`` × the short side (Resize(size / crop_fraction) + CenterCrop(size)), or the whole image
when ``crop_fraction`` is None (aligned faces).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from featstore.errors import InvalidInput

PARAM_NAMES: tuple[str, ...] = ("top", "left", "height", "width", "flip")
VIEW_KINDS: tuple[str, ...] = ("shift", "resized_crop", "original_crop")
ORIGINAL = "original_crop"
# What the stored parameters of an ``original_crop`` policy mean; bump it when that meaning changes, so a
# store whose numbers mean something else is refused instead of rendered wrongly.
ORIGINAL_VERSION = 2


@dataclass(frozen=True)
class ViewPolicy:
    """How views of one dataset are drawn.

    ``shift``: a crop of the source size from the image zero-padded by ``pad`` (RandomCrop(size, padding)),
    then a flip with probability ``flip_p``. ``resized_crop``: a random box with area fraction in ``scale``
    and aspect ratio in ``ratio`` (RandomResizedCrop), resized to the source size, then the flip.
    ``original_crop``: the RandomResizedCrop box as fractions of each original image (see the module
    docstring); ``source_size`` and ``pad`` are unused, ``crop_fraction`` defines view 0.

    Args:
        kind: One of ``VIEW_KINDS``.
        source_size: (H, W) of the source images, which is also the rendered size (pixel kinds only).
        pad: Zero padding around the source image, in pixels (pixel kinds only).
        flip_p: Probability of a horizontal flip.
        scale: Range of the crop box's area fraction (``resized_crop``, ``original_crop``).
        ratio: Range of the crop box's aspect ratio (``resized_crop``, ``original_crop``).
        crop_fraction: ``original_crop`` only: view 0's central square as a fraction of the short side
            (None: the whole image).

    Raises:
        InvalidInput: An unknown kind, or a crop fraction outside (0, 1].
    """

    kind: str
    source_size: tuple[int, int] = (0, 0)  # (H, W) of the source images, which is also the rendered size
    pad: int = 0
    flip_p: float = 0.5
    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_fraction: float | None = None  # original_crop only: view 0's central square (None: the whole image)

    def __post_init__(self) -> None:
        if self.kind not in VIEW_KINDS:
            raise InvalidInput(f"unknown view kind {self.kind!r}; valid: {', '.join(VIEW_KINDS)}")
        if self.crop_fraction is not None and not 0 < self.crop_fraction <= 1:
            raise InvalidInput(f"crop fraction must lie in (0, 1], got {self.crop_fraction}")

    @property
    def original(self) -> bool:
        """Parameters are fractions of the original image (rendered from the file at any size)."""
        return self.kind == ORIGINAL

    def to_dict(self) -> dict:
        """What a store records; the pixel kinds keep exactly the keys older stores hold."""
        out = asdict(self)
        out["source_size"] = list(self.source_size)
        out["scale"] = list(self.scale)
        out["ratio"] = list(self.ratio)
        if not self.original:
            del out["crop_fraction"]
            return out
        del out["source_size"], out["pad"]
        return {"kind": self.kind, "version": ORIGINAL_VERSION, **{k: v for k, v in out.items() if k != "kind"}}

    @classmethod
    def from_dict(cls, recorded: dict) -> ViewPolicy:
        """The policy a store recorded; a views format this fsd does not know is refused.

        Args:
            recorded: The dict :meth:`to_dict` wrote into the store.

        Returns:
            The policy that replays the store's views.

        Raises:
            InvalidInput: The store's ``original_crop`` views are in another format version.
        """
        version = recorded.get("version")
        if recorded.get("kind") == ORIGINAL and version != ORIGINAL_VERSION:
            raise InvalidInput(
                f"the store's views are in format {version}, this fsd reads format {ORIGINAL_VERSION}: "
                "re-extract the store with this version"
            )
        fraction = recorded.get("crop_fraction")
        return cls(
            kind=recorded["kind"],
            source_size=tuple(recorded.get("source_size", (0, 0))),
            pad=int(recorded.get("pad", 0)),
            flip_p=float(recorded["flip_p"]),
            scale=tuple(recorded["scale"]),
            ratio=tuple(recorded["ratio"]),
            crop_fraction=None if fraction is None else float(fraction),
        )


def policy_mismatch(recorded: dict | None, policy: ViewPolicy) -> str | None:
    """Why a store's recorded view policy cannot be replayed with ``policy`` (None when it can)."""
    if recorded is None or recorded == policy.to_dict():
        return None
    if policy.original and recorded.get("kind") != ORIGINAL:
        return (
            f"the store was made by an older fsd whose views were cut from the down-scaled stored image "
            f"({recorded.get('kind')}); this dataset's views are cut from the original files: re-extract the store"
        )
    return f"the store's view policy {recorded} is not the dataset's {policy.to_dict()}"


def identity_params(policy: ViewPolicy, size: tuple[int, int] | None = None) -> np.ndarray:
    """View 0: the whole un-padded image, not flipped.

    For ``original_crop`` it is the central square of ``crop_fraction`` × the short side of an original of
    ``size`` (H, W), as fractions.
    """
    if not policy.original:
        h, w = policy.source_size
        return np.array([policy.pad, policy.pad, h, w, 0], dtype=np.float32)
    if policy.crop_fraction is None:
        return np.array([0, 0, 1, 1, 0], dtype=np.float32)
    h, w = _size(size)
    side = policy.crop_fraction * min(h, w)
    fh, fw = side / h, side / w
    return np.array([(1 - fh) / 2, (1 - fw) / 2, fh, fw, 0], dtype=np.float32)


def _size(size: tuple[int, int] | None) -> tuple[int, int]:
    if size is None:
        raise InvalidInput("views in original-image coordinates need the original image size")
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise InvalidInput(f"image size must be positive, got {h}×{w}")
    return h, w


def _rng(seed: int, sample: int, view: int) -> np.random.Generator:
    # SeedSequence over the triple: independent streams per (sample, view), reproducible anywhere, and
    # independent of the order or the process in which samples are extracted (resume, dask workers).
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(sample), int(view)]))


def sample_view_params(
    policy: ViewPolicy, seed: int, sample: int, view: int, size: tuple[int, int] | None = None
) -> np.ndarray:
    """The parameter vector of view ``view`` of sample ``sample``.

    Args:
        policy: How the dataset's views are drawn.
        seed: The store's seed; with ``sample`` and ``view`` it seeds the draw.
        sample: The sample's index in the dataset.
        view: The view's index; view 0 is the identity view.
        size: The original image's (H, W); only ``original_crop`` needs it (its box depends on the
            original's aspect ratio, as RandomResizedCrop's does).

    Returns:
        float32 parameters of length ``len(PARAM_NAMES)``.
    """
    if view == 0:
        return identity_params(policy, size)
    rng = _rng(seed, sample, view)
    if policy.original:
        h, w = _size(size)
        if tuple(policy.scale) == (1.0, 1.0):  # flip-only views (aligned faces): always the whole image
            return np.array([0, 0, 1, 1, int(rng.random() < policy.flip_p)], dtype=np.float32)
        top, left, ch, cw = _random_resized_box(rng, h, w, policy.scale, policy.ratio)
        flip = int(rng.random() < policy.flip_p)
        return np.array([top / h, left / w, ch / h, cw / w, flip], dtype=np.float32)
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


def sample_views(
    policy: ViewPolicy, seed: int, samples: np.ndarray, num_views: int, sizes: np.ndarray | None = None
) -> np.ndarray:
    """Parameters for every (sample, view).

    Args:
        policy: How the dataset's views are drawn.
        seed: The store's seed.
        samples: The samples' indices in the dataset.
        num_views: Views per sample (V).
        sizes: (n, 2) originals' (H, W), needed by ``original_crop`` only.

    Returns:
        float32 parameters of shape (len(samples), num_views, P).
    """
    out = np.empty((len(samples), num_views, len(PARAM_NAMES)), dtype=np.float32)
    for row, sample in enumerate(samples):
        size = None if sizes is None else tuple(sizes[row])
        for view in range(num_views):
            out[row, view] = sample_view_params(policy, seed, int(sample), view, size)
    return out


def renderable_original(params: np.ndarray) -> np.ndarray:
    """Which rows of (n, P) ``original_crop`` parameters describe a box inside the image.

    A renderable row has finite fractions, a positive size and a flip of 0 or 1; a tampered row must be
    reported, not crash the renderer.
    """
    finite = np.isfinite(params).all(axis=1)
    p = np.where(np.isfinite(params), params, -1.0).astype(np.float64)
    top, left, ch, cw, flip = (p[:, k] for k in range(len(PARAM_NAMES)))
    slack = 1e-6  # float32 fractions of an integral box may exceed 1 in the last bit
    inside = (top >= 0) & (left >= 0) & (ch > 0) & (cw > 0) & (top + ch <= 1 + slack) & (left + cw <= 1 + slack)
    return finite & inside & np.isin(flip, (0.0, 1.0))


def _snap(coordinate: float) -> float:
    """A box edge within 1/1000 pixel of an integer, snapped to that integer.

    float32 fractions of an integral box (every RandomResizedCrop box) then cut exactly those pixels, as
    torchvision's crop + resize would.
    """
    nearest = round(coordinate)
    return float(nearest) if abs(coordinate - nearest) < 1e-3 else coordinate


def render_original(image, params: np.ndarray, out_size: tuple[int, int]):
    """One ``original_crop`` view of a decoded PIL image.

    The fractional box is cut and resized (bilinear, antialiased), then flipped — torchvision's crop + resize
    for an integral box. Deterministic, so the teacher and the student get identical pixels from identical
    parameters at the same size.

    Args:
        image: The decoded original (a PIL image).
        params: One view's ``PARAM_NAMES`` values, as fractions of the original.
        out_size: The rendered (H, W).

    Returns:
        The view as a PIL image of ``out_size``.
    """
    import math

    from PIL import Image

    h, w = image.height, image.width
    top, left, ch, cw, flip = (float(v) for v in params)
    box = tuple(_snap(b) for b in (left * w, top * h, min(w, (left + cw) * w), min(h, (top + ch) * h)))
    # crop to the enclosing pixel box first, as torchvision's resized_crop does (a resize with a box alone
    # would blend in pixels from outside the box at its edges), then resize the exact box inside it
    outer = (math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3]))
    inner = (box[0] - outer[0], box[1] - outer[1], box[2] - outer[0], box[3] - outer[1])
    out = image.crop(outer).resize((int(out_size[1]), int(out_size[0])), Image.Resampling.BILINEAR, box=inner)
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip >= 0.5 else out


def render_views(images: torch.Tensor, params: np.ndarray | torch.Tensor, policy: ViewPolicy) -> torch.Tensor:
    """Render one view per image of a pixel-kind policy.

    Deterministic on a given device: the teacher (at extraction) and the student (at training) call this
    same function with the same stored parameters, so they see identical pixels.

    Args:
        images: (n, C, H, W) source images.
        params: (n, P) view parameters, one row per image.
        policy: The policy the parameters were drawn under (``shift`` or ``resized_crop``).

    Returns:
        (n, C, H, W) rendered views, on the images' device and dtype.

    Raises:
        InvalidInput: An ``original_crop`` policy (rendered from the files), or shapes that disagree.
    """
    if policy.original:
        raise InvalidInput("views in original-image coordinates are rendered from the image files, not a tensor")
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
