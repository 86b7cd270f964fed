"""Option types shared by every command; light (click only), so ``fsd --help`` imports nothing heavy."""

from __future__ import annotations

import math

import click


class FiniteFloat(click.ParamType):
    """A float option that refuses nan, inf and -inf (and keeps the range checks of a wrapped FloatRange).

    Why: click's float accepts "nan" and "inf", and a NaN learning rate or temperature trains an all-NaN
    model that reports success; every comparison with NaN is false, so range checks let it through too.

    Args:
        base: The float type wrapped (``click.FLOAT`` or a ``FloatRange``).
    """

    name = "float"

    def __init__(self, base: click.ParamType = click.FLOAT) -> None:
        self.base = base

    def convert(self, value, param, ctx):
        """The wrapped type's number, refused when it is not finite."""
        number = self.base.convert(value, param, ctx)
        if number is not None and not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number

    def __repr__(self) -> str:
        return f"FiniteFloat({self.base!r})"


SEED = click.IntRange(0, 2**32 - 1)
"""Seeds: numpy's SeedSequence refuses negative ones and torch overflows past 64 bits, deep inside a run."""


def finite_floats(command: click.Command) -> click.Command:
    """Make every float option of ``command`` a :class:`FiniteFloat`, and every integer ``--…seed`` a :data:`SEED`.

    Subcommands are included: one validator for every command, including ones added later with a plain
    ``type=float`` / ``type=int``.

    Args:
        command: A command or group, changed in place.

    Returns:
        ``command``.
    """
    for param in command.params:
        if isinstance(param.type, click.types.FloatParamType):
            param.type = FiniteFloat(param.type)
        elif param.name and param.name.endswith("seed") and param.type is click.INT:
            param.type = SEED
    for sub in getattr(command, "commands", {}).values():
        finite_floats(sub)
    return command
