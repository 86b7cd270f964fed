"""Running a model over face images that are not a dataset: verification ``.bin`` files and image folders.

The folders serve IJB; every image is embedded plain and flipped (the flip test), optionally after 5-point
alignment.

A model is any spec :func:`distill.models.teachers.load_teacher` takes, or an fsd checkpoint. Images come
as uint8 RGB and are scaled the way the model was trained: a checkpoint records its dataset's
normalisation, and so does an ONNX file ``fsd export`` wrote; other models (ONNX face models and the like)
get the face convention (p/255 − 0.5)/0.5, which an ``onnx:…?mean=127.5&std=127.5`` teacher turns back
into its own scaling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from distill.evaluation.protocols import bin as bin_protocol
from featstore.errors import InvalidInput
from featstore.progress import progress

if TYPE_CHECKING:
    from distill.models.binding import ModelBinding

FACE_NORMALISATION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
FACE_SIZE = 112


@dataclass
class FaceModel:
    """A model bound to face images (:func:`distill.models.binding.bind_images`) and how to feed it uint8 images.

    Attributes:
        binding: The model bound to RGB images of one size and scaling.
        name: The model as reports name it.
    """

    binding: ModelBinding
    name: str

    @property
    def size(self) -> int:
        """The side of the square images the model is fed."""
        return int(self.binding.dataset.image_shape[-1])

    @property
    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per channel on [0, 1] pixels, applied before the model."""
        return self.binding.dataset.normalisation

    def prepare(self, images: np.ndarray) -> torch.Tensor:
        """Scale uint8 images (N, 3, H, W) to the model's normalised float32 input."""
        mean, std = (np.asarray(v, np.float32)[None, :, None, None] for v in self.normalisation)
        return torch.from_numpy((images.astype(np.float32) / 255.0 - mean) / std)

    @torch.no_grad()
    def embed(
        self, images: np.ndarray, device: torch.device, batch_size: int = 128, desc: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Embed ``images`` and their horizontal flips.

        Args:
            images: uint8 RGB (N, 3, S, S), S = :attr:`size`.
            device: Where the model runs.
            batch_size: Images per forward pass.
            desc: With it, a progress bar over the batches (featstore.progress).

        Returns:
            (embeddings, embeddings of the flipped images), float32 (N, D) each.
        """
        self.binding.to(device)
        plain, flipped = [], []
        for start in progress(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False):
            x = self.prepare(images[start : start + batch_size]).to(device)
            plain.append(self.binding.embed(x).float().cpu())
            flipped.append(self.binding.embed(torch.flip(x, dims=[3])).float().cpu())
        return torch.cat(plain).numpy(), torch.cat(flipped).numpy()


def load_face_model(spec: str | Path, *, trust_code: bool = False, image_size: int | None = None) -> FaceModel:
    """Bind any model spec or fsd checkpoint to face images.

    The size is ``image_size``, else the model's input size, else 112; the scaling is the normalisation the
    model records (a checkpoint, an fsd-exported ONNX file), else the face convention.

    Args:
        spec: A model spec or an fsd checkpoint (teacher or student).
        trust_code: Whether a ``module:function`` model may run its Python code.
        image_size: The images' side (None: see above).

    Returns:
        The bound model.

    Raises:
        InvalidInput: A model that does not take 3-channel images of that size.
    """
    from distill.models.binding import bind_images
    from distill.models.teachers import is_checkpoint_spec

    binding = bind_images(
        spec,
        image_size=image_size,
        default_size=FACE_SIZE,
        default_normalisation=FACE_NORMALISATION,
        trust_code=trust_code,
    )
    return FaceModel(binding, Path(spec).name if is_checkpoint_spec(spec) else str(spec))


def bin_reports(
    model: FaceModel, paths: list[Path], device: torch.device, batch_size: int = 128
) -> dict[str, dict[str, Any]]:
    """Report the verification accuracy of ``model`` on each ``.bin`` file.

    Every file is read and checked before the model runs on any of them.

    Args:
        model: The bound face model.
        paths: insightface verification ``.bin`` files (see :mod:`distill.evaluation.protocols.bin`).
        device: Where the model runs.
        batch_size: Images per forward pass.

    Returns:
        ``{name: report}``, one per file.

    Raises:
        InvalidInput: An unreadable file, or two files of one name.
    """
    sets = [bin_protocol.read_bin(p) for p in paths]
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise InvalidInput(f"two --bin files share a name: {', '.join(names)}")
    reports = {}
    for bins in sets:
        images = bin_protocol.decode_images(bins, model.size)
        plain, flipped = model.embed(images, device, batch_size, desc=f"eval {bins.name}")
        reports[bins.name] = bin_protocol.bin_accuracy(plain, flipped, bins.same)
    return reports


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _folder_images(root: Path) -> list[str]:
    """List the images below ``root`` as relative names that HDF5 can store (UTF-8).

    featstore's bounded lister reads each directory once and skips hidden entries.
    """
    from featstore.datasets.files import list_files

    names = [name for name, _ in list_files(root, IMAGE_SUFFIXES, what="embed").files]
    if not names:
        raise InvalidInput(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    for name in names:
        _check_utf8(name, f"image {str(root / name)!r}")
    return names


def _check_utf8(name: str, what: str) -> None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what}: the name is not UTF-8, which the HDF5 names dataset needs; rename it") from None


def _face_path(root: Path, name: str, where: str) -> Path:
    """``root / name`` for a name of the landmarks file, which must stay inside ``root``."""
    from pathlib import PurePosixPath

    relative = PurePosixPath(name)
    if not name or relative.is_absolute() or ".." in relative.parts:
        raise InvalidInput(f"{where}: face {name!r} is not a path inside --images {root}")
    return root / relative


def _load_face(path: Path, size: int, landmarks: np.ndarray | None) -> np.ndarray:
    from PIL import Image

    from distill.evaluation.align import align_face
    from featstore.datasets.files import UnreadableFile, read_file
    from featstore.datasets.images import UnreadableImage, decode_rgb

    try:
        rgb = decode_rgb(read_file(path))
    except (UnreadableFile, UnreadableImage) as exc:
        raise InvalidInput(f"image {path} cannot be decoded: {exc}") from None
    if landmarks is not None:
        rgb = align_face(rgb, landmarks, size)
    elif rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def embed_folder(
    model: FaceModel,
    images: str | Path,
    out: str | Path,
    *,
    landmarks: str | Path | None = None,
    device: torch.device,
    batch_size: int = 128,
    overwrite: bool = False,
    show_progress: bool = True,
) -> int:
    """Embed a folder of face images into an HDF5 file, as ``fsd eval --ijb-meta`` reads it.

    Every image of ``images`` (or, with ``landmarks``, every face the file lists, aligned) is embedded plain
    and flipped; the file holds ``embeddings``, ``embeddings_flip`` and ``names``. It is written atomically,
    batch by batch, so memory does not grow with the number of images.

    Args:
        model: The bound face model.
        images: The image folder.
        out: The HDF5 file to write.
        landmarks: A 5-point landmarks file naming the faces to align and embed.
        device: Where the model runs.
        batch_size: Images per forward pass.
        overwrite: Whether an existing ``out`` may be replaced.
        show_progress: Whether to show a progress bar.

    Returns:
        The number of faces embedded.

    Raises:
        InputNotFound: ``images`` is not a folder.
        OutputExists: ``out`` exists and ``overwrite`` is not set.
        InvalidInput: No images, a name HDF5 cannot store, faces of the landmarks file missing from the folder,
            or an unreadable image or landmarks file.
    """
    import json

    import h5py

    from distill.evaluation.align import read_landmarks
    from featstore.atomic import atomic_path
    from featstore.errors import InputNotFound, OutputExists

    root, out = Path(images), Path(out)
    if not root.is_dir():
        raise InputNotFound(f"image folder {root} does not exist")
    if out.exists() and not overwrite:
        raise OutputExists(f"{out} already exists (use --overwrite to replace it)")
    points = read_landmarks(landmarks) if landmarks is not None else None
    names = list(points) if points is not None else _folder_images(root)
    if points is not None:  # the folder's own listing needs no check: its files are read through read_file
        missing = [n for n in names if not _face_path(root, n, f"landmarks file {landmarks}").is_file()]
        if missing:
            raise InvalidInput(
                f"{len(missing)} face(s) of the landmarks file are not in {root} (first: {missing[0]!r})"
            )
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as handle:
        text = h5py.string_dtype("utf-8")
        handle.create_dataset("names", data=np.asarray(names, dtype=object), dtype=text)
        for start in progress(range(0, len(names), batch_size), desc="embed", unit="batch", enabled=show_progress):
            batch = names[start : start + batch_size]
            pixels = np.stack([_load_face(root / n, model.size, None if points is None else points[n]) for n in batch])
            plain, flipped = model.embed(pixels, device, batch_size)
            if start == 0:
                for key in ("embeddings", "embeddings_flip"):
                    handle.create_dataset(key, shape=(len(names), plain.shape[1]), dtype="float32")
            handle["embeddings"][start : start + len(batch)] = plain
            handle["embeddings_flip"][start : start + len(batch)] = flipped
        handle.attrs["fsd"] = json.dumps({"model": model.name, "aligned": points is not None, "size": model.size})
    return len(names)
