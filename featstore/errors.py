"""The one exception hierarchy of fsd.

Every error a user can cause by bad input is an :class:`FsdError`; the CLI turns it into a one-line
``Error: ...`` and exit code 2. Subclasses also inherit the builtin that fits, so library callers can catch
``FileNotFoundError`` or ``ValueError`` without knowing fsd's names. The library never imports click.
It lives in ``featstore`` because ``distill`` depends on ``featstore`` and never the other way round.
"""

from __future__ import annotations

import errno

ENVIRONMENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
)
"""OSErrors the machine causes, not fsd (disk full, quota, a file-size limit, read-only or forbidden folder, I/O
error): each is one ``Error:`` line (exit 2) on every path; any other OSError stays a bug report with its
traceback."""


class FsdError(Exception):
    """Root of every error fsd raises on purpose; the message is what the user reads."""


def suggest(error: FsdError, option: str, advice: str) -> FsdError:
    """Attach ``advice`` that names the command-line ``option`` to ``error`` and return it.

    Why not in the message: the library is called by commands that have the option and by ones that do not
    (a bad image stops ``extract-teacher``, which has ``--skip-bad-samples``, and ``train-student``, which does
    not). The CLI appends the advice only when the running command has ``option``; Python callers never see
    flag names that mean nothing to them.

    Args:
        error: the error to annotate (its message stays as it is).
        option: the command-line option the advice names, e.g. ``--skip-bad-samples``.
        advice: the sentence the CLI appends when the running command has ``option``.

    Returns:
        ``error`` itself, so a caller can ``raise suggest(...)``.
    """
    error.suggestion = (option, advice)  # type: ignore[attr-defined]
    return error


class InvalidInput(FsdError, ValueError):
    """A value, option or file content that fsd cannot use."""


class InputNotFound(FsdError, FileNotFoundError):
    """A path the user named does not exist."""


class OutputExists(FsdError, FileExistsError):
    """An output path exists and the user did not ask to overwrite it."""


class StoreError(FsdError, ValueError):
    """A feature store that is not a store, is incomplete, or does not belong to the given inputs."""


class StoreDamaged(StoreError):
    """A store whose metadata, arrays or chunks fail the integrity checks; ``problems`` lists every finding.

    Args:
        message: the one line the user reads.
        problems: every finding of the check; ``[message]`` when None.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [message])


class StoreLocked(StoreError):
    """Another live process holds the store's writer lock."""


class OutputLocked(FsdError, FileExistsError):
    """Another live process is writing the same training output."""


class Interrupted(FsdError, KeyboardInterrupt):
    """The user pressed Ctrl-C; the message says what is kept and how to continue. Exit code 130 (SIGINT).

    A KeyboardInterrupt too, so Python callers that stop on Ctrl-C keep doing so.
    """

    exit_code = 130


class WriteFailed(FsdError, OSError):
    """Writing an output fails for a reason of the machine's (disk full, read-only); the message says what is kept."""


class CheckpointError(FsdError, ValueError):
    """A checkpoint file that is missing, corrupt, unsafe (pickled code) or of the wrong kind."""


class UnknownName(FsdError, KeyError):
    """A name (model, loss, recipe, dataset) that is not registered; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TrainingDiverged(FsdError, ArithmeticError):
    """Training produced a non-finite loss or weight: the run stops rather than write a NaN model."""
