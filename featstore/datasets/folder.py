"""``folder:DIR[?size=S&resize=R]``: an ImageFolder tree of image files, read lazily at any image size.

Layout: ``DIR/<split>/<class>/<image>`` (torchvision's ImageFolder). Classes are the sorted (code-point
order, as ImageFolder) names of the sub-folders of ``DIR/train`` — for both splits, so label i means the
same class in each; a class folder under ``DIR/test`` that ``DIR/train`` lacks is an error, one missing from
``DIR/test`` is fine, an empty class folder is an error. Images are the files with suffix .png .jpg .jpeg
.bmp .gif .webp (any case) anywhere below a class folder, taken in sorted order of their path relative to
it; hidden files and folders (``.name``) and other files are skipped.

Building the index lists the tree and stats every file (no image is opened). A sample is decoded only when
one of its views is asked for: Pillow, converted to RGB (first frame of an animation), the view's box cut
from the *original* image and resized to ``size`` × ``size`` (bilinear, antialiased), scaled to [0, 1] and
normalised with the ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).

Options follow the directory after the *last* ``?`` as ``key=value`` pairs joined by ``&``: ``size``
(default 32: the rendered size, overridden per command by ``--image-size``) and ``resize`` (default
``round(size * 9 / 8)``); view 0 is Resize(resize) + CenterCrop(size), i.e. the central square of
``size / resize`` of the short side (exactly 8/9 unless ``resize`` is given), at whatever size it is
rendered. The fingerprint is the index's
(relative paths, byte sizes, labels, order) and ignores both options and where ``DIR`` lies.

Views: ``original_crop`` with flip 0.5 and area scale (0.35, 1.0): RandomResizedCrop + flip, drawn on each
original file's own width and height.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from featstore.datasets.base import DATASETS, directory_of
from featstore.datasets.lazy import BadSample, LazyImageDataset, parse_options
from featstore.errors import InputNotFound, InvalidInput
from featstore.views import ORIGINAL, ViewPolicy

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
FOLDER_DEFAULT_SIZE = 32
FOLDER_OPTIONS = ("size", "resize")
DEFAULT_CROP = 8 / 9  # view 0 = Resize(size * 9 / 8) + CenterCrop(size), torchvision's usual 32 → 36 ratio


def parse_folder_argument(argument: str, spec: str) -> tuple[str, int, int]:
    """``DIR[?size=S][&resize=R]`` → (DIR, size, resize), strictly (see the module docstring)."""
    directory, sep, query = argument.rpartition("?") if "?" in argument else (argument, "", "")
    options = parse_options(query, spec, FOLDER_OPTIONS) if sep else {}
    size = options.get("size", FOLDER_DEFAULT_SIZE)
    resize = options.get("resize", int(round(size * 9 / 8)))
    if resize < size:
        raise InvalidInput(f"dataset spec {spec!r}: resize ({resize}) must be at least size ({size})")
    return directory, size, resize


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def class_folders(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not _is_hidden(e.name))


def image_files(class_dir: Path) -> list[tuple[str, int]]:
    """(path relative to ``class_dir``, byte size) of every image below it, sorted by that path."""
    found: list[tuple[str, int]] = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        relative = Path(dirpath).relative_to(class_dir)
        for name in filenames:
            if not _is_hidden(name) and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                try:
                    size = os.stat(os.path.join(dirpath, name)).st_size
                except OSError as err:
                    raise InvalidInput(f"folder: cannot read image {Path(dirpath) / name}: {err.strerror}") from None
                found.append(((relative / name).as_posix(), size))
    return sorted(found)


class FolderDataset(LazyImageDataset):
    """One split of an ImageFolder tree; ``keys`` are ``<class>/<relative path>``."""

    name = "folder"

    def __init__(self, root: Path, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root = root  # DIR/<split>

    def path(self, row: int) -> Path:
        return self.root / self.keys[row]

    def where(self, row: int) -> str:
        return str(self.path(row))

    def read_bytes(self, row: int) -> bytes:
        try:
            return self.path(row).read_bytes()
        except OSError as err:
            raise BadSample(f"folder: cannot read image {self.path(row)}: {err.strerror or err}") from None


def folder_index(root: Path, split: str) -> tuple[list[str], list[int], list[int], list[str], Path]:
    """(keys, byte sizes, labels, class names, split dir) of ``root``'s ``split`` (see the module docstring)."""
    train_dir, split_dir = root / "train", root / split
    for needed in dict.fromkeys((train_dir, split_dir)):
        if not needed.is_dir():
            raise InputNotFound(f"folder: {needed} not found (expected {root}/<train|test>/<class>/<images>)")
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
        found = image_files(split_dir / name)
        if not found:
            raise InvalidInput(
                f"folder: class folder {split_dir / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        keys += [f"{name}/{relative}" for relative, _ in found]
        sizes += [size for _, size in found]
        labels += [index[name]] * len(found)
    return keys, sizes, labels, classes, split_dir


@DATASETS.register("folder")
def _folder(spec: str, argument: str, split: str, image_size: int | None = None) -> FolderDataset:
    """``folder:DIR[?size=S&resize=R]``: DIR/<split>/<class>/<image> (see the module docstring)."""
    directory, size, resize = parse_folder_argument(argument, spec)
    root = directory_of(directory, spec, "folder")
    keys, sizes, labels, classes, split_dir = folder_index(root, split)
    rendered = image_size or size
    # view 0's crop: size/resize when resize= is given, else 8/9 (32 of 36) whatever the size, so that specs
    # differing only in size= (a teacher at 224, a student at 160) describe the same views
    explicit = "resize=" in (argument.rpartition("?")[2] if "?" in argument else "")
    crop = size / resize if explicit else DEFAULT_CROP
    policy = ViewPolicy(kind=ORIGINAL, flip_p=0.5, scale=(0.35, 1.0), crop_fraction=crop)
    return FolderDataset(
        split_dir,
        spec=spec,
        split=split,
        keys=keys,
        sizes=np.asarray(sizes, dtype=np.int64),
        labels=np.asarray(labels, dtype=np.int64),
        num_classes=len(classes),
        image_size=(rendered, rendered),
        view_policy=policy,
        class_names=tuple(classes),
    )


__all__ = ["FOLDER_DEFAULT_SIZE", "IMAGE_SUFFIXES", "FolderDataset", "folder_index", "parse_folder_argument"]
