"""Where a student run's teacher outputs come from: a feature store (read) or a teacher network (run online).

The online form is the baseline fsd is measured against: the same data path, views and losses, but the
teacher's embedding is computed at every step instead of read from a store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from distill.models.binding import bind_to_dataset
from distill.models.heads import head_from_store
from featstore.codecs import DEFAULT_DTYPE
from featstore.datasets import Dataset
from featstore.errors import InvalidInput, StoreError
from featstore.store import FeatureStore, default_chunk_rows, open_store
from featstore.stream import GeneratedViews
from featstore.teacher import check_head_classes
from featstore.views import policy_mismatch

if TYPE_CHECKING:
    from distill.training.config import StudentConfig


def check_store_matches(store: FeatureStore, dataset: Dataset) -> None:
    """Refuse a store that was not made from this split: training pairs store row i with dataset sample i.

    Args:
        store: The opened store.
        dataset: The training split.

    Raises:
        StoreError: The store's dataset fingerprint, view policy or labels differ from the split's.
    """
    # the student re-renders each stored view from its parameters with the dataset's view policy: it must be
    # the policy the teacher's views were rendered with, or embeddings are paired with other pixels
    recorded = (store.meta.get("views") or {}).get("policy")
    mismatch = policy_mismatch(recorded, dataset.view_policy)
    older = mismatch is not None and dataset.view_policy.original and recorded.get("kind") != "original_crop"
    if mismatch is not None and older:  # an older fsd's store: say so rather than "another dataset"
        raise StoreError(f"store {store.url}: {mismatch}")
    made_from = store.meta.get("dataset", {})
    if made_from.get("fingerprint") != dataset.fingerprint():
        raise StoreError(
            f"store {store.url} was extracted from dataset {made_from.get('spec')!r} split "
            f"{made_from.get('split')!r} (fingerprint {str(made_from.get('fingerprint'))[:12]}), not from "
            f"{dataset.spec!r} split {dataset.split!r} (fingerprint {dataset.fingerprint()[:12]})"
        )
    if mismatch is not None:
        raise StoreError(
            f"store {store.url} was extracted with view policy {recorded}, but dataset {dataset.spec!r} renders "
            f"views with {dataset.view_policy.to_dict()}: the student would see other pixels than the teacher"
        )
    mismatch = store.labels_mismatch(dataset.labels)  # shifted or lost labels would train on other classes
    if mismatch is not None:
        raise StoreError(mismatch)


@dataclass
class TeacherSide:
    """Where the teacher's outputs come from: a store (read) or, for the online baseline, a network (run)."""

    source: FeatureStore | GeneratedViews  # what the stream iterates: rows, labels, view parameters
    head: nn.Module | None  # the frozen classifier g_t; None for a head-less teacher (recipes without its logits)
    dim: int
    provenance: dict[str, Any]  # recorded in the checkpoint, and part of the --resume identity
    model: nn.Module | None = None  # online baseline only

    def embed(self, stored: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The teacher embedding of a batch: ``stored`` from a store, or the online teacher run on ``x``."""
        if self.model is None:
            return stored
        with torch.no_grad():
            return self.model.forward_features(x)


HEAD_INPUTS = frozenset({"teacher_logits", "student_logits_th"})
"""The loss inputs computed with the teacher's head: a recipe that needs none trains from a head-less teacher."""


def needs_teacher_head(config: StudentConfig, needs: frozenset[str]) -> bool:
    """Whether a run with these loss inputs (``Criterion.needs``) uses the teacher's head."""
    return bool(needs & HEAD_INPUTS) or config.init_head_from_teacher


def _no_head(config: StudentConfig, what: str, fix: str) -> InvalidInput:
    return InvalidInput(
        f"{what} has no teacher head (a head-less teacher: onnx:, timm:…?head=0, --drop-head), and recipe "
        f"{config.recipe!r} trains with the teacher's logits; {fix}"
    )


def teacher_side(
    config: StudentConfig,
    dataset: Dataset,
    device: torch.device,
    chunk_rows: int | None = None,
    needs_head: bool = True,
) -> TeacherSide:
    """Open the run's teacher side: the store's, or the online baseline's.

    The baseline's views are laid out in a store's chunk geometry, so it streams exactly the batches a store run
    of that geometry streams.

    Args:
        config: The run's config (``store`` or ``online_teacher``).
        dataset: The training split; a store must have been extracted from it.
        device: Where the online teacher runs.
        chunk_rows: The baseline's chunk geometry (None: that of the store ``extract-teacher`` writes with its
            defaults).
        needs_head: Whether the recipe uses the teacher's logits: a head-less teacher is then refused, otherwise
            it gives ``head=None``.

    Returns:
        The teacher side: source, head, embedding size, provenance and (online) model.

    Raises:
        InvalidInput: Neither or both of store and online teacher, a head over other classes, or a missing head
            the recipe needs.
        StoreError: A store made from another split, view policy or labels.
    """
    if (config.store is None) == (config.online_teacher is None):
        raise InvalidInput("give exactly one of --store and --online-teacher")
    if config.store is not None:
        store = open_store(config.store)
        check_store_matches(store, dataset)
        if not store.has_head and needs_head:
            fix = f"fit one on the stored embeddings first: fsd store fit-head {store.url} --head arcface"
            raise _no_head(config, f"store {store.url}", fix)
        if store.has_head and store.shape.num_classes != dataset.num_classes:
            raise InvalidInput(
                f"store {store.url}: its teacher head has {store.shape.num_classes} classes, dataset "
                f"{dataset.spec} has {dataset.num_classes}; refit it with fsd store fit-head --overwrite"
            )
        return TeacherSide(
            store,
            head_from_store(store).to(device) if store.has_head else None,
            store.shape.dim,
            {
                "url": store.url,
                "teacher": store.meta.get("teacher"),
                "views": store.shape.num_views,
                "dtype": store.dtype,
                "view_seed": (store.meta.get("views") or {}).get("seed"),
            },
        )
    binding = bind_to_dataset(config.online_teacher, dataset, trust_code=config.trust_code)
    teacher = binding.source
    if not teacher.has_head and needs_head:
        fix = "extract a store (fsd extract-teacher), fit a head on it (fsd store fit-head STORE --head arcface)"
        raise _no_head(config, f"online teacher {config.online_teacher}", fix + " and train from the store")
    check_head_classes(teacher, dataset.num_classes, dataset.spec)
    if chunk_rows is None:  # the geometry `extract-teacher` gives a default store: the same stream, batch for batch
        chunk_rows = default_chunk_rows(len(dataset), config.views, teacher.embedding_dim, DEFAULT_DTYPE)
    source = GeneratedViews(dataset, config.views, seed=config.view_seed, chunk_rows=chunk_rows)
    return TeacherSide(
        source,
        None if binding.head is None else binding.head.to(device),
        teacher.embedding_dim,
        {
            "online_teacher": str(config.online_teacher),
            "teacher": {"arch": teacher.arch, "checkpoint_sha256": teacher.checkpoint_sha256},
            "views": config.views,
            "view_seed": config.view_seed,
        },
        model=binding.to(device).source.model,
    )
