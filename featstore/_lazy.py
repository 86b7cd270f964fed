"""Lazy public names for a package ``__init__``.

``import featstore`` (or ``distill``) stays cheap: a name's module (torch, zarr, faiss behind it) is imported the first
time the name is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, table: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """(``__getattr__``, ``__dir__``) for ``package``, whose public ``name`` lives in module ``table[name]``."""

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:
        return sorted(table)

    return __getattr__, __dir__
