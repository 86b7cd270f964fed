"""distill: everything after the store — models, losses, trainers and FAISS evaluation.

It holds the models and heads, the losses, the teacher and student trainers, and the evaluation.

The public API (each name imported on first use)::

    from distill import StudentConfig, train_student, create_model, load_checkpoint, load_teacher
    from distill import EvalRequest, run_eval  # `fsd eval` as a function

Rooms: ``distill.models`` (backbones, heads, checkpoints, teacher sources, inference), ``distill.losses``
(registered losses and recipes), ``distill.training`` (trainers, the run object, resume, DDP, curves) and
``distill.evaluation`` (search, metrics, protocols, reports). Imports go one way: models ← losses ←
training, and models ← evaluation (pyproject.toml's import-linter contracts keep it so).
"""

from featstore._lazy import lazy_exports

_EXPORTS = {
    "MODELS": "distill.models",
    "create_model": "distill.models",
    "Checkpoint": "distill.models.checkpoint",
    "load_checkpoint": "distill.models.checkpoint",
    "save_checkpoint": "distill.models.checkpoint",
    "load_teacher": "distill.models.teachers",
    "ModelBinding": "distill.models.binding",
    "ModelSpec": "distill.models.binding",
    "bind_model": "distill.models.binding",
    "embed_dataset": "distill.models.inference",
    "select_device": "distill.models.inference",
    "LOSSES": "distill.losses",
    "RECIPES": "distill.losses",
    "build_criterion": "distill.losses",
    "OptimConfig": "distill.training.common",
    "StudentConfig": "distill.training.student",
    "StudentResult": "distill.training.student",
    "StudentRun": "distill.training.run",
    "train_student": "distill.training.student",
    "TeacherConfig": "distill.training.teacher",
    "EmbeddingSet": "distill.evaluation.sources",
    "EvalRequest": "distill.evaluation.request",
    "EvalResult": "distill.evaluation.request",
    "evaluate": "distill.evaluation.report",
    "run_eval": "distill.evaluation.request",
    "train_teacher": "distill.training.teacher",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
