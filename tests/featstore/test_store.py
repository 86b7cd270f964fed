"""Tests for featstore.store: create / write / read per dtype, progress flags and completion, refusals of
things that are not (complete) stores, chunk sizing, URL stores (memory://, file://), info and removal."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr

from featstore import codecs
from featstore.errors import InputNotFound, OutputExists, StoreError
from featstore.store import (
    FORMAT_VERSION,
    MIN_CHUNKS_FOR_SHUFFLE,
    TARGET_CHUNK_BYTES,
    StoreShape,
    create_store,
    default_chunk_rows,
    open_store,
    remove_store,
    store_exists,
)

N, V, D, P, C = 23, 3, 8, 5, 4
CHUNK = 5  # 5 chunks, the last one short (3 rows)
META = {
    "teacher": {"arch": "t", "checkpoint_sha256": "a" * 64, "embedding_dim": D, "input_shape": [1, 8, 8]},
    "head": {"type": "linear", "num_classes": C, "scale": None, "margin": None},
    "dataset": {"spec": "digits", "split": "train", "num_samples": N, "fingerprint": "f" * 64},
    "views": {"count": V, "kind": "shift", "params_names": ["top", "left", "height", "width", "flip"], "seed": 0},
}


def data(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "embeddings": rng.standard_normal((N, V, D)).astype(np.float32),
        "views": rng.integers(0, 10, size=(N, V, P)).astype(np.float32),
        "labels": rng.integers(-1, C, size=N).astype(np.int64),
        "weight": rng.standard_normal((C, D)).astype(np.float32),
        "bias": rng.standard_normal(C).astype(np.float32),
    }


def new_store(url, d: dict[str, np.ndarray], dtype: str = "float16", bias: bool = True, chunk_rows: int = CHUNK):
    return create_store(
        url,
        shape=StoreShape(N, V, D, P, C),
        dtype=dtype,
        chunk_rows=chunk_rows,
        labels=d["labels"],
        head_weight=d["weight"],
        head_bias=d["bias"] if bias else None,
        meta=META,
    )


def fill(store, d: dict[str, np.ndarray], chunks=None) -> None:
    for k in range(store.num_chunks) if chunks is None else chunks:
        a, b = store.chunk_bounds(k)
        store.write_chunk(k, d["embeddings"][a:b], d["views"][a:b])


def tolerance(dtype: str, x: np.ndarray) -> np.ndarray:
    if dtype == "float32":
        return np.zeros_like(x)
    if dtype == "float16":
        return np.abs(x) * 2.0**-11 + 1e-7
    if dtype == "bfloat16":
        return np.abs(x) * 2.0**-8 + 1e-30
    return np.broadcast_to(np.abs(x).max(-1, keepdims=True) / 127 / 2 * (1 + 1e-5), x.shape)


@pytest.mark.parametrize("dtype", codecs.DTYPES)
def test_round_trip_per_dtype(tmp_path: Path, dtype: str) -> None:
    d = data()
    store = new_store(tmp_path / "s.zarr", d, dtype=dtype)
    assert store.num_chunks == math.ceil(N / CHUNK) == 5
    assert store.chunk_bounds(4) == (20, 23)
    fill(store, d)
    store.mark_complete()

    opened = open_store(tmp_path / "s.zarr")
    assert opened.dtype == dtype and opened.chunk_rows == CHUNK and opened.complete
    assert opened.shape == StoreShape(N, V, D, P, C)
    emb, labels, views = opened.read_rows(0, N)
    assert emb.dtype == np.float32 and emb.shape == (N, V, D)
    assert np.all(np.abs(emb - d["embeddings"]) <= tolerance(dtype, d["embeddings"]))
    if dtype == "float32":
        np.testing.assert_array_equal(emb, d["embeddings"])
    np.testing.assert_array_equal(labels, d["labels"])
    np.testing.assert_array_equal(views, d["views"])
    # Chunk reads agree with row reads, and partial row ranges across chunk borders work.
    for k in range(opened.num_chunks):
        a, b = opened.chunk_bounds(k)
        ce, cl, cv = opened.read_chunk(k)
        np.testing.assert_array_equal(ce, emb[a:b])
        np.testing.assert_array_equal(cl, labels[a:b])
        np.testing.assert_array_equal(cv, views[a:b])
    np.testing.assert_array_equal(opened.read_rows(3, 12)[0], emb[3:12])

    # The raw arrays use the storage dtype of docs/store.md.
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert group["embeddings"].dtype == np.dtype(codecs.STORAGE_DTYPE[dtype])
    assert group["embeddings"].chunks == (CHUNK, V, D)
    assert group["labels"].dtype == np.int64 and group["views"].dtype == np.float32
    assert ("scales" in group) == (dtype == "int8")
    if dtype == "int8":
        assert group["scales"].shape == (N, V) and group["scales"].dtype == np.float32
    assert group["progress/done"].shape == (5,) and group["progress/done"].chunks == (1,)


def test_labels_head_and_attributes(tmp_path: Path) -> None:
    d = data(1)
    store = new_store(tmp_path / "s", d)
    np.testing.assert_array_equal(store.labels(), d["labels"])
    np.testing.assert_array_equal(store.head_weight(), d["weight"])
    np.testing.assert_array_equal(store.head_bias(), d["bias"])
    fill(store, d)
    store.mark_complete()
    opened = open_store(tmp_path / "s")
    np.testing.assert_array_equal(opened.labels(), d["labels"])
    assert opened.labels().dtype == np.int64
    np.testing.assert_array_equal(opened.head_weight(), d["weight"])
    np.testing.assert_array_equal(opened.head_bias(), d["bias"])
    attrs = zarr.open_group(str(tmp_path / "s"), mode="r").attrs["fsd"]
    assert attrs["format"] == FORMAT_VERSION == 2
    assert attrs["complete"] is True
    assert attrs["dtype"] == "float16" and attrs["chunk_rows"] == CHUNK
    for key in ("teacher", "head", "dataset", "views"):
        assert attrs[key] == META[key]
    assert "created" in attrs and "fsd_version" in attrs


def test_no_bias(tmp_path: Path) -> None:
    d = data()
    store = new_store(tmp_path / "s", d, bias=False)
    assert store.head_bias() is None
    fill(store, d)
    store.mark_complete()
    assert open_store(tmp_path / "s").head_bias() is None


def test_done_flags_and_completion(tmp_path: Path) -> None:
    d = data()
    store = new_store(tmp_path / "s", d)
    assert not store.complete
    np.testing.assert_array_equal(store.done_chunks(), [False] * 5)
    assert store.missing_chunks() == [0, 1, 2, 3, 4]
    fill(store, d, chunks=[3, 0])
    np.testing.assert_array_equal(store.done_chunks(), [True, False, False, True, False])
    assert store.missing_chunks() == [1, 2, 4]
    with pytest.raises(StoreError, match=r"\[1, 2, 4\]"):
        store.mark_complete()
    assert not store.complete

    # Incomplete stores are refused by default, opened on request.
    with pytest.raises(StoreError, match="incomplete"):
        open_store(tmp_path / "s")
    partial = open_store(tmp_path / "s", require_complete=False, writable=True)
    assert not partial.complete and partial.missing_chunks() == [1, 2, 4]
    fill(partial, d, chunks=[1, 2, 4])
    partial.mark_complete()
    assert partial.complete
    reopened = open_store(tmp_path / "s")
    assert reopened.complete and reopened.missing_chunks() == []
    assert open_store(str(tmp_path / "s")).complete  # str and Path both accepted


def test_write_chunk_rejects_wrong_shape(tmp_path: Path) -> None:
    d = data()
    store = new_store(tmp_path / "s", d)
    with pytest.raises(StoreError, match=r"chunk 4: embeddings \(5, 3, 8\), expected \(3, 3, 8\)"):
        store.write_chunk(4, d["embeddings"][:5], d["views"][:5])  # last chunk has 3 rows
    assert not store.done_chunks()[4]


def test_missing_path_is_input_not_found(tmp_path: Path) -> None:
    with pytest.raises(InputNotFound, match="does not exist"):
        open_store(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):  # the builtin it inherits
        open_store(f"file://{tmp_path}/nope")
    with pytest.raises(InputNotFound, match="does not exist"):
        remove_store(str(tmp_path / "nope"))


def test_plain_directory_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "precious.txt").write_text("keep me")
    with pytest.raises(StoreError, match="is not a Zarr feature store"):
        open_store(tmp_path / "dir")
    with pytest.raises(StoreError, match="is not a Zarr feature store"):
        open_store(tmp_path / "dir", require_complete=False)
    with pytest.raises(StoreError, match="is not a Zarr feature store"):
        remove_store(str(tmp_path / "dir"))
    assert (tmp_path / "dir" / "precious.txt").read_text() == "keep me"
    # A plain file is not a store either.
    (tmp_path / "file.zarr").write_text("x")
    with pytest.raises(StoreError, match="is not a Zarr feature store"):
        open_store(tmp_path / "file.zarr")


def test_zarr_group_without_fsd_attrs(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "g"), mode="w")
    group.create_array("embeddings", shape=(2, 1, 3), dtype="float32")
    with pytest.raises(StoreError, match="fsd"):
        open_store(tmp_path / "g", require_complete=False)
    with pytest.raises(StoreError, match="not an fsd feature store"):
        remove_store(str(tmp_path / "g"))
    assert (tmp_path / "g").exists()


def test_other_format_version_refused(tmp_path: Path) -> None:
    d = data()
    store = new_store(tmp_path / "s", d)
    fill(store, d)
    store.mark_complete()
    group = zarr.open_group(str(tmp_path / "s"), mode="r+")
    attrs = dict(group.attrs["fsd"])
    attrs["format"] = 3
    group.attrs["fsd"] = attrs
    with pytest.raises(StoreError, match="format"):
        open_store(tmp_path / "s")


def test_create_on_existing_path_is_output_exists(tmp_path: Path) -> None:
    d = data()
    new_store(tmp_path / "s", d)
    with pytest.raises(OutputExists, match="already exists"):
        new_store(tmp_path / "s", d)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="already exists"):
        new_store(tmp_path / "dir", d)
    assert (tmp_path / "dir" / "precious.txt").read_text() == "keep me"


def test_create_rejects_unknown_dtype_and_empty_dims(tmp_path: Path) -> None:
    from featstore.errors import InvalidInput

    d = data()
    with pytest.raises(InvalidInput, match="unknown store dtype 'float64'"):
        new_store(tmp_path / "a", d, dtype="float64")
    with pytest.raises(StoreError, match="store dimensions must be positive"):
        new_store(tmp_path / "b", d, chunk_rows=0)
    assert not (tmp_path / "a").exists()


def test_default_chunk_rows_big_n_targets_a_few_mb() -> None:
    for n, v, dim, dtype in ((2_000_000, 4, 512, "float16"), (500_000, 1, 768, "float32"), (1_000_000, 8, 128, "int8")):
        rows = default_chunk_rows(n, v, dim, dtype)
        chunk_bytes = rows * v * dim * np.dtype(codecs.STORAGE_DTYPE[dtype]).itemsize
        assert TARGET_CHUNK_BYTES / 2 < chunk_bytes <= TARGET_CHUNK_BYTES
        assert math.ceil(n / rows) >= MIN_CHUNKS_FOR_SHUFFLE
    # A single row bigger than the target still gets one row per chunk.
    assert default_chunk_rows(100, 64, 100_000, "float32") == 1


def test_default_chunk_rows_tiny_n() -> None:
    for n in (1, 5, 15, 16):
        assert default_chunk_rows(n, 2, 16, "float16") == 1


@pytest.mark.parametrize("n", [17, 50, 100])
def test_default_chunk_rows_at_least_16_chunks(n: int) -> None:
    rows = default_chunk_rows(n, 2, 16, "float16")
    assert math.ceil(n / rows) >= MIN_CHUNKS_FOR_SHUFFLE


def test_default_chunk_rows_rule_holds_when_divisible() -> None:
    for n in (32, 160, 1600):
        rows = default_chunk_rows(n, 2, 16, "float16")
        assert rows == n // 16 and math.ceil(n / rows) == 16


def test_memory_url_round_trip() -> None:
    url = f"memory://fsd-test-{uuid.uuid4().hex}"
    assert not store_exists(url)
    d = data(2)
    store = new_store(url, d, dtype="bfloat16")
    assert store_exists(url)
    fill(store, d)
    store.mark_complete()
    opened = open_store(url)
    emb, labels, views = opened.read_rows(0, N)
    assert np.all(np.abs(emb - d["embeddings"]) <= tolerance("bfloat16", d["embeddings"]))
    np.testing.assert_array_equal(labels, d["labels"])
    np.testing.assert_array_equal(views, d["views"])
    np.testing.assert_array_equal(opened.head_bias(), d["bias"])
    with pytest.raises(OutputExists, match="already exists"):
        new_store(url, d)
    remove_store(url)
    with pytest.raises(StoreError, match="is not a Zarr feature store"):
        open_store(url)


def test_memory_url_removed_store_no_longer_exists() -> None:
    url = f"memory://fsd-test-{uuid.uuid4().hex}"
    d = data()
    store = new_store(url, d)
    fill(store, d)
    store.mark_complete()
    remove_store(url)
    assert not store_exists(url)
    new_store(url, d)  # must be creatable again


def test_memory_url_missing_is_store_error() -> None:
    with pytest.raises(StoreError, match="is not a Zarr feature store"):
        open_store(f"memory://fsd-test-missing-{uuid.uuid4().hex}")


def test_file_url_round_trip(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/s.zarr"
    d = data(3)
    store = new_store(url, d, dtype="float32")
    fill(store, d)
    store.mark_complete()
    assert (tmp_path / "s.zarr" / "zarr.json").exists()  # written to the local directory the URL names
    opened = open_store(url)
    np.testing.assert_array_equal(opened.read_rows(0, N)[0], d["embeddings"])
    # The same store through its plain path.
    np.testing.assert_array_equal(open_store(tmp_path / "s.zarr").read_rows(0, N)[0], d["embeddings"])
    remove_store(url)
    assert not (tmp_path / "s.zarr").exists()


def test_info(tmp_path: Path) -> None:
    d = data()
    store = new_store(tmp_path / "s", d, dtype="int8")
    fill(store, d, chunks=[0, 1])
    info = store.info()
    expected_keys = {
        "url",
        "shape",
        "dtype",
        "chunk_rows",
        "chunks",
        "complete",
        "bytes_stored",
        "compression_ratio_vs_float32",
        "teacher",
        "head",
        "dataset",
        "views",
        "created",
        "fsd_version",
    }
    assert expected_keys <= set(info)
    assert info["shape"] == {"samples": N, "views": V, "dim": D, "classes": C}
    assert info["dtype"] == "int8" and info["chunk_rows"] == CHUNK
    assert info["chunks"] == {"total": 5, "done": 2}
    assert info["complete"] is False
    assert info["bytes_stored"] > 0
    assert info["teacher"] == META["teacher"] and info["dataset"] == META["dataset"]
    raw, stored = store.nbytes_embeddings()
    assert raw == N * V * D * 4 and stored > 0
    fill(store, d, chunks=[2, 3, 4])
    store.mark_complete()
    info = open_store(tmp_path / "s").info()
    assert info["complete"] is True and info["chunks"]["done"] == 5


def test_remove_store(tmp_path: Path) -> None:
    d = data()
    store = new_store(tmp_path / "s", d)
    fill(store, d, chunks=[0])  # an incomplete store can be removed too
    remove_store(str(tmp_path / "s"))
    assert not (tmp_path / "s").exists()
    assert not store_exists(str(tmp_path / "s"))


def test_failed_creation_leaves_nothing_behind(tmp_path: Path) -> None:
    """A local store appears whole (attributes written) or not at all: it is built under a hidden name and
    renamed into place, so a crash mid-creation never leaves a directory that resume and --overwrite refuse."""
    d = data()
    bad_meta = {**META, "teacher": {**META["teacher"], "arch": object()}}  # not JSON: fails after the arrays
    with pytest.raises(TypeError, match="not JSON serializable"):
        create_store(
            str(tmp_path / "s.zarr"),
            shape=StoreShape(N, V, D, P, C),
            dtype="float16",
            chunk_rows=CHUNK,
            labels=d["labels"],
            head_weight=d["weight"],
            head_bias=None,
            meta=bad_meta,
        )
    assert list(tmp_path.iterdir()) == []
    new_store(str(tmp_path / "s.zarr"), d)
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"] and store_exists(str(tmp_path / "s.zarr"))
