"""HDF5 export → import round-trips a store exactly; bad files are refused with a clear error."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import zarr

from featstore.errors import InvalidInput
from featstore.export import export_h5
from featstore.extract import extract_teacher
from featstore.importer import import_h5
from featstore.store import open_store


@pytest.fixture
def exported(teacher, small_digits, tmp_path):
    url = str(tmp_path / "s.zarr")
    extract_teacher(teacher, small_digits, url, views=2, chunk_rows=16, progress=False)
    return url, export_h5(url, tmp_path / "s.h5", progress=False)


def test_export_then_import_round_trips_exactly(exported, small_digits, tmp_path):
    url, h5 = exported
    back = str(tmp_path / "back.zarr")
    summary = import_h5(h5, small_digits, back, chunk_rows=16)
    assert summary.samples == 120 and summary.views == 2
    a, b = zarr.open_group(url, mode="r"), zarr.open_group(back, mode="r")
    for name in ("embeddings", "views", "labels", "head/weight", "head/bias"):
        assert np.array_equal(a[name][...], b[name][...]), name  # float16 → float32 → float16 is lossless
    store = open_store(back)
    assert store.complete and store.meta["dataset"]["fingerprint"] == small_digits.fingerprint()


def test_single_view_export_is_n_by_d(exported, tmp_path):
    url, _ = exported
    path = export_h5(url, tmp_path / "v0.h5", view=0, progress=False)
    with h5py.File(path, "r") as handle:
        assert handle["embeddings"].shape == (120, open_store(url).shape.dim)


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda f: f.__delitem__("head/weight"), "head/weight"),
        (lambda f: f["labels"].__setitem__(0, 9 - f["labels"][0]), "labels differ"),
        (lambda f: f.__delitem__("views"), "no 'views'"),
    ],
)
def test_bad_files_are_refused(exported, small_digits, tmp_path, damage, match):
    _, h5 = exported
    with h5py.File(h5, "r+") as handle:
        damage(handle)
    with pytest.raises(InvalidInput, match=match):
        import_h5(h5, small_digits, str(tmp_path / "bad.zarr"))


def test_non_finite_rows_are_refused_and_leave_no_store(exported, small_digits, tmp_path):
    _, h5 = exported
    with h5py.File(h5, "r+") as handle:
        handle["embeddings"][50, 1, 0] = np.inf
    target = tmp_path / "bad.zarr"
    with pytest.raises(InvalidInput, match="non-finite"):
        import_h5(h5, small_digits, str(target))
    assert not target.exists()


def test_import_keeps_the_exported_head_type_and_view_seed(exported, small_digits, tmp_path):
    """A margin-head teacher's logits are s·cos(θ), not W·z: importing its export as a linear head would change
    every KD target silently. The export's attributes carry the head and the view seed; import keeps them."""
    url, h5 = exported
    original = open_store(url).meta
    back = open_store(import_h5(h5, small_digits, str(tmp_path / "back.zarr"), chunk_rows=16).url).meta
    assert back["head"]["type"] == "linear" and back["views"]["seed"] == original["views"]["seed"]

    with h5py.File(h5, "r+") as handle:
        meta = json.loads(handle.attrs["fsd"])
        meta["head"].update(type="arcface", scale=30.0, margin=0.5)
        handle.attrs["fsd"] = json.dumps(meta)
    arc = open_store(import_h5(h5, small_digits, str(tmp_path / "arc.zarr"), chunk_rows=16).url).meta
    assert (arc["head"]["type"], arc["head"]["scale"], arc["head"]["margin"]) == ("arcface", 30.0, 0.5)

    with h5py.File(h5, "r+") as handle:
        meta["head"]["scale"] = None
        handle.attrs["fsd"] = json.dumps(meta)
    with pytest.raises(InvalidInput, match="arcface head without a positive scale"):
        import_h5(h5, small_digits, str(tmp_path / "bad.zarr"), chunk_rows=16)


def test_import_keeps_the_exported_dtype_by_default(teacher, small_digits, tmp_path):
    url = str(tmp_path / "f32.zarr")
    extract_teacher(teacher, small_digits, url, views=1, dtype="float32", chunk_rows=16, progress=False)
    h5 = export_h5(url, tmp_path / "f32.h5", progress=False)
    back = open_store(import_h5(h5, small_digits, str(tmp_path / "back.zarr"), chunk_rows=16).url)
    assert back.dtype == "float32"
    assert np.array_equal(back.read_chunk(0)[0], open_store(url).read_chunk(0)[0])  # no rounding on the way
    assert open_store(import_h5(h5, small_digits, str(tmp_path / "f16.zarr"), dtype="float16").url).dtype == "float16"
