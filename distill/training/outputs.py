"""What a training run may do to the files it writes.

One writer per output: a second run with the same ``--out`` is refused rather than silently replacing the
first model. The state an interrupted run left behind is never discarded: re-running after a kill without
``--resume`` (or ``--overwrite``) is refused rather than overwriting the resume state. The lock is the store's writer lock
(featstore/lock.py) on ``OUT.lock``; under torchrun only rank 0 writes, so only rank 0 locks.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from featstore.errors import ENVIRONMENT_ERRNOS, Interrupted, OutputExists, OutputLocked, WriteFailed
from featstore.lock import writer_lock

F = TypeVar("F", bound=Callable[..., Any])


def keep_resume_state(resume_path: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start over on top of an interrupted run's state unless the user asked for it."""
    if resume or overwrite or not resume_path.exists():
        return
    raise OutputExists(
        f"{resume_path} holds the state of an interrupted run{_progress(resume_path)}: pass --resume to "
        "continue it, or --overwrite to start over"
    )


def _progress(resume_path: Path) -> str:
    """' (epoch k done)' when the state file says so; nothing when it cannot be read."""
    try:
        state = torch.load(resume_path, map_location="cpu", weights_only=True)
        return f" ({int(state['epoch'])} epochs done)"
    except Exception:  # noqa: BLE001 - only decoration for the message
        return ""


def _first_missing_folder(out: Path) -> Path | None:
    """The outermost folder above ``out`` that does not exist yet (the lock creates it), or None."""
    missing = None
    for folder in out.absolute().parents:
        if folder.exists():
            break
        missing = folder
    return missing


def _remove_if_empty(folder: Path, up_to: Path | None) -> None:
    """Remove the folders the lock created when the run left nothing in them (a refused run changes nothing)."""
    if up_to is None:
        return
    folder = folder.absolute()
    while True:
        try:
            folder.rmdir()
        except OSError:  # not empty, or already gone
            return
        if folder == up_to:
            return
        folder = folder.parent


def output_locked(resume_path_for: Callable[[Path], Path] | None = None) -> Callable[[F], F]:
    """Decorate ``train(config)`` so that it runs holding ``config.out``'s lock.

    A Ctrl-C becomes one line saying how to continue (``--resume`` when ``resume_path_for(out)`` exists, else
    that nothing was kept).

    Args:
        resume_path_for: Maps an output to its resume file (None: the run keeps no resume state).

    Returns:
        The decorator.
    """

    def decorate(train: F) -> F:
        @functools.wraps(train)
        def locked(config: Any, *args: Any, **kwargs: Any) -> Any:
            out = Path(config.out)
            rank0 = os.environ.get("RANK", "0") == "0"
            made = _first_missing_folder(out)
            try:
                with writer_lock(out if rank0 else None, what="training output", error=OutputLocked):
                    return train(config, *args, **kwargs)
            except OSError as exc:
                if exc.errno not in ENVIRONMENT_ERRNOS:
                    raise
                state = resume_path_for(out) if resume_path_for is not None else None
                kept = (
                    f"the last complete epoch{_progress(state)} is kept in {state}: once fixed, run the same command "
                    "with --resume"
                    if state is not None and state.exists()
                    else "once fixed, run the same command again"
                )
                raise WriteFailed(f"writing {exc.filename or out} failed ({exc.strerror or exc}); {kept}") from None
            except KeyboardInterrupt:
                state = resume_path_for(out) if resume_path_for is not None else None
                if state is not None and state.exists():
                    raise Interrupted(
                        f"interrupted; the last complete epoch{_progress(state)} is kept in {state}: run the same "
                        "command with --resume to continue"
                    ) from None
                raise Interrupted(
                    f"interrupted before the first epoch finished; nothing was written to {out}"
                ) from None
            finally:
                _remove_if_empty(out.parent, made)

        return locked  # type: ignore[return-value]

    return decorate
