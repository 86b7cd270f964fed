"""The one ``?key=value`` parser of every spec: typed, bounded getters, and one line for each mistake."""

from __future__ import annotations

import pytest

from featstore.errors import InvalidInput
from featstore.spec_query import SpecQuery

KEYS = ("size", "flip", "scale", "bgr", "layout", "name")


def parse(query: str) -> SpecQuery:
    return SpecQuery.parse(query, "x:DIR?" + query, KEYS, what="dataset spec")


def test_split_takes_the_last_question_mark_and_an_absent_query_gives_the_defaults() -> None:
    head, query = SpecQuery.split("a?b?size=8", "spec", KEYS)
    assert head == "a?b" and query.int("size", 1, low=1, high=10) == 8
    head, query = SpecQuery.split("plain", "spec", KEYS)
    assert head == "plain" and query.given() == {} and query.int("size", 32) == 32 and "size" not in query


def test_typed_getters_convert_and_bound() -> None:
    query = parse("size=64&flip=0.25&scale=0.08,1&bgr=yes&layout=nhwc&name=arc")
    assert query.int("size", None, low=1, high=2048) == 64
    assert query.float("flip", None, low=0, high=1) == 0.25
    assert query.floats("scale", None, count=2, low=0, high=1, ascending=True) == (0.08, 1.0)
    assert query.bool("bgr", False) is True
    assert query.choice("layout", "nchw", ("nchw", "nhwc")) == "nhwc"
    assert query.text("name", None) == "arc"


@pytest.mark.parametrize(
    ("query", "read", "match"),
    [
        ("", None, "nothing after '\\?'; options: size, flip"),
        ("size", None, "'size' is not key=value"),
        ("=3", None, "is not key=value"),
        ("colour=red", None, "unknown option 'colour'; valid: size, flip, scale, bgr, layout, name"),
        ("size=1&size=2", None, "'size' given twice"),
        ("size=big", lambda q: q.int("size", 1), "size must be an integer, got 'big'"),
        ("size=3.5", lambda q: q.int("size", 1), "size must be an integer"),
        ("size=999999", lambda q: q.int("size", 1, low=1, high=2048), r"size=999999 is out of range \[1, 2048\]"),
        ("size=0", lambda q: q.int("size", 1, low=1), "out of range"),
        ("flip=nan", lambda q: q.float("flip", 0.0), "finite number"),
        ("flip=inf", lambda q: q.float("flip", 0.0), "finite number"),
        ("flip=1e999", lambda q: q.float("flip", 0.0), "finite number"),
        ("flip=0x10", lambda q: q.float("flip", 0.0), "finite number"),
        ("flip=1.5", lambda q: q.float("flip", 0.0, low=0, high=1), "out of range"),
        ("scale=0.5", lambda q: q.floats("scale", None, count=2), "2 comma-separated numbers"),
        ("scale=1,0.5", lambda q: q.floats("scale", None, count=2, ascending=True), "must not decrease"),
        ("scale=1,2", lambda q: q.floats("scale", None, count=(1, 3)), "takes 1 or 3 comma-separated numbers"),
        ("scale=1,0", lambda q: q.floats("scale", None, count=2, positive=True), "scale=1,0 must be positive"),
        ("bgr=maybe", lambda q: q.bool("bgr", False), "bgr must be one of 1, true"),
        ("layout=nchwc", lambda q: q.choice("layout", None, ("nchw", "nhwc")), "layout must be one of nchw, nhwc"),
        ("name=", lambda q: q.text("name", None), "name is empty"),
    ],
)
def test_every_mistake_is_one_line_naming_the_spec(query, read, match) -> None:
    with pytest.raises(InvalidInput, match=match) as caught:
        parsed = parse(query)
        if read is not None:
            read(parsed)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"dataset spec 'x:DIR?{query}'")


def test_a_library_spec_keeps_the_keys_fsd_does_not_read_as_python_values() -> None:
    """``rest=True`` (timm:, torchvision:): the other keys go to the library's factory, typed; the canonical
    text of the options does not depend on their order."""
    text = "img_size=64,96&drop=0.1&flag=false&act=none&pool=avg&size=8"
    query = SpecQuery.parse(text, "timm:x?" + text, KEYS, what="teacher", rest=True)
    assert query.rest() == {"img_size": (64, 96), "drop": 0.1, "flag": False, "act": None, "pool": "avg"}
    assert query.int("size", None) == 8
    assert query.canonical() == "act=none&drop=0.1&flag=false&img_size=64,96&pool=avg&size=8"
    with pytest.raises(InvalidInput, match="options: size, flip, scale, bgr, layout, name, or the library's own"):
        SpecQuery.parse("", "timm:x?", KEYS, what="teacher", rest=True)
