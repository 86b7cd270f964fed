"""Tests for featstore.extract on the real digits images with a seeded, untrained convnet teacher:
stored embeddings equal the teacher's outputs on the rendered views, views equal sample_views, resume
computes only missing chunks and is bit-identical, runs are deterministic, foreign stores are refused."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from featstore.errors import InvalidInput, StoreError
from featstore.extract import extract_teacher
from featstore.store import FeatureStore, open_store
from featstore.views import PARAM_NAMES, render_views, sample_views

V = 3
CHUNK = 16  # 120 rows -> 8 chunks, the last one 8 rows
SEED = 5


def run(teacher, dataset, url, **kw):
    kw = {"views": V, "dtype": "float32", "chunk_rows": CHUNK, "batch_size": 32, "seed": SEED, "progress": False, **kw}
    return extract_teacher(teacher, dataset, str(url), **kw)


def raw_arrays(path: Path | str) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    names = ["embeddings", "labels", "views", "progress/done", "head/weight"]
    names += [n for n in ("scales", "head/bias") if n in group]
    return {n: group[n][:] for n in names}


def assert_raw_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert np.array_equal(a[name], b[name]), name


@torch.no_grad()
def reference_embeddings(teacher, dataset, num_views: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Teacher forward_features on each rendered view, computed independently of the extractor."""
    rows = np.arange(len(dataset))
    params = sample_views(dataset.view_policy, seed, rows, num_views)
    images = dataset.get_images(rows)
    out = np.stack(
        [
            teacher.model.eval().forward_features(render_views(images, params[:, v], dataset.view_policy)).numpy()
            for v in range(num_views)
        ],
        axis=1,
    )
    return out, params


@pytest.fixture(scope="module")
def reference(teacher, small_digits):
    return reference_embeddings(teacher, small_digits, V, SEED)


@pytest.fixture(scope="module")
def float32_store(tmp_path_factory, teacher, small_digits) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("extract") / "f32.zarr"
    summary = run(teacher, small_digits, path)
    return path, summary


def test_float32_store_equals_teacher_outputs(float32_store, reference, small_digits, teacher) -> None:
    path, summary = float32_store
    assert summary.samples == 120 and summary.views == V and summary.dim == 16 and summary.dtype == "float32"
    assert summary.chunks_total == 8 and summary.chunks_computed == 8 and not summary.resumed
    assert summary.bytes_stored > 0 and summary.compression_ratio > 0
    assert "wrote" in summary.line()
    store = open_store(path)
    assert store.complete and store.missing_chunks() == []
    emb, labels, views = store.read_rows(0, 120)
    ref, params = reference
    assert emb.shape == (120, V, 16)
    np.testing.assert_allclose(emb, ref, rtol=1e-5, atol=1e-6)
    assert np.abs(emb).mean() > 1e-2  # a real signal, not zeros
    np.testing.assert_array_equal(views, params)
    np.testing.assert_array_equal(views[:, 0], np.tile([1, 1, 8, 8, 0], (120, 1)))  # view 0 = identity
    np.testing.assert_array_equal(labels, small_digits.labels)
    np.testing.assert_array_equal(store.head_weight(), teacher.head_weight)
    np.testing.assert_array_equal(store.head_bias(), teacher.head_bias)
    # Different views of a sample really differ (digits shift views move pixels).
    assert not np.allclose(emb[:, 0], emb[:, 1])


def test_attributes_record_provenance(float32_store, small_digits, teacher) -> None:
    meta = open_store(float32_store[0]).meta
    assert meta["format"] == 2 and meta["complete"] is True
    assert meta["teacher"] == {
        "arch": "convnet_teacher",
        "checkpoint_sha256": "x" * 64,
        "embedding_dim": 16,
        "input_shape": [1, 8, 8],
    }
    assert meta["head"]["type"] == "linear" and meta["head"]["num_classes"] == 10
    assert meta["dataset"] == {
        "spec": "digits",
        "split": "train",
        "num_samples": 120,
        "num_classes": 10,
        "fingerprint": small_digits.fingerprint(),
    }
    assert meta["views"]["count"] == V and meta["views"]["kind"] == "shift" and meta["views"]["seed"] == SEED
    assert meta["views"]["params_names"] == list(PARAM_NAMES)
    assert meta["dtype"] == "float32" and meta["chunk_rows"] == CHUNK


def test_float16_store_is_float32_rounded(tmp_path, float32_store, teacher, small_digits, reference) -> None:
    summary = run(teacher, small_digits, tmp_path / "f16", dtype="float16")
    assert summary.dtype == "float16"
    emb16 = open_store(tmp_path / "f16").read_rows(0, 120)[0]
    emb32 = open_store(float32_store[0]).read_rows(0, 120)[0]
    np.testing.assert_array_equal(emb16, emb32.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(emb16, reference[0], rtol=1e-3, atol=1e-4)
    assert raw_arrays(tmp_path / "f16")["embeddings"].dtype == np.float16


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_other_dtypes_close_to_float32(tmp_path, float32_store, teacher, small_digits, dtype) -> None:
    run(teacher, small_digits, tmp_path / dtype, dtype=dtype)
    emb = open_store(tmp_path / dtype).read_rows(0, 120)[0]
    emb32 = open_store(float32_store[0]).read_rows(0, 120)[0]
    if dtype == "bfloat16":
        np.testing.assert_array_equal(emb, torch.from_numpy(emb32).to(torch.bfloat16).float().numpy())
    else:
        bound = np.abs(emb32).max(-1, keepdims=True) / 127 / 2 * (1 + 1e-5)
        assert np.all(np.abs(emb - emb32) <= bound)


def test_default_chunk_rows_and_batch_size_do_not_change_values(tmp_path, float32_store, teacher, small_digits) -> None:
    summary = run(teacher, small_digits, tmp_path / "d", chunk_rows=None, batch_size=7)
    store = open_store(tmp_path / "d")
    assert summary.chunks_total == store.num_chunks >= 8
    np.testing.assert_allclose(
        store.read_rows(0, 120)[0], open_store(float32_store[0]).read_rows(0, 120)[0], rtol=1e-5, atol=1e-6
    )


def test_deterministic_two_runs_identical_bytes(tmp_path, float32_store, teacher, small_digits) -> None:
    run(teacher, small_digits, tmp_path / "again")
    assert_raw_equal(raw_arrays(tmp_path / "again"), raw_arrays(float32_store[0]))
    run(teacher, small_digits, tmp_path / "h1", dtype="float16")
    run(teacher, small_digits, tmp_path / "h2", dtype="float16")
    assert_raw_equal(raw_arrays(tmp_path / "h1"), raw_arrays(tmp_path / "h2"))


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_resume_after_crash_is_bit_identical(tmp_path, monkeypatch, teacher, small_digits, dtype) -> None:
    reference_path = tmp_path / "full"
    run(teacher, small_digits, reference_path, dtype=dtype)

    original = FeatureStore.write_chunk
    calls = {"n": 0}

    def crashing(self, chunk, embeddings, views):
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")
        calls["n"] += 1
        return original(self, chunk, embeddings, views)

    monkeypatch.setattr(FeatureStore, "write_chunk", crashing)
    with pytest.raises(KeyboardInterrupt, match="re-run the same command to resume"):
        run(teacher, small_digits, tmp_path / "crashed", dtype=dtype)
    monkeypatch.setattr(FeatureStore, "write_chunk", original)

    with pytest.raises(StoreError, match="incomplete"):
        open_store(tmp_path / "crashed")
    partial = open_store(tmp_path / "crashed", require_complete=False)
    assert int(partial.done_chunks().sum()) == 3

    computed: list[int] = []
    monkeypatch.setattr(
        FeatureStore, "write_chunk", lambda self, chunk, e, v: (computed.append(chunk), original(self, chunk, e, v))[1]
    )
    summary = run(teacher, small_digits, tmp_path / "crashed", dtype=dtype)
    assert summary.resumed and "resumed" in summary.line()
    assert summary.chunks_total == 8 and summary.chunks_computed == 5
    assert sorted(computed) == [3, 4, 5, 6, 7]
    assert open_store(tmp_path / "crashed").complete
    assert_raw_equal(raw_arrays(tmp_path / "crashed"), raw_arrays(reference_path))


def test_resume_recomputes_chunks_whose_flag_is_cleared(tmp_path, float32_store, teacher, small_digits) -> None:
    """A kill between writing rows and flagging them (or a torn chunk) leaves the flag False: recomputed."""
    path = tmp_path / "torn"
    run(teacher, small_digits, path)
    group = zarr.open_group(str(path), mode="r+")
    for chunk in (1, 7):
        group["progress/done"][chunk] = False
        start, stop = chunk * CHUNK, min((chunk + 1) * CHUNK, 120)
        group["embeddings"][start:stop] = 0
        group["views"][start:stop] = 0
    attrs = dict(group.attrs["fsd"])
    attrs["complete"] = False
    group.attrs["fsd"] = attrs

    summary = run(teacher, small_digits, path)
    assert summary.resumed and summary.chunks_computed == 2
    assert open_store(path).complete
    assert_raw_equal(raw_arrays(path), raw_arrays(float32_store[0]))


def test_rerun_of_complete_store_computes_nothing(tmp_path, teacher, small_digits) -> None:
    run(teacher, small_digits, tmp_path / "s")
    before = raw_arrays(tmp_path / "s")
    summary = run(teacher, small_digits, tmp_path / "s")
    assert summary.resumed and summary.chunks_computed == 0 and summary.chunks_total == 8
    assert_raw_equal(raw_arrays(tmp_path / "s"), before)


def test_foreign_store_refused_then_overwritten(tmp_path, teacher, make_teacher, small_digits, make_subset) -> None:
    path = tmp_path / "s"
    run(teacher, small_digits, path)
    before = raw_arrays(path)

    other = make_teacher(sha="y" * 64, seed=1)
    with pytest.raises(StoreError, match=r"different [a-z_, ]*\bteacher\b"):
        run(other, small_digits, path)
    with pytest.raises(StoreError, match=r"different [a-z_, ]*\bdataset\b"):
        run(teacher, make_subset(small_digits, 100), path)
    with pytest.raises(StoreError, match=r"different [a-z_, ]*\bviews\b"):
        run(teacher, small_digits, path, views=V + 1)
    with pytest.raises(StoreError, match=r"different [a-z_, ]*\bviews\b"):
        run(teacher, small_digits, path, seed=SEED + 1)
    with pytest.raises(StoreError, match=r"different [a-z_, ]*\bdtype\b"):
        run(teacher, small_digits, path, dtype="float16")
    with pytest.raises(StoreError, match=r"different [a-z_, ]*\bchunk_rows\b"):
        run(teacher, small_digits, path, chunk_rows=CHUNK * 2)
    # Refusal never touches the existing store.
    assert_raw_equal(raw_arrays(path), before)
    assert open_store(path).meta["teacher"]["checkpoint_sha256"] == "x" * 64

    summary = run(other, small_digits, path, overwrite=True, views=2)
    assert not summary.resumed and summary.chunks_computed == summary.chunks_total == 8
    store = open_store(path)
    assert store.meta["teacher"]["checkpoint_sha256"] == "y" * 64
    assert store.shape.num_views == 2
    ref, _ = reference_embeddings(other, small_digits, 2, SEED)
    np.testing.assert_allclose(store.read_rows(0, 120)[0], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(store.head_weight(), other.head_weight)


def test_overwrite_refuses_a_non_store_directory(tmp_path, teacher, small_digits) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "precious.txt").write_text("keep me")
    with pytest.raises(StoreError, match="is not a Zarr feature store"):
        run(teacher, small_digits, tmp_path / "dir", overwrite=True)
    with pytest.raises(StoreError, match="is not a Zarr feature store"):
        run(teacher, small_digits, tmp_path / "dir")
    assert (tmp_path / "dir" / "precious.txt").read_text() == "keep me"


def test_memory_url_extraction(teacher, small_digits, float32_store) -> None:
    url = f"memory://fsd-extract-{uuid.uuid4().hex}"
    summary = run(teacher, small_digits, url)
    assert summary.chunks_computed == 8
    np.testing.assert_array_equal(
        open_store(url).read_rows(0, 120)[0], open_store(float32_store[0]).read_rows(0, 120)[0]
    )
    assert run(teacher, small_digits, url).chunks_computed == 0


def test_memory_url_overwrite(teacher, make_teacher, small_digits) -> None:
    url = f"memory://fsd-extract-{uuid.uuid4().hex}"
    run(teacher, small_digits, url)
    summary = run(make_teacher(sha="y" * 64, seed=1), small_digits, url, overwrite=True)
    assert not summary.resumed and summary.chunks_computed == 8
    assert open_store(url).meta["teacher"]["checkpoint_sha256"] == "y" * 64


def test_invalid_arguments(tmp_path, teacher, make_teacher, small_digits) -> None:
    for kw, refusal in (
        ({"views": 0}, "views must be positive, got 0"),
        ({"views": -1}, "views must be positive, got -1"),
        ({"chunk_rows": 0}, "chunk-rows must be positive, got 0"),
        ({"chunk_rows": -4}, "chunk-rows must be positive, got -4"),
        ({"batch_size": 0}, "batch-size must be positive, got 0"),
        ({"dtype": "float64"}, "unknown store dtype 'float64'"),
    ):
        with pytest.raises(InvalidInput, match=refusal):
            run(teacher, small_digits, tmp_path / "bad", **kw)
    wrong = make_teacher()
    wrong.input_shape = [3, 32, 32]
    with pytest.raises(InvalidInput, match="input"):
        run(wrong, small_digits, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # nothing is created on bad input


def test_extract_module_uses_fixed_batches_inside_chunk(tmp_path, teacher, small_digits) -> None:
    """A chunk's embeddings are independent of the batch size (up to float rounding), repeatable to the bit,
    and each row is the teacher's output on its rendered view."""
    a = open_store(run(teacher, small_digits, tmp_path / "a", batch_size=16).url).read_chunk(1)
    b = open_store(run(teacher, small_digits, tmp_path / "b", batch_size=16).url).read_chunk(1)
    c = open_store(run(teacher, small_digits, tmp_path / "c", batch_size=5).url).read_chunk(1)
    assert np.array_equal(a[0], b[0])
    np.testing.assert_allclose(a[0], c[0], rtol=1e-5, atol=1e-6)
    rows = np.arange(CHUNK, 2 * CHUNK)
    params = sample_views(small_digits.view_policy, SEED, rows, V)
    np.testing.assert_array_equal(a[2], params)
    with torch.no_grad():
        x = render_views(small_digits.get_images(rows), params[:, 1], small_digits.view_policy)
        np.testing.assert_allclose(a[0][:, 1], teacher.model.forward_features(x).numpy(), rtol=1e-5, atol=1e-6)


def test_resume_without_chunk_rows_uses_store_layout(tmp_path, teacher, small_digits) -> None:
    """Omitting chunk_rows on the re-run resumes with the store's own layout instead of refusing it."""
    path = tmp_path / "s"
    run(teacher, small_digits, path, chunk_rows=CHUNK)
    group = zarr.open_group(str(path), mode="r+")
    group["progress/done"][2] = False
    attrs = dict(group.attrs["fsd"])
    attrs["complete"] = False
    group.attrs["fsd"] = attrs
    summary = run(teacher, small_digits, path, chunk_rows=None)
    assert summary.resumed and summary.chunks_computed == 1 and summary.chunks_total == 8
    assert open_store(path).chunk_rows == CHUNK and open_store(path).complete


# -- the writer lock (<store>.lock next to a local store) ------------------------------------------------


def lock_file(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def test_lock_released_after_success_and_failure(tmp_path, monkeypatch, teacher, small_digits) -> None:
    run(teacher, small_digits, tmp_path / "ok")
    assert not lock_file(tmp_path / "ok").exists()

    def boom(self, chunk, embeddings, views):
        raise RuntimeError("disk full")

    monkeypatch.setattr(FeatureStore, "write_chunk", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        run(teacher, small_digits, tmp_path / "failed")
    assert not lock_file(tmp_path / "failed").exists()


def test_live_lock_refuses_second_writer(tmp_path, teacher, small_digits) -> None:
    import json
    import os
    import socket

    from featstore.errors import StoreLocked

    path = tmp_path / "s"
    lock = lock_file(path)
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": 0}))
    with pytest.raises(StoreLocked, match=str(os.getpid())):
        run(teacher, small_digits, path)
    assert not path.exists()  # nothing was written under someone else's lock
    assert lock.exists()  # and their lock is left alone
    lock.write_text("not json")
    with pytest.raises(StoreLocked, match="unknown process"):
        run(teacher, small_digits, path)
    assert lock.read_text() == "not json"


def test_stale_lock_of_dead_process_is_taken_over(tmp_path, teacher, small_digits) -> None:
    import json
    import socket
    import subprocess
    import sys

    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead_pid = int(child.stdout)
    path = tmp_path / "s"
    lock_file(path).write_text(json.dumps({"pid": dead_pid, "host": socket.gethostname(), "since": 0}))
    with pytest.warns(RuntimeWarning, match="stale lock"):
        summary = run(teacher, small_digits, path)
    assert summary.chunks_computed == 8 and open_store(path).complete
    assert not lock_file(path).exists()


def test_resume_with_another_batch_size_warns(tmp_path, teacher, small_digits) -> None:
    """float32 results depend on the batch in their last bits: a resume with another batch size is allowed
    (the inputs are the same) but said, since the store will not be bit-identical to an uninterrupted run."""
    path = str(tmp_path / "s.zarr")
    extract_teacher(teacher, small_digits, path, views=1, chunk_rows=CHUNK, batch_size=8, progress=False)
    assert open_store(path).meta["compute"] == {"batch_size": 8, "device": "cpu"}
    group = zarr.open_group(path, mode="r+")
    group["progress/done"][2] = False
    attrs = dict(group.attrs["fsd"])
    attrs["complete"] = False
    group.attrs["fsd"] = attrs
    with pytest.warns(RuntimeWarning, match="batch_size': 16.*batch_size': 8"):
        extract_teacher(teacher, small_digits, path, views=1, chunk_rows=CHUNK, batch_size=16, progress=False)
    assert open_store(path).complete
