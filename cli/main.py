"""The ``fsd`` command group. Commands live one per module; this file wires them and maps errors.

Error contract (DESIGN.md §3): an :class:`FsdError` — anything the user can fix — becomes one line
``Error: …`` on stderr and exit code 2, with no traceback; click's own usage errors also exit 2; anything
else is a bug and exits 1 with its traceback.
"""

from __future__ import annotations

import sys

import click

from featstore.errors import FsdError


class FsdGroup(click.Group):
    """A click group that turns FsdError into the one-line error contract."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FsdError as exc:
            message = " ".join(str(exc).split())  # one line, whatever the message held
            click.echo(f"Error: {message}", err=True)
            ctx.exit(2)


@click.group(cls=FsdGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="fsd", prog_name="fsd")
def cli() -> None:
    """fsd — embedding knowledge distillation with a precomputed teacher feature store.

    \b
    Typical run:
      fsd train-teacher   --dataset digits --out teacher.pt
      fsd extract-teacher --teacher teacher.pt --dataset digits --out store.zarr --views 2
      fsd train-student   --store store.zarr --dataset digits --out student.pt --recipe th-kd
      fsd eval --faiss    --model student.pt --dataset digits --split test --out report.json
    """


def _register() -> None:
    from cli import cmd_compare, cmd_demo, cmd_eval, cmd_extract, cmd_store, cmd_train_student, cmd_train_teacher

    for module in (cmd_train_teacher, cmd_extract, cmd_train_student, cmd_eval, cmd_compare, cmd_store, cmd_demo):
        cli.add_command(module.command)


_register()


def main() -> None:
    cli(prog_name="fsd")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
