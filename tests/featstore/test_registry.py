"""Tests for featstore.registry and featstore.errors: duplicate names, unknown names, builtin bases."""

from __future__ import annotations

import pytest

from featstore.errors import (
    CheckpointError,
    FsdError,
    InputNotFound,
    InvalidInput,
    OutputExists,
    StoreError,
    StoreLocked,
    UnknownName,
)
from featstore.registry import Registry


def test_register_get_names() -> None:
    reg: Registry = Registry("widget")

    @reg.register("b")
    def make_b() -> str:
        return "b"

    @reg.register("a")
    class A:
        pass

    assert reg.get("b") is make_b and reg.get("a") is A
    assert reg.names() == ["a", "b"] and list(reg) == ["a", "b"]
    assert "a" in reg and "c" not in reg


def test_duplicate_registration_raises() -> None:
    reg: Registry = Registry("widget")
    reg.register("x")(object)
    with pytest.raises(ValueError, match="twice"):
        reg.register("x")(int)
    assert reg.get("x") is object


def test_unknown_name_lists_valid() -> None:
    reg: Registry = Registry("loss")
    reg.register("kd")(object)
    reg.register("ce")(object)
    with pytest.raises(UnknownName, match="unknown loss 'kde'") as info:
        reg.get("kde")
    assert str(info.value) == "unknown loss 'kde'; valid: ce, kd"
    assert isinstance(info.value, KeyError) and isinstance(info.value, FsdError)


@pytest.mark.parametrize(
    "cls,builtin",
    [
        (InvalidInput, ValueError),
        (InputNotFound, FileNotFoundError),
        (OutputExists, FileExistsError),
        (StoreError, ValueError),
        (StoreLocked, StoreError),
        (CheckpointError, ValueError),
        (UnknownName, KeyError),
    ],
)
def test_error_hierarchy(cls, builtin) -> None:
    assert issubclass(cls, FsdError) and issubclass(cls, builtin)
    assert str(cls("message")) == "message"
