"""Train a student from a feature store: the teacher network never runs.

``train_student(config)`` is the whole run; :class:`distill.training.run.StudentRun` is the same run as an
object (build → step → epoch → save) for callers that drive it themselves, such as the benchmarks.
(``online_teacher`` is the baseline for comparison: the same data path, views and losses, but the teacher's
embedding is computed at every step instead of read from a store.)
"""

from __future__ import annotations

from distill.training.config import StudentConfig, StudentResult
from distill.training.outputs import output_locked
from distill.training.run import StudentRun, head_cosine, init_head_from, log_path_for, resume_path_for
from distill.training.teacher_side import TeacherSide, check_store_matches, teacher_side


@output_locked(resume_path_for)  # one writer per --out; Ctrl-C and a full disk say how to continue
def train_student(config: StudentConfig) -> StudentResult:
    """Train (or with ``config.resume`` continue) a student; under torchrun, one process per rank.

    One writer per ``--out``: a second run on the same output is refused while the first holds it, and Ctrl-C
    or a full disk leaves a message saying how to continue.

    Args:
        config: What the run is asked to do.

    Returns:
        The checkpoint and log written, the final test accuracy and the run's figures.
    """
    return StudentRun.build(config).fit()


__all__ = [
    "StudentConfig",
    "StudentResult",
    "StudentRun",
    "TeacherSide",
    "check_store_matches",
    "head_cosine",
    "init_head_from",
    "log_path_for",
    "resume_path_for",
    "teacher_side",
    "train_student",
]
