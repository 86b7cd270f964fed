"""The happy path through ``fsd``: train-teacher → extract-teacher → train-student → eval, store info, help.

Each step is checked through its printed output *and* through the Python API (the checkpoint loads, the
store opens, the report has docs/evaluation.md's keys)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from distill.losses.recipes import RECIPES
from distill.models.checkpoint import load_checkpoint
from featstore.store import open_store

FAR_KEYS = ["1e-06", "1e-05", "1e-04", "1e-03", "1e-02", "1e-01"]
RETRIEVAL_KEYS = {"recall_at_k", "precision_at_1", "r_precision", "map_at_r"}
SUMMARY = re.compile(
    r"^(wrote|resumed) (?P<url>\S+): (?P<n>\d+) samples × (?P<v>\d+) views × (?P<d>\d+) dims \((?P<dtype>\w+)\), "
    r"(?P<done>\d+)/(?P<total>\d+) chunks computed, (?P<mb>[\d.]+) MB on disk, "
    r"compression (?P<ratio>[\d.]+)× vs float32, (?P<s>[\d.]+) s$"
)


def embedding_files(store: Path) -> dict[str, bytes]:
    root = store / "embeddings"
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- train-teacher ---------------------------------------------------------------------------------------
def test_train_teacher_writes_a_loadable_teacher_checkpoint(artifacts):
    ckpt = load_checkpoint(artifacts.teacher, kind="teacher")
    assert ckpt.kind == "teacher"
    assert ckpt.arch == "convnet_teacher"
    assert ckpt.num_classes == 10 and ckpt.embedding_dim == 64
    assert ckpt.dataset["spec"] == "digits" and ckpt.dataset["split"] == "train"
    assert ckpt.dataset["image_shape"] == [1, 8, 8]
    assert len(ckpt.extra["log"]) == 2  # --epochs 2
    ckpt.build_model()  # the weights fit the arch
    assert re.match(
        r"^teacher \S+: [\d,]+ parameters, train top-1 [\d.]+%, test top-1 [\d.]+%, [\d.]+ s$",
        artifacts.teacher_output.strip(),
    ), artifacts.teacher_output


# -- extract-teacher -------------------------------------------------------------------------------------
def test_extract_prints_one_summary_line_and_store_is_complete(artifacts, h):
    lines = artifacts.store_output.strip().splitlines()
    assert len(lines) == 1, artifacts.store_output
    m = SUMMARY.match(lines[0])
    assert m, lines[0]
    assert m["url"] == str(artifacts.store)
    assert (int(m["n"]), int(m["v"]), int(m["d"])) == (h.TRAIN_N, h.VIEWS, h.DIM)
    assert m["dtype"] == "float16"
    assert (int(m["done"]), int(m["total"])) == (7, 7)
    assert float(m["mb"]) > 0 and float(m["ratio"]) > 1.0  # float16 + zstd beats raw float32

    store = open_store(artifacts.store)
    assert store.complete
    assert (store.shape.num_samples, store.shape.num_views, store.shape.dim) == (h.TRAIN_N, h.VIEWS, h.DIM)
    assert store.num_chunks == 7 and store.chunk_rows == h.CHUNK_ROWS
    assert store.missing_chunks() == []


def test_rerunning_extract_computes_nothing_and_changes_no_byte(artifacts, h, tmp_path):
    store = tmp_path / "store.zarr"
    shutil.copytree(artifacts.store, store)
    before = h.snapshot(store)
    result = h.run_ok(
        "extract-teacher",
        "--teacher",
        artifacts.teacher,
        "--dataset",
        "digits",
        "--out",
        store,
        "--views",
        h.VIEWS,
        "--chunk-rows",
        h.CHUNK_ROWS,
        "--quiet",
    )
    m = SUMMARY.match(result.stdout.strip())
    assert m, result.stdout
    assert m[1] == "resumed" and (m["done"], m["total"]) == ("0", "7")
    assert h.snapshot(store) == before


def test_extract_resumes_an_interrupted_store_bit_identically(artifacts, h, tmp_path):
    store = tmp_path / "store.zarr"
    shutil.copytree(artifacts.store, store)
    h.make_incomplete(store, missing_chunk=3)
    # what a crash mid-chunk leaves: garbage in the not-done chunk
    chunk = store / "embeddings" / "c" / "3" / "0" / "0"
    original = chunk.read_bytes()
    chunk.write_bytes(b"\0" * 16)
    result = h.run_ok(
        "extract-teacher",
        "--teacher",
        artifacts.teacher,
        "--dataset",
        "digits",
        "--out",
        store,
        "--views",
        h.VIEWS,
        "--chunk-rows",
        h.CHUNK_ROWS,
        "--quiet",
    )
    m = SUMMARY.match(result.stdout.strip())
    assert m and (m["done"], m["total"]) == ("1", "7"), result.stdout
    assert chunk.read_bytes() == original
    assert embedding_files(store) == embedding_files(artifacts.store)
    assert open_store(store).complete


def test_extract_overwrite_replaces_a_store_of_another_teacher(artifacts, h, tmp_path):
    store = tmp_path / "store.zarr"
    shutil.copytree(artifacts.store, store)
    h.run_ok(
        "extract-teacher",
        "--teacher",
        artifacts.other_teacher,
        "--dataset",
        "digits",
        "--out",
        store,
        "--views",
        1,
        "--chunk-rows",
        500,
        "--overwrite",
        "--quiet",
    )
    reopened = open_store(store)
    assert reopened.shape.num_views == 1 and reopened.chunk_rows == 500
    assert (
        reopened.meta["teacher"]["checkpoint_sha256"]
        != open_store(artifacts.store).meta["teacher"]["checkpoint_sha256"]
    )


# -- train-student ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", ["vanilla", "kd", "th-kd", "kde-th"])
def test_train_student_each_recipe_writes_checkpoint_and_log(artifacts, h, tmp_path, recipe):
    out = tmp_path / "STUDENT.pt"
    result = h.run_ok(
        "train-student",
        "--store",
        artifacts.store,
        "--dataset",
        "digits",
        "--out",
        out,
        "--recipe",
        recipe,
        "--epochs",
        1,
        "--quiet",
    )
    assert f"[{recipe}]" in result.stdout and "test top-1" in result.stdout
    log_path = tmp_path / "STUDENT.log.json"
    assert out.is_file() and log_path.is_file()
    ckpt = load_checkpoint(out, kind="student")
    assert ckpt.extra["recipe"] == recipe
    assert ckpt.extra["weights"] == RECIPES[recipe]
    assert ckpt.embedding_dim == h.DIM and ckpt.num_classes == 10
    ckpt.build_model()

    log = json.loads(log_path.read_text())
    assert log["recipe"] == recipe and log["weights"] == RECIPES[recipe]
    assert [e["epoch"] for e in log["epochs"]] == [1]
    entry = log["epochs"][0]
    assert set(entry["loss"]) == set(RECIPES[recipe]) | {"total"}
    assert all(np.isfinite(v) for v in entry["loss"].values())
    assert 0.0 <= entry["test_accuracy"] <= 1.0


def test_loss_override_is_recorded_in_the_checkpoint(artifacts, h, tmp_path):
    out = tmp_path / "s.pt"
    h.run_ok(
        "train-student",
        "--store",
        artifacts.store,
        "--dataset",
        "digits",
        "--out",
        out,
        "--recipe",
        "vanilla",
        "--loss",
        "ce=1,kd=1.5,th=0.02",
        "--epochs",
        1,
        "--quiet",
    )
    ckpt = load_checkpoint(out, kind="student")
    assert ckpt.extra["weights"] == {"ce": 1.0, "kd": 1.5, "th": 0.02}
    log = json.loads((tmp_path / "s.log.json").read_text())
    assert set(log["epochs"][0]["loss"]) == {"total", "ce", "kd", "th"}


# -- eval ------------------------------------------------------------------------------------------------
def check_report(report: dict, *, classification: bool) -> None:
    if classification:
        assert 0.0 <= report["classification"]["top1"] <= 1.0
    else:
        assert "classification" not in report
    r = report["retrieval"]
    assert RETRIEVAL_KEYS <= set(r)
    assert list(r["recall_at_k"]) == ["1", "2", "4", "8"]
    recalls = [r["recall_at_k"][k] for k in ("1", "2", "4", "8")]
    assert all(0.0 <= x <= 1.0 for x in recalls) and recalls == sorted(recalls)
    v = report["verification"]
    assert {"num_genuine", "num_impostor", "tar_at_far", "roc_auc", "eer"} <= set(v)
    assert v["num_genuine"] > 0 and v["num_impostor"] > 0
    n = report["num_samples"]
    assert v["num_genuine"] + v["num_impostor"] == n * (n - 1) // 2
    assert list(v["tar_at_far"]) == FAR_KEYS
    assert 0.0 <= v["roc_auc"] <= 1.0 and 0.0 <= v["eer"] <= 1.0


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_eval_model_writes_report_and_plot(artifacts, h, tmp_path, which):
    out, plot = tmp_path / "report.json", tmp_path / "roc.png"
    result = h.run_ok(
        "eval", "--faiss", "--model", getattr(artifacts, which), "--dataset", "digits", "--out", out, "--plot", plot
    )
    assert "retrieval" in result.stdout and f"report written to {out}" in result.stdout
    report = json.loads(out.read_text())
    check_report(report, classification=True)
    assert report["num_samples"] == h.TEST_N
    assert report["source"]["kind"] == which and report["source"]["split"] == "test"
    assert is_png(plot)


def test_eval_th_mix_is_recorded_and_compare_names_it(artifacts, h, tmp_path):
    plain, mixed = tmp_path / "plain.json", tmp_path / "mixed.json"
    base = ("eval", "--faiss", "--model", artifacts.student, "--dataset", "digits", "--out")
    h.run_ok(*base, plain)
    h.run_ok(*base, mixed, "--th-mix", 0.3)
    assert "th_mix" not in json.loads(plain.read_text())["source"]
    assert json.loads(mixed.read_text())["source"]["th_mix"] == 0.3
    out = h.run_ok("compare", plain, mixed).stdout
    assert "mixed prediction p' = (1−W)·p_student + W·p_teacher-head for mixed (W = 0.3)" in out
    assert "plain (W" not in out


def test_eval_store_reports_teacher_top1_and_self_gallery_equals_leave_one_out(artifacts, h, tmp_path):
    out = tmp_path / "report.json"
    h.run_ok("eval", "--faiss", "--store", artifacts.store, "--gallery-store", artifacts.store, "--out", out)
    report = json.loads(out.read_text())
    check_report(report, classification=True)
    assert report["num_samples"] == h.TRAIN_N
    # the store holds the teacher's train embeddings: its stored-head top-1 is the teacher's train top-1
    teacher = load_checkpoint(artifacts.teacher)
    assert report["classification"]["top1"] == pytest.approx(teacher.extra["train_accuracy"], abs=0.01)
    # the same samples as queries and gallery: the counterpart is excluded, so it equals leave-one-out
    cross = report["cross_model"]
    for key in ("precision_at_1", "r_precision", "map_at_r"):
        assert cross[key] == pytest.approx(report["retrieval"][key], abs=1e-3), key
    assert cross["gallery"]["kind"] == "store"


def test_eval_embeddings_h5(h, tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 40)
    centres = rng.standard_normal((5, 16)) * 3
    emb = (centres[labels] + rng.standard_normal((200, 16))).astype(np.float32)
    path = tmp_path / "emb.h5"
    with h5py.File(path, "w") as f:
        f["embeddings"] = emb
        f["labels"] = labels
    out, plot = tmp_path / "report.json", tmp_path / "roc.png"
    h.run_ok("eval", "--faiss", "--embeddings", path, "--out", out, "--plot", plot)
    report = json.loads(out.read_text())
    check_report(report, classification=False)  # no head → no classification
    assert report["num_samples"] == 200
    assert report["verification"]["num_genuine"] == 5 * 40 * 39 // 2
    assert report["retrieval"]["recall_at_k"]["1"] > 0.9  # well separated clusters
    assert is_png(plot)


def test_eval_student_against_teacher_gallery_has_cross_model_section(artifacts, h, tmp_path):
    out = tmp_path / "report.json"
    result = h.run_ok(
        "eval",
        "--faiss",
        "--model",
        artifacts.student,
        "--dataset",
        "digits",
        "--gallery-store",
        artifacts.store,
        "--out",
        out,
    )
    assert "cross-model" in result.stdout
    report = json.loads(out.read_text())
    check_report(report, classification=True)
    cross = report["cross_model"]
    assert RETRIEVAL_KEYS <= set(cross)
    assert list(cross["recall_at_k"]) == ["1", "2", "4", "8"]
    assert all(0.0 <= x <= 1.0 for x in cross["recall_at_k"].values())
    assert cross["gallery"]["split"] == "train"


def test_eval_overwrite_replaces_existing_outputs(artifacts, h, tmp_path):
    out, plot = tmp_path / "report.json", tmp_path / "roc.png"
    out.write_text("old")
    plot.write_text("old")
    h.run_ok("eval", "--faiss", "--store", artifacts.store, "--out", out, "--plot", plot, "--overwrite")
    assert "retrieval" in json.loads(out.read_text())
    assert is_png(plot)


# -- store info ------------------------------------------------------------------------------------------
def test_store_info_text_and_json(artifacts, h):
    text = h.run_ok("store", "info", artifacts.store).stdout
    assert f"{h.TRAIN_N} samples × {h.VIEWS} views × {h.DIM} dims" in text
    assert "float16" in text
    assert re.search(r"complete\s+True \(7/7 chunks\)", text), text

    info = json.loads(h.run_ok("store", "info", artifacts.store, "--json").stdout)
    assert info["shape"] == {"samples": h.TRAIN_N, "views": h.VIEWS, "dim": h.DIM, "classes": 10}
    assert info["dtype"] == "float16" and info["complete"] is True
    assert info["chunks"] == {"total": 7, "done": 7}
    assert info["dataset"]["split"] == "train"
    assert info["teacher"]["checkpoint_sha256"]


def test_store_info_shows_an_incomplete_store_as_such(artifacts, h, tmp_path):
    store = tmp_path / "store.zarr"
    shutil.copytree(artifacts.store, store)
    h.make_incomplete(store)
    info = json.loads(h.run_ok("store", "info", store, "--json").stdout)
    assert info["complete"] is False and info["chunks"] == {"total": 7, "done": 6}


# -- help ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "command",
    [[], ["train-teacher"], ["extract-teacher"], ["train-student"], ["eval"], ["store"], ["store", "info"], ["demo"]],
    ids=lambda c: " ".join(c) or "fsd",
)
def test_help_exits_zero(h, command):
    result = h.run_ok(*command, "--help")
    assert "Usage:" in result.stdout


def test_top_level_help_lists_every_command(h):
    text = h.run_ok("--help").stdout
    for name in ("train-teacher", "extract-teacher", "train-student", "eval", "store", "demo"):
        assert name in text


def test_console_script_reports_errors_in_one_line(tmp_path):
    """The installed ``fsd`` entry point, in a real process (no CliRunner): a bad input gives exit 2 with a
    single ``Error:`` line on stderr, nothing on stdout, and no traceback."""
    fsd = Path(sys.executable).with_name("fsd")
    if not fsd.exists():
        pytest.skip("console script not installed next to the interpreter")
    bad = subprocess.run(
        [str(fsd), "store", "info", str(tmp_path / "missing.zarr")], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2, bad.stderr
    assert bad.stdout == ""
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), bad.stderr
