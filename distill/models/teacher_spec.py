"""Parsing of teacher specs' options: ``SCHEME:ARGUMENT?key=value&key=value``.

Kept apart so every teacher source (ONNX, timm, torchvision) parses its options the same strict way: an
unknown or repeated key, or a value of the wrong type, is an error naming the spec, never silently ignored.
"""

from __future__ import annotations

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


def floats(spec: str, key: str, value: str) -> tuple[float, ...]:
    """``127.5`` or ``123.7,116.3,103.5`` → a tuple of positive-or-any floats (one per channel or one for all)."""
    try:
        numbers = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise InvalidInput(f"teacher {spec!r}: option {key}={value!r} is not a number or a comma list") from None
    if len(numbers) not in (1, 3):
        raise InvalidInput(f"teacher {spec!r}: option {key} takes 1 or 3 values, got {len(numbers)}")
    return numbers


def positive_int(spec: str, key: str, value: str) -> int:
    if not value.isdigit() or int(value) <= 0:
        raise InvalidInput(f"teacher {spec!r}: option {key}={value!r} must be a positive integer")
    return int(value)


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
