"""``folder:DIR[?size=S|H,W&resize=R&scale=LO,HI]``: an ImageFolder tree of image files, read lazily at any size.

Layout: ``DIR/<split>/<class>/<image>`` (torchvision's ImageFolder). Classes are the sorted (code-point
order, as ImageFolder) names of the sub-folders of ``DIR/train`` — for both splits, so label i means the
same class in each; a class folder under ``DIR/test`` that ``DIR/train`` lacks is an error, one missing from
``DIR/test`` is fine, an empty class folder is an error. Images are the files with suffix .png .jpg .jpeg
.bmp .gif .webp (any case) anywhere below a class folder, taken in sorted order of their path relative to
it; hidden files and folders (``.name``) and other files are skipped. Directory symlinks are followed, each
directory once (by device and inode: a link back to an ancestor adds nothing); a class folder that cannot
be listed is an error, and so is a sub-folder below it unless ``--skip-bad-samples`` leaves it out with a
warning (:mod:`featstore.datasets.files`). A split without its folder (``DIR/test`` absent) is
:class:`~featstore.datasets.base.SplitNotFound`.

Building the index lists the tree and stats every file (no image is opened). A sample is read only when
one of its views is asked for — a regular file of at most 64 MiB, anything else (a FIFO, a device) is a bad
sample — and decoded by :func:`featstore.datasets.images.decode_rgb` (8-bit RGB, 16-bit images scaled, first
frame of an animation); the view's box is cut from the *original* image and resized to ``size`` × ``size``
(bilinear, antialiased), scaled to [0, 1] and normalised with the ImageNet mean (0.485, 0.456, 0.406) and
std (0.229, 0.224, 0.225).

Options follow the directory after the *last* ``?`` as ``key=value`` pairs joined by ``&``
(:class:`featstore.spec_query.SpecQuery`):

* ``size`` (default 32, at most 2048): the rendered size, overridden per command by ``--image-size``;
  ``size=H,W`` renders H×W images (a text-line recognizer's 48×320), and view 0 is then the whole image
  resized, as such inputs come framed already (``resize`` does not apply);
* ``resize`` (default ``round(size * 9 / 8)``): view 0 is Resize(resize) + CenterCrop(size), i.e. the
  central square of ``size / resize`` of the short side (exactly 8/9 unless ``resize`` is given), at
  whatever size it is rendered;
* ``scale`` (default ``0.35,1``): the area range of the other views' RandomResizedCrop boxes, as fractions
  of each original (torchvision's ImageNet default is ``0.08,1``).

Views: ``original_crop`` with flip 0.5 and area ``scale``: RandomResizedCrop + flip, drawn on each original
file's own width and height. The fingerprint is the index's (relative paths, byte sizes, labels, order) and
ignores the options and where ``DIR`` lies; the view policy (with ``scale``) is recorded by the store.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featstore.datasets.base import DATASETS, MAX_IMAGE_SIZE, LoadOptions, SplitNotFound, directory_of
from featstore.datasets.files import UnreadableFile, list_files, read_file
from featstore.datasets.lazy import BadSample, LazyImageDataset
from featstore.errors import InputNotFound, InvalidInput
from featstore.spec_query import SpecQuery
from featstore.views import ORIGINAL, ViewPolicy

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
FOLDER_DEFAULT_SIZE = 32
FOLDER_OPTIONS = ("size", "resize", "scale")
DEFAULT_CROP = 8 / 9  # view 0 = Resize(size * 9 / 8) + CenterCrop(size), torchvision's usual 32 → 36 ratio
DEFAULT_SCALE = (0.35, 1.0)


@dataclass(frozen=True)
class FolderSpec:
    """What ``DIR?size=…&resize=…&scale=…`` says (see the module docstring).

    Attributes:
        directory: DIR, as given.
        size: the rendered (H, W).
        resize: view 0's Resize before its CenterCrop; None for a non-square size.
        crop: view 0's central square, as a fraction of the short side; None: the whole image.
        scale: the area range of the other views' RandomResizedCrop boxes.
    """

    directory: str
    size: tuple[int, int]
    resize: int | None
    crop: float | None
    scale: tuple[float, float]


def parse_folder_spec(argument: str, spec: str) -> FolderSpec:
    """Parse ``DIR[?size=S|H,W][&resize=R][&scale=LO,HI]`` into its :class:`FolderSpec`, strictly.

    Args:
        argument: the part of the spec after ``folder:``.
        spec: the whole spec, for the messages.

    Returns:
        The parsed spec, with the defaults filled in.

    Raises:
        InvalidInput: an unknown, repeated or malformed option, a value out of range, ``resize`` below
            ``size`` or given with a non-square size.
    """
    directory, query = SpecQuery.split(argument, spec, FOLDER_OPTIONS, what="dataset spec")
    size = query.sides("size", (FOLDER_DEFAULT_SIZE, FOLDER_DEFAULT_SIZE), low=1, high=MAX_IMAGE_SIZE)
    low, high = query.floats("scale", DEFAULT_SCALE, count=2, low=0.0, high=1.0, ascending=True)
    if low <= 0:
        raise InvalidInput(f"dataset spec {spec!r}: scale's lower bound must be above 0, got {low:g}")
    if size[0] != size[1]:  # text lines, person crops: framed already, so view 0 is the whole image
        if "resize" in query:
            raise InvalidInput(
                f"dataset spec {spec!r}: resize= applies to a square size; a {size[0]},{size[1]} size renders "
                "the whole image"
            )
        return FolderSpec(directory, size, None, None, (low, high))
    resize = query.int("resize", int(round(size[0] * 9 / 8)), low=1, high=64 * MAX_IMAGE_SIZE)
    if resize < size[0]:
        raise InvalidInput(f"dataset spec {spec!r}: resize ({resize}) must be at least size ({size[0]})")
    # view 0's crop: size/resize when resize= is given, else 8/9 (32 of 36) whatever the size, so that specs
    # differing only in size= (a teacher at 224, a student at 160) describe the same views
    crop = size[0] / resize if "resize" in query else DEFAULT_CROP
    return FolderSpec(directory, size, resize, crop, (low, high))


def parse_folder_argument(argument: str, spec: str) -> tuple[str, tuple[int, int], int | None]:
    """Parse ``DIR[?size=S|H,W][&resize=R][&scale=LO,HI]`` as :func:`parse_folder_spec` does.

    Args:
        argument: the part of the spec after ``folder:``.
        spec: the whole spec, for the messages.

    Returns:
        DIR, the rendered (H, W) and ``resize`` (None for a non-square size).

    Raises:
        InvalidInput: as :func:`parse_folder_spec`.
    """
    parsed = parse_folder_spec(argument, spec)
    return parsed.directory, parsed.size, parsed.resize


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def class_folders(split_dir: Path) -> list[str]:
    """List the sorted non-hidden sub-folders of ``split_dir`` (its classes).

    Args:
        split_dir: ``DIR/<split>``.

    Returns:
        The folder names, in code-point order.

    Raises:
        InvalidInput: the folder cannot be listed.
    """
    try:
        return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not _is_hidden(e.name))
    except OSError as err:
        raise InvalidInput(f"folder: cannot list folder {split_dir}: {err.strerror or err}") from None


def image_files(class_dir: Path, skip_unlisted: bool = False) -> list[tuple[str, int]]:
    """List every image below ``class_dir``, sorted by its path relative to it.

    Args:
        class_dir: a class folder.
        skip_unlisted: leave sub-folders that cannot be listed out, with a warning, rather than refuse.

    Returns:
        ``(path relative to class_dir, byte size)`` of each image.

    Raises:
        InvalidInput: a folder cannot be listed (below ``class_dir`` only without ``skip_unlisted``).
    """
    listing = list_files(class_dir, IMAGE_SUFFIXES, skip_unlisted=skip_unlisted, what="folder")
    if listing.unlisted:
        where, reason = listing.unlisted[0]
        warnings.warn(
            f"folder: {len(listing.unlisted)} folder(s) below {class_dir} cannot be listed (first: {where}: "
            f"{reason}); their images are left out (--skip-bad-samples)",
            RuntimeWarning,
            stacklevel=2,
        )
    return listing.files


class FolderDataset(LazyImageDataset):
    """One split of an ImageFolder tree; ``keys`` are ``<class>/<relative path>``.

    Args:
        root: ``DIR/<split>``.
        **kwargs: the fields of :class:`~featstore.datasets.lazy.LazyImageDataset`.
    """

    name = "folder"

    def __init__(self, root: Path, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root = root  # DIR/<split>

    def path(self, row: int) -> Path:
        """Return the image file of sample ``row``."""
        return self.root / self.keys[row]

    def where(self, row: int) -> str:
        """Return the image file of sample ``row``, for messages."""
        return str(self.path(row))

    def read_bytes(self, row: int) -> bytes:
        """Read the image file of sample ``row``.

        Raises:
            BadSample: the file cannot be read, is not a regular file, or is too large.
        """
        try:
            return read_file(self.path(row))
        except UnreadableFile as err:
            raise BadSample(f"folder: cannot read image {self.path(row)}: {err}") from None


def folder_index(
    root: Path, split: str, skip_unlisted: bool = False
) -> tuple[list[str], list[int], list[int], list[str], Path]:
    """Index ``root``'s ``split`` (see the module docstring for the layout and its rules).

    Args:
        root: DIR, holding ``train/`` and possibly ``test/``.
        split: ``train`` or ``test``.
        skip_unlisted: leave sub-folders of a class that cannot be listed out, with a warning.

    Returns:
        The keys, byte sizes and labels of the split's images, the class names (those of ``train/``) and
        the split's folder.

    Raises:
        InputNotFound: ``train/`` is missing (:class:`SplitNotFound` when only the split's folder is).
        InvalidInput: no classes, a class of the split that ``train/`` lacks, an empty class folder, or a
            folder that cannot be listed.
    """
    train_dir, split_dir = root / "train", root / split
    for needed in dict.fromkeys((train_dir, split_dir)):
        if not needed.is_dir():
            missing = SplitNotFound if needed == split_dir and train_dir.is_dir() else InputNotFound
            raise missing(f"folder: {needed} not found (expected {root}/<train|test>/<class>/<images>)")
    classes = class_folders(train_dir)
    if not classes:
        raise InvalidInput(f"folder: no class sub-folders in {train_dir}")
    index = {name: i for i, name in enumerate(classes)}
    split_classes = classes if split_dir == train_dir else class_folders(split_dir)
    unknown = [c for c in split_classes if c not in index]
    if unknown:
        raise InvalidInput(
            f"folder: class folder(s) {', '.join(map(repr, unknown))} in {split_dir} are not in "
            f"{train_dir}; every class must have training images"
        )
    if not split_classes:
        raise InvalidInput(f"folder: no class sub-folders in {split_dir}")
    keys: list[str] = []
    sizes: list[int] = []
    labels: list[int] = []
    for name in split_classes:
        found = image_files(split_dir / name, skip_unlisted)
        if not found:
            raise InvalidInput(
                f"folder: class folder {split_dir / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        keys += [f"{name}/{relative}" for relative, _ in found]
        sizes += [size for _, size in found]
        labels += [index[name]] * len(found)
    return keys, sizes, labels, classes, split_dir


@DATASETS.register("folder")
def _folder(
    spec: str,
    argument: str,
    split: str,
    image_size: tuple[int, int] | None = None,
    options: LoadOptions | None = None,
) -> FolderDataset:
    """Build ``folder:DIR[?size=S|H,W&resize=R&scale=LO,HI]``: DIR/<split>/<class>/<image>.

    See the module docstring for the layout and the options.
    """
    parsed = parse_folder_spec(argument, spec)
    root = directory_of(parsed.directory, spec, "folder")
    skip = options is not None and options.skip_bad_samples
    keys, sizes, labels, classes, split_dir = folder_index(root, split, skip_unlisted=skip)
    rendered = image_size or parsed.size
    policy = ViewPolicy(kind=ORIGINAL, flip_p=0.5, scale=parsed.scale, crop_fraction=parsed.crop)
    return FolderDataset(
        split_dir,
        spec=spec,
        split=split,
        keys=keys,
        sizes=np.asarray(sizes, dtype=np.int64),
        labels=np.asarray(labels, dtype=np.int64),
        num_classes=len(classes),
        image_size=rendered,
        view_policy=policy,
        class_names=tuple(classes),
    )


__all__ = [
    "FOLDER_DEFAULT_SIZE",
    "IMAGE_SUFFIXES",
    "FolderDataset",
    "FolderSpec",
    "folder_index",
    "parse_folder_argument",
    "parse_folder_spec",
]
