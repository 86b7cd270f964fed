"""Tests for featstore.verify and ``fsd store verify``: a good store passes in every dtype; a corrupted chunk
file, a NaN, an out-of-range label and a cleared progress flag are each reported by chunk index (and make
the CLI exit 1); the live check passes with the store's teacher, fails with another teacher, with tampered
view parameters (saying so) and with the wrong dataset; bad usage exits 2 with one ``Error:`` line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from cli.main import cli
from distill.models.checkpoint import Checkpoint, load_teacher_source, save_checkpoint
from featstore.datasets import load_dataset
from featstore.errors import InvalidInput
from featstore.extract import extract_teacher
from featstore.store import open_store
from featstore.verify import LIVE_COSINE_THRESHOLDS, compare_rows, verify_live, verify_store

DTYPES = ("float16", "float32", "int8", "bfloat16")
V = 2
CHUNK = 16  # 120 rows -> 8 chunks
SEED = 3
ALL_ROWS = 10_000  # more than N × V: the live check compares every row


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)


def open_group(path: Path) -> zarr.Group:
    return zarr.open_group(zarr.storage.LocalStore(path), mode="r+")


@pytest.fixture(scope="module")
def stores(tmp_path_factory, teacher, small_digits) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("verify")
    out = {}
    for dtype in DTYPES:
        out[dtype] = root / f"{dtype}.zarr"
        extract_teacher(
            teacher, small_digits, str(out[dtype]), views=V, dtype=dtype, chunk_rows=CHUNK, seed=SEED, progress=False
        )
    return out


@pytest.fixture
def copy_of(stores, tmp_path):
    def make(dtype: str = "float16") -> Path:
        target = tmp_path / f"copy_{dtype}.zarr"
        shutil.copytree(stores[dtype], target)
        return target

    return make


# -- static checks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_good_store_passes(stores, dtype) -> None:
    report = verify_store(str(stores[dtype]))
    assert report.ok, report.lines()
    assert report.chunks_checked == 8 and not report.bad_chunks and not report.problems
    assert report.lines()[-1] == "OK"


def test_corrupted_chunk_file_reported_and_cli_exits_1(copy_of) -> None:
    store = copy_of("float16")
    chunk_file = store / "embeddings" / "c" / "3" / "0" / "0"
    assert chunk_file.is_file()
    chunk_file.write_bytes(b"this is not a blosc frame" * 7)
    report = verify_store(str(store))
    assert not report.ok and set(report.bad_chunks) == {3}
    assert "unreadable" in report.bad_chunks[3]
    result = invoke("store", "verify", store)
    assert result.exit_code == 1, result.output
    assert "bad chunk 3: unreadable" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "FAILED"


def test_nan_reported(copy_of) -> None:
    store = copy_of("float32")
    open_group(store)["embeddings"][5 * CHUNK + 2, 1, 4] = np.nan
    report = verify_store(str(store))
    assert set(report.bad_chunks) == {5} and "non-finite" in report.bad_chunks[5]


def test_label_out_of_range_reported(copy_of) -> None:
    store = copy_of("int8")
    open_group(store)["labels"][2 * CHUNK] = 10  # 10 classes: valid labels are -1 … 9
    report = verify_store(str(store))
    assert set(report.bad_chunks) == {2} and "labels outside [-1, 10)" in report.bad_chunks[2]


def test_cleared_progress_flag_reported(copy_of) -> None:
    store = copy_of("bfloat16")
    open_group(store)["progress/done"][6] = False
    report = verify_store(str(store))
    assert set(report.bad_chunks) == {6} and "not written" in report.bad_chunks[6]
    result = invoke("store", "verify", store)
    assert result.exit_code == 1 and "bad chunk 6: not written" in result.stdout


# -- live check ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_live_check_with_the_stores_teacher_passes(stores, teacher, small_digits, dtype) -> None:
    check = verify_live(open_store(stores[dtype]), teacher, small_digits, ALL_ROWS, seed=0)
    assert check.ok, check.lines()
    assert check.checked == 120 * V and check.threshold == LIVE_COSINE_THRESHOLDS[dtype]
    assert check.min_cosine >= LIVE_COSINE_THRESHOLDS[dtype]
    # the live recomputation differs from the stored rows by the dtype's rounding only (float32: none at all,
    # as extraction and the live check run the same forward on the same pixels)
    assert check.max_abs_error <= {"float32": 0.0, "float16": 2e-3, "bfloat16": 2e-2, "int8": 5e-2}[dtype]
    assert check.line().startswith(f"live check: {120 * V} rows, cosine min ") and check.line().endswith(": OK")
    if dtype == "float32":
        assert check.min_cosine > 1 - 1e-9


def test_live_sample_is_seeded_and_distinct(stores, teacher, small_digits) -> None:
    a = verify_live(str(stores["float16"]), teacher, small_digits, 20, seed=7)
    b = verify_live(str(stores["float16"]), teacher, small_digits, 20, seed=7)
    c = verify_live(str(stores["float16"]), teacher, small_digits, 20, seed=8)
    assert a.checked == 20 and len({tuple(r) for r in a.rows}) == 20
    assert np.array_equal(a.rows, b.rows) and not np.array_equal(a.rows, c.rows)


def test_live_check_with_another_teacher_fails(stores, make_teacher, small_digits) -> None:
    other = make_teacher(seed=1)  # same recorded sha (the fixture's fake one): only the outputs can tell
    check = verify_live(str(stores["float16"]), other, small_digits, 50, seed=0)
    assert not check.ok and check.min_cosine < 0.99
    text = "\n".join(check.lines())
    assert "rows below cosine 0.9999" in text and text.splitlines()[0].endswith("FAILED")
    other_sha = make_teacher(sha="y" * 64)  # the right weights under another checkpoint hash
    check = verify_live(str(stores["float16"]), other_sha, small_digits, 50, seed=0)
    assert not check.ok and check.min_cosine >= 0.9999
    assert any("checkpoint sha256" in p for p in check.all_problems())


def test_live_check_detects_tampered_view_params(copy_of, teacher, small_digits) -> None:
    store = copy_of("float16")
    group = open_group(store)
    rows = np.arange(10, 40)
    params = np.asarray(group["views"][10:40])
    params[:, 1, 0] = (params[:, 1, 0] + 1) % 3  # another (valid) shift of view 1
    params[:, 1, 1] = (params[:, 1, 1] + 2) % 3
    group["views"][10:40] = params
    assert verify_store(str(store)).ok  # still finite: only the live check can tell
    check = verify_live(str(store), teacher, small_digits, ALL_ROWS, seed=0)
    assert not check.ok
    assert sorted(check.view_mismatches) == [(int(i), 1) for i in rows]
    assert any("view params mismatch" in p and "30 of 240 rows" in p for p in check.all_problems())
    # the stored embedding was computed on the original view, so the re-rendered view disagrees too
    tampered = np.isin(check.rows[:, 0], rows) & (check.rows[:, 1] == 1)
    assert check.cosines[tampered].min() < LIVE_COSINE_THRESHOLDS["float16"]
    assert (check.cosines[~tampered] >= LIVE_COSINE_THRESHOLDS["float16"]).all()


def test_live_check_detects_rescaled_rows(copy_of, teacher, small_digits) -> None:
    """Wrong int8 scales keep every cosine at 1 — only the norm check catches them."""
    store = copy_of("int8")
    group = open_group(store)
    scales = np.asarray(group["scales"][0:CHUNK])
    group["scales"][0:CHUNK] = scales * 4
    check = verify_live(str(store), teacher, small_digits, ALL_ROWS, seed=0)
    assert (check.cosines >= LIVE_COSINE_THRESHOLDS["int8"]).all()  # the cosine alone would pass
    assert not check.ok
    bad = {(s, v) for s, v, _ in check.bad_norm_rows}
    assert bad == {(s, v) for s in range(CHUNK) for v in range(V)}
    assert all(abs(r - 4) < 0.05 for _, _, r in check.bad_norm_rows)
    assert any("stored norm off" in p for p in check.all_problems())


def test_live_check_of_a_store_imported_without_a_seed(copy_of, teacher, small_digits) -> None:
    """Stores imported from files other tools wrote have no view seed: the parameters are replayed only."""
    store = copy_of("float16")
    group = open_group(store)
    meta = dict(group.attrs["fsd"])
    meta["views"] = {**meta["views"], "seed": None}
    group.attrs["fsd"] = meta
    check = verify_live(str(store), teacher, small_digits, ALL_ROWS, seed=0)
    assert check.ok, check.all_problems()
    assert check.view_mismatches == [] and check.checked == 120 * V


def test_live_check_reports_unrenderable_params(copy_of, teacher, small_digits) -> None:
    store = copy_of("float32")
    open_group(store)["views"][4, 1] = np.array([7, 7, 8, 8, 0], dtype=np.float32)  # box outside the image
    check = verify_live(str(store), teacher, small_digits, ALL_ROWS, seed=0)
    assert not check.ok and (4, 1) in check.view_mismatches
    assert any("describe no valid crop" in p for p in check.all_problems())


def test_live_check_refuses_other_dataset(stores, teacher, digits_train, make_subset) -> None:
    shifted = make_subset(digits_train, 121)
    check = verify_live(str(stores["float32"]), teacher, shifted, 10, seed=0)
    assert not check.ok and check.checked == 0
    assert any("rows cannot be paired" in p for p in check.all_problems())


def test_live_sample_must_be_positive(stores, teacher, small_digits) -> None:
    with pytest.raises(InvalidInput, match="sample must be positive, got 0"):
        verify_live(str(stores["float32"]), teacher, small_digits, 0, seed=0)


def test_compare_rows_on_hand_computed_rows() -> None:
    live = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [2.0, 0.0]], dtype=np.float32)
    stored = np.array([[6.0, 8.0], [0.0, 1.0], [0.0, 0.0], [1.0, 0.0], [-1.0, 0.5]], dtype=np.float32)
    got = compare_rows(live, stored)
    # same direction, twice the norm; orthogonal; both zero; zero live row; 2·(-1)/(2·√1.25)
    np.testing.assert_allclose(got.cosines, [1.0, 0.0, 1.0, -1.0, -1 / np.sqrt(1.25)], rtol=1e-15)
    np.testing.assert_allclose(got.norm_ratios, [2.0, 1.0, 1.0, np.inf, np.sqrt(1.25) / 2], rtol=1e-15)
    assert got.max_abs_error == 4.0  # |4 - 8|
    empty = compare_rows(np.empty((0, 2), np.float32), np.empty((0, 2), np.float32))
    assert empty.cosines.shape == (0,) and np.isnan(empty.max_abs_error)


# -- the CLI with a real checkpoint ---------------------------------------------------------------------


def _save_random_teacher(path: Path, seed: int, dataset) -> Path:
    torch.manual_seed(seed)
    from distill.models import create_model

    config = {"num_classes": 10, "in_channels": 1, "embedding_dim": 16}
    model = create_model("convnet_teacher", **config)
    ckpt = Checkpoint(
        kind="teacher",
        arch="convnet_teacher",
        model_config=config,
        state_dict=model.state_dict(),
        head_type="linear",
        embedding_dim=16,
        num_classes=10,
        dataset={
            "spec": dataset.spec,
            "split": dataset.split,
            "fingerprint": dataset.fingerprint(),
            "image_shape": list(dataset.image_shape),
        },
    )
    return save_checkpoint(ckpt, path)


@pytest.fixture(scope="module")
def cli_store(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(store of the digits test split as the CLI reloads it, its teacher checkpoint, another teacher)."""
    root = tmp_path_factory.mktemp("verify_cli")
    test = load_dataset("digits", "test")
    teacher_path = _save_random_teacher(root / "teacher.pt", 0, test)
    other_path = _save_random_teacher(root / "other.pt", 1, test)
    store = root / "store.zarr"
    extract_teacher(
        load_teacher_source(teacher_path), test, str(store), views=V, dtype="float16", seed=SEED, progress=False
    )
    return store, teacher_path, other_path


def test_cli_live_check_passes(cli_store) -> None:
    store, teacher_path, _ = cli_store
    result = invoke("store", "verify", store, "--teacher", teacher_path, "--sample", 40, "--seed", 1)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    live = [line for line in lines if line.startswith("live check:")]
    assert len(live) == 1 and live[0].startswith("live check: 40 rows, cosine min ") and live[0].endswith(": OK")
    assert "float16" in live[0] and lines[-1] == "OK"


def test_cli_live_check_other_teacher_fails(cli_store) -> None:
    store, _, other_path = cli_store
    result = invoke("store", "verify", store, "--teacher", other_path, "--sample", 40)
    assert result.exit_code == 1, result.output
    assert "checkpoint sha256" in result.stdout and "rows below cosine" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "FAILED"


@pytest.mark.parametrize(
    "args, match",
    [
        (["--sample", "5"], "--teacher"),
        (["--seed", "5"], "--teacher"),
        (["--teacher", "T", "--sample", "0"], "positive"),
        (["--teacher", "T", "--sample", "-3"], "positive"),
        (["--teacher", "missing.pt"], "does not exist"),
    ],
)
def test_cli_bad_usage_exits_2(cli_store, args, match) -> None:
    store, teacher_path, _ = cli_store
    args = [str(teacher_path) if a == "T" else a for a in args]
    result = invoke("store", "verify", store, *args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and match in errors[0] and "Traceback" not in result.output
    assert result.stdout == ""
