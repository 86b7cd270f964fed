"""Where evaluated embeddings come from, each source gathered into one :class:`EmbeddingSet`.

The sources are a checkpoint run over a dataset split, a feature store's stored teacher embeddings, or an
HDF5 file.

One responsibility: read and validate the embeddings (and labels, logits, names, flipped embeddings) a report is
computed from; nothing here computes a metric.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featstore.errors import InputNotFound, InvalidInput
from featstore.progress import progress

__all__ = [
    "EmbeddingSet",
    "embeddings_from_checkpoint",
    "embeddings_from_h5",
    "embeddings_from_store",
    "mixed_prediction_logits",
]


@dataclass
class EmbeddingSet:
    """What is evaluated, validated on construction.

    L2-normalisation happens in the metrics, so raw embeddings are kept here.

    Attributes:
        embeddings: (N, D) float32.
        labels: (N,) int64; -1 is unknown.
        logits: (N, C), when a classifier head over the labels' classes is available.
        source: Where the embeddings come from, as the report records it.
        names: (N,) sample names (e.g. LFW image names), for name-based pairs files.
        flip: (N, D) embeddings of the horizontally flipped images (IJB flip-sum).

    Raises:
        InvalidInput: Shapes that do not match, fewer than 2 embeddings, or non-finite values.
    """

    embeddings: np.ndarray
    labels: np.ndarray
    logits: np.ndarray | None = None
    source: dict[str, Any] = field(default_factory=dict)
    names: list[str] | None = None
    flip: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or self.labels.ndim != 1 or len(self.embeddings) != len(self.labels):
            raise InvalidInput(
                f"embeddings {self.embeddings.shape} and labels {self.labels.shape} do not match (need (N, D) and (N,))"
            )
        if self.names is not None and len(self.names) != len(self.labels):
            raise InvalidInput(f"{len(self.names)} names for {len(self.labels)} embeddings")
        if len(self.labels) < 2:
            raise InvalidInput(f"need at least 2 embeddings to evaluate, got {len(self.labels)}")
        if not np.isfinite(self.embeddings).all():
            raise InvalidInput("embeddings contain NaN or infinite values")
        if self.flip is not None:
            if self.flip.shape != self.embeddings.shape:
                raise InvalidInput(
                    f"flipped embeddings {self.flip.shape} do not match the embeddings {self.embeddings.shape}"
                )
            if not np.isfinite(self.flip).all():
                raise InvalidInput("flipped embeddings contain NaN or infinite values")


def mixed_prediction_logits(ckpt, embeddings: np.ndarray, logits: np.ndarray, weight: float) -> np.ndarray:
    """Compute the paper's mixed prediction log p', p' = (1−w)·softmax(student head) + w·softmax(g_t(P z)).

    The teacher head g_t and projection P are those a student checkpoint carries.

    Args:
        ckpt: The fsd student checkpoint.
        embeddings: The student's embeddings z (N, D).
        logits: The student head's logits (N, C).
        weight: w, in [0, 1].

    Returns:
        log p' (N, C).

    Raises:
        InvalidInput: ``weight`` outside [0, 1], or a checkpoint that carries no teacher head.
    """
    import torch

    from distill.models.heads import frozen_head

    if not 0.0 <= weight <= 1.0:
        raise InvalidInput(f"--th-mix must lie in [0, 1], got {weight}")
    state = ckpt.extra.get("teacher_head")
    if ckpt.kind != "student" or not state:
        raise InvalidInput("--th-mix needs a student checkpoint trained by fsd (it carries the teacher head)")
    head = frozen_head(state["type"], state["weight"], state["bias"], state["scale"], state["margin"])
    with torch.no_grad():
        z = torch.from_numpy(embeddings)
        weight_p = ckpt.extra.get("projection", {}).get("weight")
        if weight_p is not None:
            z = z @ weight_p.t()
        p_th = torch.softmax(head(z), dim=1)
        p_s = torch.softmax(torch.from_numpy(logits), dim=1)
        return torch.log((1 - weight) * p_s + weight * p_th).numpy()


def embeddings_from_checkpoint(
    path: str | Path,
    dataset_spec: str,
    split: str = "test",
    device: str = "auto",
    th_mix: float | None = None,
    image_size: int | None = None,
    loader_workers: int | None = None,
    trust_code: bool = False,
) -> EmbeddingSet:
    """Run a model over the identity views of a dataset split.

    The model is an fsd teacher or student checkpoint, or any model spec (``onnx:``, ``timm:``,
    ``torchscript:``, ``module:function``), bound to the dataset by :func:`distill.models.binding.bind_model`.

    Args:
        path: The checkpoint or model spec.
        dataset_spec: The dataset spec.
        split: Its split.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        th_mix: w, which mixes a student's prediction with its teacher head's (see
            :func:`mixed_prediction_logits`).
        image_size: Datasets read from files render at this size (None: the model's input size).
        loader_workers: DataLoader processes decoding images (None: from the CPU count).
        trust_code: Whether a ``module:function`` model may run its Python code.

    Returns:
        The embeddings and labels; logits only when the model has a head over the dataset's classes.

    Raises:
        InvalidInput: ``th_mix`` without a student checkpoint, or a model that does not fit the data.
    """
    from distill.models.binding import bind_model
    from distill.models.inference import select_device
    from distill.models.teachers import is_checkpoint_spec

    if th_mix is not None and not is_checkpoint_spec(path):
        raise InvalidInput("--th-mix needs a student checkpoint trained by fsd (it carries the teacher head)")
    binding = bind_model(
        path,
        dataset_spec,
        split,
        image_size=image_size,
        loader_workers=loader_workers,
        trust_code=trust_code,
        students=True,
    )
    dataset, ckpt = binding.dataset, binding.checkpoint
    embeddings, logits = binding.embed_dataset(select_device(device), desc="embed")
    if th_mix is not None:
        logits = mixed_prediction_logits(ckpt, embeddings, logits, th_mix)
    if logits is not None and logits.shape[1] != dataset.num_classes:
        logits = None  # a head over other classes cannot be scored against these labels
    return EmbeddingSet(
        embeddings,
        dataset.labels.copy(),
        logits,
        {
            "kind": "model" if ckpt is None else ckpt.kind,
            "path": str(path),
            "arch": binding.source.arch,
            "dataset": dataset_spec,
            "split": split,
            "fingerprint": dataset.fingerprint(),
            "input_shape": [int(v) for v in dataset.image_shape],  # what the model was fed
            # the prediction the top-1 is scored on; recorded so `fsd compare` can tell mixed from plain
            **({"th_mix": th_mix} if th_mix is not None else {}),
        },
    )


def embeddings_from_store(url: str, view: int = 0) -> EmbeddingSet:
    """Read the stored teacher embeddings of one view, chunk by chunk.

    Logits come from the stored head, so the teacher's top-1 is reported too. Rows left out at extraction
    (``--skip-bad-samples``) hold zeros, not embeddings, and are not part of the set.

    Args:
        url: The store.
        view: The stored view (0: the identity view).

    Returns:
        The embeddings and labels; logits when the store has a head.

    Raises:
        InvalidInput: ``view`` outside the store's views.
    """
    from featstore.store import left_out, open_store

    store = open_store(url)
    if not 0 <= view < store.shape.num_views:
        raise InvalidInput(f"view {view} outside the store's {store.shape.num_views} views")
    embeddings = np.empty((store.shape.num_samples, store.shape.dim), dtype=np.float32)
    labels = np.empty(store.shape.num_samples, dtype=np.int64)
    kept = np.ones(store.shape.num_samples, dtype=bool)
    # reading a large store must not look hung (featstore.progress: a bar, or a few lines in a log)
    for chunk in progress(range(store.num_chunks), desc="read store", unit="chunk", leave=False):
        start, stop = store.chunk_bounds(chunk)
        rows, chunk_labels, views = store.read_chunk(chunk)
        embeddings[start:stop] = rows[:, view]
        labels[start:stop] = chunk_labels
        kept[start:stop] = ~left_out(views)
    if not kept.all():
        embeddings, labels = embeddings[kept], labels[kept]
    import torch

    from distill.models.heads import head_from_store

    logits = None  # a head-less store (until fsd store fit-head) reports no top-1
    if store.has_head:
        with torch.no_grad():
            logits = head_from_store(store)(torch.from_numpy(embeddings)).numpy()
    dataset = store.meta.get("dataset", {})
    return EmbeddingSet(
        embeddings,
        labels,
        logits,
        {
            "kind": "store",
            "path": url,
            "dataset": dataset.get("spec"),
            "split": dataset.get("split"),
            "fingerprint": dataset.get("fingerprint"),
        },
    )


def embeddings_from_h5(path: str | Path, *, labels_required: bool = True, with_flip: bool = False) -> EmbeddingSet:
    """Read embeddings from HDF5: ``embeddings`` (N, D), ``labels`` (N,) and optionally ``names`` (N,).

    The names serve name-based pairs files and IJB meta files; anything else in the file is a clear error.

    Args:
        path: The HDF5 file.
        labels_required: False (IJB: identities come from the meta files) accepts a file without ``labels``
            (all samples then have the unknown label -1).
        with_flip: Also read the optional ``embeddings_flip`` (N, D) (embeddings of the flipped images) into
            :attr:`EmbeddingSet.flip`.

    Returns:
        The embeddings, labels and names.

    Raises:
        InputNotFound: ``path`` does not exist.
        InvalidInput: Not HDF5, or datasets missing or malformed.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"embeddings file {path} does not exist")
    if not h5py.is_hdf5(path):
        raise InvalidInput(f"{path} is not an HDF5 file")
    with h5py.File(path, "r") as handle:
        needed = ("embeddings", "labels") if labels_required or "labels" in handle else ("embeddings",)
        for name in needed:
            if name not in handle or not isinstance(handle[name], h5py.Dataset):
                raise InvalidInput(f"{path} has no dataset {name!r} (it needs 'embeddings' (N, D) and 'labels' (N,))")
        emb = handle["embeddings"]
        if "labels" not in needed:
            if emb.ndim != 2:
                raise InvalidInput(f"{path}: embeddings {emb.shape} must be (N, D)")
            lab = np.full(emb.shape[0], -1, dtype=np.int64)
        else:
            lab = handle["labels"]
        if emb.ndim == 3:
            raise InvalidInput(
                f"{path}: embeddings {emb.shape} hold one embedding per view (N, V, D); evaluate one view: "
                "`fsd store export STORE --view 0` writes (N, D)"
            )
        if emb.ndim != 2 or lab.ndim != 1 or emb.shape[0] != lab.shape[0]:
            raise InvalidInput(
                f"{path}: embeddings {emb.shape} and labels {lab.shape} do not match (need (N, D), (N,))"
            )
        if not (np.issubdtype(emb.dtype, np.floating) or np.issubdtype(emb.dtype, np.integer)):
            raise InvalidInput(f"{path}: embeddings have non-numeric dtype {emb.dtype}")
        if not np.issubdtype(lab.dtype, np.integer):
            raise InvalidInput(f"{path}: labels must be integers, got dtype {lab.dtype}")
        embeddings = np.asarray(emb[...], dtype=np.float32)
        labels = np.asarray(lab[...], dtype=np.int64)
        names = _h5_names(handle, path, len(labels))
        flip = _h5_flip(handle, path, emb.shape) if with_flip else None
    if (labels < -1).any():
        raise InvalidInput(f"{path}: labels must be ≥ 0 (or -1 for unknown)")
    return EmbeddingSet(embeddings, labels, None, {"kind": "embeddings", "path": str(path)}, names, flip)


def _h5_flip(handle: Any, path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The optional ``embeddings_flip`` dataset: (N, D) numbers like ``embeddings``."""
    import h5py

    if "embeddings_flip" not in handle:
        return None
    ds = handle["embeddings_flip"]
    if not isinstance(ds, h5py.Dataset) or ds.shape != tuple(shape):
        raise InvalidInput(f"{path}: 'embeddings_flip' must be a dataset of shape {tuple(shape)} like 'embeddings'")
    if not (np.issubdtype(ds.dtype, np.floating) or np.issubdtype(ds.dtype, np.integer)):
        raise InvalidInput(f"{path}: embeddings_flip have non-numeric dtype {ds.dtype}")
    return np.asarray(ds[...], dtype=np.float32)


def _h5_names(handle: Any, path: Path, n: int) -> list[str] | None:
    """The optional ``names`` dataset: N strings (variable or fixed length, UTF-8)."""
    import h5py

    if "names" not in handle:
        return None
    ds = handle["names"]
    if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or ds.shape[0] != n:
        raise InvalidInput(f"{path}: 'names' must be a dataset of {n} strings (one per embedding)")
    if h5py.check_string_dtype(ds.dtype) is None and ds.dtype.kind not in "SU":
        raise InvalidInput(f"{path}: 'names' must hold strings, got dtype {ds.dtype}")
    try:
        raw = ds.asstr()[...] if h5py.check_string_dtype(ds.dtype) is not None else ds[...]
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in raw.tolist()]
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: 'names' are not valid UTF-8") from None
