"""The loss interface: one batch's tensors in, one scalar out; the registry of losses by name.

Why a single input dataclass: every loss (CE, logit KD, TH-KD, representation losses) is computed from the
same handful of tensors of one training step, so the trainer builds :class:`DistillInputs` once and each
registered loss takes what it needs. The trainer therefore never branches on a loss or recipe name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from featstore.errors import InvalidInput
from featstore.registry import Registry

LOSSES: Registry = Registry("loss")


@dataclass
class DistillInputs:
    """Tensors of one step. Teacher tensors come from the store (embedding) and its frozen head (logits)."""

    student_embedding: torch.Tensor  # z_s (B, D)
    student_logits: torch.Tensor | None  # g_s(z_s) (B, C); None when no term of the recipe reads it
    labels: torch.Tensor  # (B,) int64
    teacher_embedding: torch.Tensor | None = None  # z_t (B, D_t), from the store
    teacher_logits: torch.Tensor | None = None  # g_t(z_t) (B, C), the stored head on the stored embedding
    student_logits_th: torch.Tensor | None = None  # g_t(P z_s) (B, C): the frozen teacher head on the student
    # P z_s: the student embedding in the teacher's space (a trained projection P when the dimensions
    # differ, z_s itself otherwise) — what embedding-matching losses compare with z_t
    student_embedding_t: torch.Tensor | None = None
    indices: torch.Tensor | None = None  # (B,) int64 store/dataset sample ids (memory-bank losses)
    student_feature_map: torch.Tensor | None = None  # the student's last pre-pool map (B, C, H, W) (SP)

    def __post_init__(self) -> None:
        if self.student_embedding_t is None:
            self.student_embedding_t = self.student_embedding

    def with_teacher_detached(self) -> DistillInputs:
        """The same step with the teacher's tensors cut from the graph.

        They are targets, and a loss must never move what it is matched against (an online teacher's
        embedding may still carry a graph).
        """
        return replace(
            self,
            teacher_embedding=None if self.teacher_embedding is None else self.teacher_embedding.detach(),
            teacher_logits=None if self.teacher_logits is None else self.teacher_logits.detach(),
        )


@dataclass
class TrainingContext:
    """What a loss may need to know about the run before the first step (memory banks, projections)."""

    store: object  # featstore.store.FeatureStore
    student_dim: int
    teacher_dim: int
    num_samples: int
    device: torch.device
    seed: int = 0
    skip_bad_chunks: bool = False  # --skip-bad-chunks: memory banks leave bad chunks out instead of refusing
    batch_size: int = 0  # samples per step (0: unknown), for losses that mine pairs inside a batch
    samples_per_class: int | None = None  # K of class-balanced batches (--samples-per-class), None: plain stream


class DistillLoss(nn.Module):
    """Base class: subclasses implement :meth:`compute`; the base checks that needed inputs exist and agree."""

    #: names of the DistillInputs fields the loss reads
    needs: tuple[str, ...] = ()

    def setup(self, context: TrainingContext) -> None:
        """Prepare the loss once before training; most losses need nothing.

        It runs before the optimiser is built, so parameters created here are trained.

        Args:
            context: What the run knows before its first step (store, dimensions, device, seed).
        """

    def resume_state(self) -> dict[str, torch.Tensor]:
        """What ``--resume`` must save for the loss to continue exactly (e.g. a sampler's RNG state).

        Tensors only, so the state loads with ``weights_only=True``. Parameters and buffers are not part of
        it: they are in the module's ``state_dict``, which the trainer saves with the student.
        """
        return {}

    def load_resume_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`resume_state` returned (after :meth:`setup`)."""

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        """The loss of one step, after checking its inputs.

        Args:
            inputs: The step's tensors; the teacher's are detached before :meth:`compute` sees them.

        Returns:
            A scalar tensor.

        Raises:
            InvalidInput: A field of ``needs`` is missing, or the batch sizes of the fields disagree.
        """
        tensors = []
        for name in self.needs:
            value = getattr(inputs, name)
            if value is None:
                raise InvalidInput(f"loss {type(self).__name__} needs {name}, which this step does not provide")
            tensors.append(value)
        batch = {t.shape[0] for t in tensors}
        if len(batch) > 1:
            raise InvalidInput(f"loss {type(self).__name__}: batch sizes disagree {sorted(batch)}")
        return self.compute(inputs.with_teacher_detached())

    def compute(self, inputs: DistillInputs) -> torch.Tensor:  # pragma: no cover - abstract
        """The loss's maths on checked inputs; each subclass implements it."""
        raise NotImplementedError


class SeededDistillLoss(DistillLoss):
    """A loss that draws random numbers (e.g. negatives) from its own ``generator``, created in :meth:`setup`.

    The generator's state is its resumable state, so a resumed run draws what an uninterrupted one draws.
    """

    generator: torch.Generator | None = None

    def resume_state(self) -> dict[str, torch.Tensor]:
        """The generator's state (nothing before :meth:`setup`)."""
        return {} if self.generator is None else {"generator": self.generator.get_state()}

    def load_resume_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the generator's state."""
        if "generator" in state:
            self.generator.set_state(state["generator"])


def matched_embeddings(inputs: DistillInputs, loss_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(P z_s, z_t) for losses that compare embeddings element by element; they must have equal shapes."""
    z_s, z_t = inputs.student_embedding_t, inputs.teacher_embedding
    if z_s.shape != z_t.shape:
        raise InvalidInput(
            f"{loss_name} needs equal embedding shapes, got student {tuple(z_s.shape)} and teacher {tuple(z_t.shape)}"
        )
    return z_s, z_t


def kl_soft_targets(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's KD term: KL(softmax(t/T) ‖ softmax(s/T)) summed over classes, × T², averaged over the batch.

    Shared by logit KD and TH-KD, which differ only in which student logits they pass.
    """
    if student_logits.shape != teacher_logits.shape:
        raise InvalidInput(f"KD: student logits {tuple(student_logits.shape)} vs teacher {tuple(teacher_logits.shape)}")
    log_p_s = torch.log_softmax(student_logits / temperature, dim=1)
    p_t = torch.softmax(teacher_logits / temperature, dim=1)
    return torch.nn.functional.kl_div(log_p_s, p_t, reduction="batchmean") * temperature**2
