"""Training: the teacher and student trainers, the student run object, resume identity, AMP, DDP, curves.

``train_student(StudentConfig(...))`` runs a whole student run; ``StudentRun.build(config)`` gives the same
run as an object (``train_step`` → ``run_epoch`` → ``save``) for callers that drive it themselves.
"""

from featstore._lazy import lazy_exports

_EXPORTS = {
    "OptimConfig": "distill.training.common",
    "StudentConfig": "distill.training.student",
    "StudentResult": "distill.training.student",
    "StudentRun": "distill.training.run",
    "train_student": "distill.training.student",
    "TeacherConfig": "distill.training.teacher",
    "train_teacher": "distill.training.teacher",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
