"""Same command, same seed → the same bytes: store chunks and student weights are reproducible through the CLI;
a different seed really changes what is drawn."""

from __future__ import annotations

from pathlib import Path

import torch

from distill.models.checkpoint import load_checkpoint


def array_files(store: Path, array: str) -> dict[str, bytes]:
    """Raw zarr chunk files (and array metadata) under ``store/array``, keyed by relative path."""
    root = store / array
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    assert any(name.startswith("c/") for name in files), f"no chunk files under {root}"
    return files


def extract(h, teacher: Path, out: Path, *extra) -> None:
    h.run_ok(
        "extract-teacher",
        "--teacher",
        teacher,
        "--dataset",
        "digits",
        "--out",
        out,
        "--views",
        h.VIEWS,
        "--chunk-rows",
        h.CHUNK_ROWS,
        "--quiet",
        *extra,
    )


def test_same_seed_gives_identical_store_bytes(artifacts, h, tmp_path):
    a, b = tmp_path / "a" / "store.zarr", tmp_path / "b" / "store.zarr"
    extract(h, artifacts.teacher, a)
    extract(h, artifacts.teacher, b)
    for array in ("embeddings", "views", "labels"):
        files_a = array_files(a, array)
        assert files_a == array_files(b, array), array
        assert files_a == array_files(artifacts.store, array), array  # and equal to the session's extraction


def test_other_extraction_seed_changes_the_views_but_not_the_identity_view(artifacts, h, tmp_path):
    from featstore.store import open_store

    other = tmp_path / "store.zarr"
    extract(h, artifacts.teacher, other, "--seed", 5)
    assert array_files(other, "views") != array_files(artifacts.store, "views")
    emb_a, _, views_a = open_store(artifacts.store).read_rows(0, 50)
    emb_b, _, views_b = open_store(other).read_rows(0, 50)
    assert (emb_a[:, 0] == emb_b[:, 0]).all() and (views_a[:, 0] == views_b[:, 0]).all()  # view 0 = identity
    assert not (views_a[:, 1] == views_b[:, 1]).all()


def train(h, store: Path, out: Path, seed: int) -> dict[str, torch.Tensor]:
    h.run_ok(
        "train-student",
        "--store",
        store,
        "--dataset",
        "digits",
        "--out",
        out,
        "--recipe",
        "th-kd",
        "--epochs",
        1,
        "--seed",
        seed,
        "--quiet",
    )
    return load_checkpoint(out, kind="student").state_dict


def test_same_seed_gives_identical_student_weights_and_other_seed_differs(artifacts, h, tmp_path):
    first = train(h, artifacts.store, tmp_path / "s0a.pt", seed=0)
    second = train(h, artifacts.store, tmp_path / "s0b.pt", seed=0)
    assert first.keys() == second.keys()
    unequal = [k for k in first if not torch.equal(first[k], second[k])]
    assert not unequal, f"same seed, different tensors: {unequal}"

    other = train(h, artifacts.store, tmp_path / "s1.pt", seed=1)
    float_keys = [k for k in first if first[k].is_floating_point()]
    assert any(not torch.equal(first[k], other[k]) for k in float_keys), "--seed had no effect on the weights"
