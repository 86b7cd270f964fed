"""The ``fsd`` command group. Commands live one per module; this file wires them and maps errors.

Error contract (docs/cli.md): an :class:`FsdError` — anything the user can fix — becomes one line
``Error: …`` on stderr and exit code 2, with no traceback; click's own usage errors also exit 2; anything
else is a bug and exits 1 with its traceback.
"""

from __future__ import annotations

import importlib
import sys
import warnings

import click
from click.shell_completion import CompletionItem

from cli.types import finite_floats
from featstore.errors import ENVIRONMENT_ERRNOS, FsdError
from featstore.memory import bound_heap_growth

COMMAND_MODULES: dict[str, str] = {
    "train-teacher": "cli.cmd_train_teacher",
    "extract-teacher": "cli.cmd_extract",
    "train-student": "cli.cmd_train_student",
    "eval": "cli.cmd_eval",
    "embed": "cli.cmd_embed",
    "export": "cli.cmd_export",
    "compare": "cli.cmd_compare",
    "store": "cli.cmd_store",
    "demo": "cli.cmd_demo",
}
"""Command name → the module whose ``command`` implements it, in the order ``fsd --help`` lists them.

Why lazy: the command modules import torch, zarr and faiss, which takes seconds; ``fsd --help``, ``fsd --version`` and
``fsd COMMAND --help`` import at most one of them.
"""

DEFAULT_THREADS = 4
"""Default cap on torch/FAISS threads: about what the small CPU models still gain from (``--threads`` overrides)."""

MAX_THREADS = 1024
"""Upper bound of ``--threads``: OpenMP starts every thread asked for, each with its own stack, and a request
in the tens of thousands kills the process (SIGSEGV) inside torch; no CPU fsd runs on has more cores."""

COMMAND_SUMMARIES: dict[str, str] = {
    "train-teacher": "Train a teacher (CE or a margin head) on a dataset split.",
    "extract-teacher": "Run the teacher once; write its embeddings to a store.",
    "train-student": "Distil a student from a store (or an online teacher).",
    "eval": "Classification, retrieval, verification, cross-model.",
    "embed": "Embed face images (aligned by landmarks) to HDF5.",
    "export": "Export a network to ONNX/TorchScript, checked.",
    "compare": "Eval reports side by side, with deltas.",
    "store": "Inspect, verify, export and import feature stores.",
    "demo": "The whole pipeline on digits, in one work folder.",
}
"""One line per command for ``fsd --help`` and shell completion (listing them must not import them); also set
as each command's ``short_help`` when it is loaded, so every place shows the same line."""


class FsdGroup(click.Group):
    """The ``fsd`` group: commands imported on first use, and FsdError turned into the one-line error contract."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """The command names, from the table (no command module is imported)."""
        return list(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Import the command ``cmd_name`` on first use, with its float checks, leaf record and summary."""
        module = COMMAND_MODULES.get(cmd_name)
        if module is None:
            return None
        command = record_leaf(finite_floats(importlib.import_module(module).command))
        command.short_help = COMMAND_SUMMARIES[cmd_name]  # one summary, wherever it is shown
        return command

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        """Complete command names from the table, then the group's own options.

        Completing ``fsd <TAB>`` must not import every command.
        """
        names = [CompletionItem(n, help=COMMAND_SUMMARIES[n]) for n in COMMAND_MODULES if n.startswith(incomplete)]
        return names + click.Command.shell_complete(self, ctx, incomplete)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List the commands in ``fsd --help`` with their summaries, importing none of them."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMAND_SUMMARIES[name]) for name in COMMAND_MODULES])

    def invoke(self, ctx: click.Context):
        """Run the command, turning what the user can fix into one ``Error: …`` line.

        An :class:`FsdError` exits with its code (2) and, when the failing command has the option it names, its
        advice; Ctrl-C exits 130; an environment ``OSError`` (a full disk, no permission) exits 2. Warnings print
        as one line each while the command runs.
        """
        previous_format = warnings.formatwarning
        warnings.formatwarning = format_warning  # restored below: an in-process caller keeps its own
        try:
            return super().invoke(ctx)
        except FsdError as exc:
            message = " ".join(str(exc).split())  # one line, whatever the message held
            option, advice = getattr(exc, "suggestion", (None, ""))
            if option is not None and _has_option(ctx.meta.get(LEAF), option):
                message = f"{message} ({advice})"
            click.echo(f"Error: {message}", err=True)
            ctx.exit(getattr(exc, "exit_code", 2))
        except KeyboardInterrupt:  # where no command said more (what was kept, how to resume)
            click.echo("Error: interrupted (Ctrl-C); nothing was finished", err=True)
            ctx.exit(130)
        except OSError as exc:
            if exc.errno not in ENVIRONMENT_ERRNOS:
                raise
            where = f" ({exc.filename})" if exc.filename else ""
            click.echo(
                f"Error: {exc.strerror or exc}{where}; finished outputs are kept — free space or fix the folder's "
                "permissions and re-run the same command",
                err=True,
            )
            ctx.exit(2)
        finally:
            warnings.formatwarning = previous_format


LEAF = "fsd.command"
"""``ctx.meta`` key (shared by every context of one invocation) of the command that runs: the innermost one."""


def record_leaf(command: click.Command) -> click.Command:
    """Make ``command`` (and its subcommands) record itself in ``ctx.meta`` when invoked.

    An error's advice is then checked against the options of the command that actually ran
    (``featstore.errors.suggest``). Idempotent: the group looks commands up on every invocation, and one
    wrapper is enough.
    """
    if getattr(command, "_fsd_records_leaf", False):
        return command
    command._fsd_records_leaf = True  # type: ignore[attr-defined]
    original = command.invoke

    def invoke(ctx: click.Context):
        ctx.meta[LEAF] = ctx.command
        return original(ctx)

    command.invoke = invoke  # type: ignore[method-assign]
    for sub in getattr(command, "commands", {}).values():
        record_leaf(sub)
    return command


def _has_option(command: click.Command | None, option: str) -> bool:
    return command is not None and any(option in getattr(p, "opts", ()) for p in command.params)


def format_warning(message, category, filename, lineno, line=None) -> str:
    """Python's ``warnings.formatwarning`` for fsd commands: one line ``Warning: …``.

    Why: the default prints the warning's source file, line number and source line — noise to a user (a
    skipped sample, a stale lock, zarr's leftover ``.partial`` file), and two lines where one says it. The
    format hook, not ``showwarning``, so that a caller recording warnings (``catch_warnings(record=True)``)
    still receives them.
    """
    return "Warning: " + " ".join(str(message).split()) + "\n"


@click.group(cls=FsdGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="fsd", prog_name="fsd")
@click.option(
    "--threads",
    type=click.IntRange(min=1, max=MAX_THREADS),
    default=None,
    envvar="FSD_THREADS",
    show_envvar=True,
    help=f"CPU threads for torch and FAISS (default: at most {DEFAULT_THREADS}, never more than torch's own default).",
)
def cli(threads: int | None) -> None:
    """Fsd — embedding knowledge distillation with a precomputed teacher feature store.

    \b
    Typical run:
      fsd train-teacher   --dataset digits --out teacher.pt
      fsd extract-teacher --teacher teacher.pt --dataset digits --out store.zarr --views 2
      fsd train-student   --store store.zarr --dataset digits --out student.pt --recipe th-kd
      fsd eval --faiss    --model student.pt --dataset digits --split test --out report.json
    """
    set_threads(threads)


def set_threads(threads: int | None) -> None:
    """``threads`` for torch and FAISS when given; else cap them at DEFAULT_THREADS (never raise them).

    Why a cap: torch starts one thread per core, and on a loaded machine those threads compete with every other
    process — measured 4-16× slower than one thread on a shared 2-core box with the small models fsd trains on
    CPU. Libraries only count when the command imported them (``fsd compare`` never loads torch).
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads or min(torch.get_num_threads(), DEFAULT_THREADS))
    faiss = sys.modules.get("faiss")
    if faiss is not None:
        faiss.omp_set_num_threads(threads or min(faiss.omp_get_max_threads(), DEFAULT_THREADS))


def main() -> None:
    """The ``fsd`` process: the allocator setting belongs to the process that owns it (featstore/memory.py)."""
    bound_heap_growth()
    cli(prog_name="fsd")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
