"""The ``?key=value&key=value`` query of a spec string, parsed once and read through typed, bounded getters.

Dataset specs (``folder:DIR?size=64``, ``mxrec:DIR?size=112``, ``idx:DIR?limit=100``) and model specs
(``onnx:PATH?size=112&mean=127.5``, ``timm:NAME?img_size=64``, ``torchvision:NAME?weights=PATH``) take their
options this way.

Why one parser: every spec format takes options the same way, so every format refuses the same mistakes
the same way — an unknown key (the error lists the valid ones), a key given twice, an item that is not
``key=value``, a value that is not a number or lies outside its bounds — each as one :class:`InvalidInput`
line naming the spec. Bounds are part of every numeric getter, so a declared size (``?size=999999``) is
refused before anything is allocated for it. A model library's spec (``timm:``, ``torchvision:``) passes the
keys fsd does not read to the library's factory: parsed with ``rest=True`` those keys are kept, and
:meth:`SpecQuery.rest` gives them as Python values (the factory refuses the ones the model does not take).

Usage::

    head, query = SpecQuery.split("DIR?size=64&scale=0.08,1", spec, keys=("size", "scale"))
    size = query.int("size", 32, low=1, high=4096)
    scale = query.floats("scale", (0.35, 1.0), count=2, low=0.0, high=1.0)

The query starts after the *last* ``?`` (a directory may contain ``?``, a value never does).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, TypeVar

from featstore.errors import InvalidInput

_INTEGER = re.compile(r"[+-]?[0-9]{1,30}")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")
Number = TypeVar("Number", int, float)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class SpecQuery:
    """The options of one spec: ``{key: raw text}``, checked against the keys the format accepts.

    Every getter returns its default when the spec does not give the key, and raises :class:`InvalidInput`
    (naming the spec) when the value is malformed or out of bounds.

    Args:
        items: the raw ``{key: value}`` options.
        spec: the whole spec, named in every error.
        keys: the keys this format accepts.
        what: how errors name the spec (``"dataset spec"``, ``"teacher"``).
        rest: whether keys outside ``keys`` (a library's own options) are kept for :meth:`rest`.
    """

    def __init__(
        self, items: dict[str, str], spec: str, keys: Sequence[str], what: str = "spec", rest: bool = False
    ) -> None:
        self.items, self.spec, self.keys, self.what, self.open = dict(items), spec, tuple(keys), what, rest

    @classmethod
    def parse(cls, query: str, spec: str, keys: Sequence[str], what: str = "spec", rest: bool = False) -> SpecQuery:
        """Parse ``query`` (the text after ``?``); unknown, repeated or malformed items are refused.

        Args:
            query: ``key=value`` items joined by ``&``.
            spec: the whole spec, named in every error.
            keys: the keys this format accepts.
            what: how errors name the spec (``"dataset spec"``, ``"teacher"``).
            rest: keep keys outside ``keys`` (a library's own options, read by :meth:`rest`) instead of
                refusing them.

        Returns:
            The parsed query; its getters convert and bound each value.

        Raises:
            InvalidInput: the query is empty, or an item is unknown (without ``rest``), repeated or not
                ``key=value``.
        """
        self = cls({}, spec, keys, what, rest)
        if not query:
            raise self._error(f"nothing after '?'; options: {self._valid()}")
        for item in query.split("&"):
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise self._error(f"option {item!r} is not key=value")
            if key not in self.keys and not rest:
                raise self._error(f"unknown option {key!r}; valid: {self._valid()}")
            if key in self.items:
                raise self._error(f"option {key!r} given twice")
            self.items[key] = value
        return self

    @classmethod
    def split(
        cls, text: str, spec: str, keys: Sequence[str], what: str = "spec", rest: bool = False
    ) -> tuple[str, SpecQuery]:
        """Split ``text`` at its last ``?`` and parse the query after it.

        Args:
            text: a spec's body, e.g. ``DIR?size=64``.
            spec: the whole spec, named in every error.
            keys: the keys this format accepts.
            what: how errors name the spec.
            rest: keep keys outside ``keys`` (see :meth:`parse`).

        Returns:
            The part before the last ``?`` and its parsed query (an empty query when there is no ``?``).

        Raises:
            InvalidInput: the query is malformed (see :meth:`parse`).
        """
        if "?" not in text:
            return text, cls({}, spec, keys, what, rest)
        head, _, query = text.rpartition("?")
        return head, cls.parse(query, spec, keys, what, rest)

    def __contains__(self, key: str) -> bool:
        return key in self.items

    def given(self) -> dict[str, str]:
        """Return the raw ``{key: value}`` the spec gives (for a canonical, path-free name of the options)."""
        return dict(self.items)

    def canonical(self) -> str:
        """Return the given options as one stable text: sorted ``key=value`` items joined by ``&``.

        An identity hashed from it does not depend on the order the user wrote the options in.
        """
        return "&".join(f"{key}={self.items[key]}" for key in sorted(self.items))

    def rest(self) -> dict[str, Any]:
        """Return the given keys outside ``keys`` (kept by ``rest=True``) as the values a library's factory takes.

        Returns:
            ``{key: value}``: an integer, a finite number, ``true``/``false`` as a bool, ``none`` as None, a comma
            list as a tuple of those (``img_size=64,96``); any other text stays text.
        """
        return {key: _library_value(value) for key, value in self.items.items() if key not in self.keys}

    def int(self, key: str, default: int | None, *, low: int | None = None, high: int | None = None) -> int | None:
        """Read ``key`` as an integer within [low, high].

        Args:
            key: the option.
            default: returned when the spec does not give ``key``.
            low: the smallest value accepted (None: no bound).
            high: the largest value accepted (None: no bound).

        Returns:
            The integer, or ``default``.

        Raises:
            InvalidInput: the value is not an integer or lies outside [low, high].
        """
        if key not in self.items:
            return default
        value = self.items[key]
        if not _INTEGER.fullmatch(value):
            raise self._error(f"{key} must be an integer, got {value!r}")
        return self._bounded(key, int(value), low, high)

    def sides(
        self, key: str, default: tuple[int, int] | None, *, low: int | None = None, high: int | None = None
    ) -> tuple[int, int] | None:
        """Read ``key`` as an image size: ``S`` (a square) or ``H,W``, each an integer within [low, high].

        Args:
            key: the option.
            default: returned when the spec does not give ``key``.
            low: the smallest side accepted (None: no bound).
            high: the largest side accepted (None: no bound).

        Returns:
            ``(height, width)``, or ``default``.

        Raises:
            InvalidInput: the value is not ``S`` or ``H,W`` of integers, or a side lies outside [low, high].
        """
        if key not in self.items:
            return default
        parts = self.items[key].split(",")
        if len(parts) not in (1, 2) or not all(_INTEGER.fullmatch(p) for p in parts):
            raise self._error(f"{key} must be an integer S or H,W, got {self.items[key]!r}")
        height, width = (self._bounded(key, int(p), low, high) for p in (parts[0], parts[-1]))
        return (height, width)

    def float(
        self, key: str, default: float | None, *, low: float | None = None, high: float | None = None
    ) -> float | None:
        """Read ``key`` as a finite number within [low, high].

        Args:
            key: the option.
            default: returned when the spec does not give ``key``.
            low: the smallest value accepted (None: no bound).
            high: the largest value accepted (None: no bound).

        Returns:
            The number, or ``default``.

        Raises:
            InvalidInput: the value is not a finite number or lies outside [low, high].
        """
        if key not in self.items:
            return default
        return self._bounded(key, self._number(key, self.items[key]), low, high)

    def floats(
        self,
        key: str,
        default: tuple[float, ...] | None,
        *,
        count: int | tuple[int, ...],
        low: float | None = None,
        high: float | None = None,
        ascending: bool = False,
        positive: bool = False,
    ) -> tuple[float, ...] | None:
        """Read ``key`` as ``count`` comma-separated finite numbers within [low, high].

        Args:
            key: the option.
            default: returned when the spec does not give ``key``.
            count: how many numbers the value must hold (a tuple: one of these counts).
            low: the smallest value accepted (None: no bound).
            high: the largest value accepted (None: no bound).
            ascending: the numbers must not decrease (a range such as ``scale=0.08,1``).
            positive: every number must be above zero (a standard deviation divides).

        Returns:
            The numbers, or ``default``.

        Raises:
            InvalidInput: the count is wrong, a number is malformed, out of bounds or (``positive``) not above
                zero, or they decrease.
        """
        if key not in self.items:
            return default
        parts, counts = self.items[key].split(","), (count,) if isinstance(count, int) else count
        if len(parts) not in counts:
            told = " or ".join(str(c) for c in counts)
            raise self._error(f"{key} takes {told} comma-separated numbers, got {self.items[key]!r}")
        values = tuple(self._bounded(key, self._number(key, p), low, high) for p in parts)
        if positive and not all(v > 0 for v in values):
            raise self._error(f"{key}={self.items[key]} must be positive")
        if ascending and any(a > b for a, b in zip(values, values[1:])):
            raise self._error(f"{key}={self.items[key]}: the numbers must not decrease")
        return values

    def bool(self, key: str, default: bool | None) -> bool | None:
        """Read ``key`` as a flag (1/true/yes/on or 0/false/no/off).

        Args:
            key: the option.
            default: returned when the spec does not give ``key``.

        Returns:
            The flag, or ``default``.

        Raises:
            InvalidInput: the value is none of the accepted words.
        """
        if key not in self.items:
            return default
        value = self.items[key].lower()
        if value not in _TRUE + _FALSE:
            raise self._error(f"{key} must be one of {', '.join(_TRUE + _FALSE)}, got {self.items[key]!r}")
        return value in _TRUE

    def choice(self, key: str, default: str | None, choices: Sequence[str]) -> str | None:
        """Read ``key`` as one of ``choices``.

        Args:
            key: the option.
            default: returned when the spec does not give ``key``.
            choices: the values accepted.

        Returns:
            The value, or ``default``.

        Raises:
            InvalidInput: the value is not one of ``choices``.
        """
        if key not in self.items:
            return default
        if self.items[key] not in choices:
            raise self._error(f"{key} must be one of {', '.join(choices)}, got {self.items[key]!r}")
        return self.items[key]

    def text(self, key: str, default: str | None) -> str | None:
        """Read ``key`` as given.

        Args:
            key: the option.
            default: returned when the spec does not give ``key``.

        Returns:
            The text, or ``default``.

        Raises:
            InvalidInput: the value is empty.
        """
        if key not in self.items:
            return default
        if not self.items[key]:
            raise self._error(f"{key} is empty")
        return self.items[key]

    def _number(self, key: str, value: str) -> float:
        number = float(value) if _NUMBER.fullmatch(value) else math.nan
        if not math.isfinite(number):
            raise self._error(f"{key} must be a finite number, got {value!r}")
        return number

    def _bounded(self, key: str, value: Number, low: float | None, high: float | None) -> Number:
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"[{'-∞' if low is None else low}, {'∞' if high is None else high}]"
            raise self._error(f"{key}={self.items[key]} is out of range {bounds}")
        return value

    def _valid(self) -> str:
        valid = ", ".join(self.keys) if self.keys else "none"
        return f"{valid}, or the library's own" if self.open else valid

    def _error(self, message: str) -> InvalidInput:
        return InvalidInput(f"{self.what} {self.spec!r}: {message}")


def _library_value(text: str) -> Any:
    """One option's text as a library keyword's value (see :meth:`SpecQuery.rest`)."""
    if "," in text:
        return tuple(_library_value(part) for part in text.split(","))
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    if _INTEGER.fullmatch(text):
        return int(text)
    if _NUMBER.fullmatch(text) and math.isfinite(float(text)):
        return float(text)
    return text


__all__ = ["SpecQuery"]
