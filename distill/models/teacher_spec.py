"""Parsing of teacher specs' options: ``SCHEME:ARGUMENT?key=value&key=value``.

Kept apart so every teacher source (ONNX, timm, torchvision) parses its options the same strict way: an
unknown or repeated key, or a value of the wrong type, is an error naming the spec, never silently ignored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from featstore.errors import InvalidInput


def split_options(argument: str) -> tuple[str, dict[str, str]]:
    """``PATH?a=1&b=2`` → (``PATH``, {a: 1, b: 2}); the last ``?`` starts the options."""
    if "?" not in argument:
        return argument, {}
    base, _, query = argument.rpartition("?")
    options: dict[str, str] = {}
    for part in query.split("&") if query else []:
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise InvalidInput(f"teacher option {part!r} is not key=value")
        if key in options:
            raise InvalidInput(f"teacher option {key!r} is given twice")
        options[key] = value
    return base, options


def check_known(spec: str, options: dict[str, str], known: Iterable[str]) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise InvalidInput(
            f"teacher {spec!r}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
        )


def floats(spec: str, key: str, value: str, *, positive: bool = False) -> tuple[float, ...]:
    """``127.5`` or ``123.7,116.3,103.5`` → a tuple of finite floats (one per channel or one for all);
    ``positive`` refuses zero and negative values (a standard deviation divides)."""
    try:
        numbers = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise InvalidInput(f"teacher {spec!r}: option {key}={value!r} is not a number or a comma list") from None
    if len(numbers) not in (1, 3):
        raise InvalidInput(f"teacher {spec!r}: option {key} takes 1 or 3 values, got {len(numbers)}")
    if not all(math.isfinite(v) for v in numbers):
        raise InvalidInput(f"teacher {spec!r}: option {key}={value!r} must be finite numbers")
    if positive and not all(v > 0 for v in numbers):
        raise InvalidInput(f"teacher {spec!r}: option {key}={value!r} must be positive (it divides the pixels)")
    return numbers


def positive_int(spec: str, key: str, value: str, *, at_most: int | None = None) -> int:
    """A positive decimal integer (ASCII digits only), at most ``at_most`` when given."""
    if not re.fullmatch(r"[0-9]{1,12}", value) or int(value) <= 0:
        raise InvalidInput(f"teacher {spec!r}: option {key}={value!r} must be a positive integer")
    if at_most is not None and int(value) > at_most:
        raise InvalidInput(f"teacher {spec!r}: option {key}={value} exceeds the bound of {at_most}")
    return int(value)


def size_pair(spec: str, key: str, value: str, *, at_most: int) -> tuple[int, int]:
    """``S`` (square) or ``H,W`` → (height, width), each a positive integer of at most ``at_most``."""
    parts = value.split(",")
    if len(parts) not in (1, 2):
        raise InvalidInput(f"teacher {spec!r}: option {key}={value!r} must be S or H,W (positive integers)")
    sides = [positive_int(spec, key, part, at_most=at_most) for part in parts]
    return (sides[0], sides[-1])


def choice(spec: str, key: str, value: str, allowed: Iterable[str]) -> str:
    """``value`` when it is one of ``allowed``, else an error listing them."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise InvalidInput(f"teacher {spec!r}: {key} must be {' or '.join(allowed)}, got {value!r}")
    return value


def flag(spec: str, key: str, value: str) -> bool:
    if value not in ("0", "1", "true", "false"):
        raise InvalidInput(f"teacher {spec!r}: option {key}={value!r} must be 0/1")
    return value in ("1", "true")


def canonical(options: dict[str, Any]) -> str:
    """A stable text of the options, hashed into the teacher's identity (they change its outputs)."""
    return "&".join(f"{k}={options[k]}" for k in sorted(options))


def library_value(text: str) -> Any:
    """A query value as a library keyword argument: ``true``/``false`` → bool, ``none`` → None, a number → int
    or float, a comma list → a tuple of those (``img_size=64,96``), anything else stays text."""
    if "," in text:
        return tuple(library_value(part) for part in text.split(","))
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def library_kwargs(options: dict[str, str], reserved: Iterable[str]) -> dict[str, Any]:
    """The options fsd does not read itself, parsed for the library's model factory (``timm:NAME?img_size=64``
    → ``create_model(NAME, img_size=64)``); the factory refuses the ones the model does not take."""
    return {k: library_value(v) for k, v in options.items() if k not in set(reserved)}
