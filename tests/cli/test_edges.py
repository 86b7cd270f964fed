"""Values out of range (issue 15, class 5) and a first-time user's rough edges (class 6), each broken on purpose.

Refusals hash the work directory before and after; the fixes that make a thing work (a BOM pairs file, an
exported view that imports back, a module teacher beside the data) are checked by what they produce.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import h5py
import numpy as np
import pytest
import torch

from cli.main import COMMAND_MODULES, cli


def seed_options() -> list[tuple[list[str], str]]:
    found = []

    def walk(command: click.Command, path: list[str]) -> None:
        for param in command.params:
            if isinstance(param, click.Option) and param.name.endswith("seed"):
                found.append((path, param.opts[0]))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    ctx = click.Context(cli)
    for name in COMMAND_MODULES:
        walk(cli.get_command(ctx, name), [name])
    return found


SEEDS = seed_options()


def test_the_seed_walk_finds_the_seed_options():
    names = {f"{' '.join(p)} {o}" for p, o in SEEDS}
    assert {"train-student --seed", "train-student --view-seed", "extract-teacher --seed"} <= names


@pytest.mark.parametrize("value", ["-1", str(10**20), str(2**32)])
@pytest.mark.parametrize("path,option", SEEDS, ids=[f"{' '.join(p)} {o}" for p, o in SEEDS])
def test_seeds_out_of_range_are_refused(h, work, path, option, value):
    before = work.snapshot()
    h.assert_refused(h.invoke(*path, f"{option}={value}"), before, work.dir, "not in the range")


def extract(work, *extra, out="new.zarr", teacher=None):
    return ["extract-teacher", "--teacher", teacher or work.teacher, "--dataset", "digits", "--out", work.dir / out]


@pytest.mark.parametrize("rows", [1348, 10**12])
def test_huge_chunk_rows_is_refused(h, work, rows):
    before = work.snapshot()
    h.assert_refused(h.invoke(*extract(work), "--chunk-rows", rows, "--quiet"), before, work.dir, "exceeds the split")


@pytest.mark.parametrize(
    "use",
    ["eval --model", "extract --teacher", "train-student --online-teacher"],
)
@pytest.mark.parametrize("content", [b"hello\n", b"just some notes about my model\n" * 20, b"\x80\x02}q\x00."])
def test_a_text_file_given_as_a_checkpoint_is_refused(h, work, use, content):
    text = work.dir / "notes.pt"
    text.write_bytes(content)
    args = {
        "eval --model": ["eval", "--faiss", "--model", text, "--dataset", "digits"],
        "extract --teacher": extract(work, teacher=text),
        "train-student --online-teacher": [
            "train-student", "--online-teacher", text, "--dataset", "digits", "--out", work.dir / "s.pt",
        ],
    }[use]  # fmt: skip
    before = work.snapshot()
    h.assert_refused(h.invoke(*args), before, work.dir)


@pytest.mark.parametrize("where", ["embedding_dim", "model_config.embedding_dim", "model_config.num_classes"])
@pytest.mark.parametrize("value", [-1, 0])
def test_a_teacher_checkpoint_with_a_non_positive_size_is_refused(h, work, where, value):
    payload = torch.load(work.teacher, weights_only=True)
    if where.startswith("model_config."):
        payload["model_config"][where.split(".")[1]] = value
    else:
        payload[where] = value
    bad = work.dir / "bad.pt"
    torch.save(payload, bad)
    before = work.snapshot()
    h.assert_refused(h.invoke(*extract(work, teacher=bad)), before, work.dir, "checkpoint")


def test_a_teacher_whose_head_has_fewer_classes_than_the_dataset_is_refused(h, work):
    payload = torch.load(work.teacher, weights_only=True)
    payload["model_config"]["num_classes"] = 5
    payload["num_classes"] = 5
    for key in [k for k in payload["state_dict"] if k.startswith("head.")]:
        payload["state_dict"][key] = payload["state_dict"][key][:5]
    small = work.dir / "five.pt"
    torch.save(payload, small)
    before = work.snapshot()
    h.assert_refused(h.invoke(*extract(work, teacher=small)), before, work.dir, "head over 5 classes")


def test_a_pairs_file_with_a_utf8_bom_reads_as_the_same_format(h, work, tmp_path):
    lines = "0 1 1\n2 3 0\n4 5 1\n6 7 0\n"
    plain, bom = tmp_path / "plain.txt", tmp_path / "bom.txt"
    plain.write_text(lines, encoding="utf-8")
    bom.write_text(lines, encoding="utf-8-sig")
    assert bom.read_bytes().startswith(b"\xef\xbb\xbf")
    reports = []
    for pairs in (plain, bom):
        out = tmp_path / f"{pairs.stem}.json"
        h.run_ok("eval", "--faiss", "--model", work.student, "--dataset", "digits", "--pairs", pairs, "--out", out)
        reports.append(json.loads(out.read_text())["verification"])
    assert reports[1]["pairs"]["format"] == "index" and reports[1]["num_genuine"] == reports[0]["num_genuine"] == 2
    assert reports[0]["roc_auc"] == reports[1]["roc_auc"]


@pytest.mark.parametrize("index", [10**6, 10**20, -(10**20)])
def test_huge_pair_indices_are_refused_naming_the_line(h, work, index):
    pairs = work.dir / "pairs.txt"
    pairs.write_text(f"0 1 1\n2 {index} 0\n")
    before = work.snapshot()
    args = ["eval", "--faiss", "--model", work.student, "--dataset", "digits", "--pairs", pairs]
    h.assert_refused(h.invoke(*args), before, work.dir, "line 2")


def test_an_export_of_all_views_tells_eval_to_export_one(h, work):
    h.run_ok("store", "export", work.store, "--out", work.dir / "all.h5", "--quiet")
    before = work.snapshot()
    line = h.assert_refused(h.invoke("eval", "--faiss", "--embeddings", work.dir / "all.h5"), before, work.dir)
    assert "--view 0" in line


def test_an_export_of_one_view_imports_back(h, work):
    h.run_ok("store", "export", work.store, "--out", work.dir / "v1.h5", "--view", 1, "--quiet")
    with h5py.File(work.dir / "v1.h5") as f:
        assert f["embeddings"].shape == (h.TRAIN_N, h.DIM) and f["views"].shape == (h.TRAIN_N, 1, 5)
    h.run_ok("store", "import", work.dir / "v1.h5", "--out", work.dir / "back.zarr", "--dataset", "digits")
    from featstore.store import open_store

    back, original = open_store(work.dir / "back.zarr"), open_store(work.store)
    assert back.shape.num_views == 1
    emb, labels, views = back.read_rows(0, h.TRAIN_N)
    ref_emb, ref_labels, ref_views = original.read_rows(0, h.TRAIN_N)
    assert np.array_equal(emb[:, 0], ref_emb[:, 1]) and np.array_equal(views[:, 0], ref_views[:, 1])
    assert np.array_equal(labels, ref_labels)


def test_pairs_evaluation_of_an_hdf5_without_labels(h, work, tmp_path):
    emb = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    with h5py.File(tmp_path / "e.h5", "w") as f:
        f["embeddings"] = emb
    (tmp_path / "p.txt").write_text("0 1 1\n2 3 0\n4 5 1\n6 7 0\n")
    out = tmp_path / "r.json"
    h.run_ok("eval", "--faiss", "--embeddings", tmp_path / "e.h5", "--pairs", tmp_path / "p.txt", "--out", out)
    assert json.loads(out.read_text())["verification"]["num_genuine"] == 2
    before = h.snapshot(tmp_path)  # without --pairs the labels are needed, and the message says so
    h.assert_refused(h.invoke("eval", "--faiss", "--embeddings", tmp_path / "e.h5"), before, tmp_path, "labels")


def test_a_module_teacher_beside_the_data_imports_from_the_current_directory(h, work, tmp_path, monkeypatch):
    (tmp_path / "my_teacher_mod.py").write_text(
        "import torch\n"
        "from distill.models.checkpoint import load_checkpoint\n"
        f"def build():\n    model = load_checkpoint({str(work.teacher)!r}).build_model()\n"
        "    return model, model.forward_features, model.head\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    out = tmp_path / "m.zarr"
    h.run_ok("extract-teacher", "--teacher", "my_teacher_mod:build", "--trust-code", "--dataset", "digits",
             "--out", out, "--quiet")  # fmt: skip
    assert out.is_dir()


def test_verify_dataset_option_lets_a_live_check_run_from_elsewhere(h, work):
    result = h.invoke("store", "verify", work.store, "--teacher", work.teacher, "--dataset", "digits", "--sample", 8)
    assert result.exit_code == 0 and "live check: 8 rows" in result.stdout, h.describe(result)
    before = work.snapshot()
    h.assert_refused(h.invoke("store", "verify", work.store, "--dataset", "digits"), before, work.dir, "--teacher")


def test_store_info_of_an_incomplete_store_prints_no_compression_ratio(h, work):
    h.make_incomplete(work.store)
    info = h.run_ok("store", "info", work.store)
    assert "compression" not in info.stdout
    assert json.loads(h.run_ok("store", "info", work.store, "--json").stdout)["compression_ratio_vs_float32"] is None


def test_threads_option_and_default_cap(h, work):
    before = torch.get_num_threads()
    try:
        h.run_ok("--threads", 3, "store", "info", work.store)
        assert torch.get_num_threads() == 3
        torch.set_num_threads(8)
        h.run_ok("store", "info", work.store)  # no --threads: capped at 4, never raised
        assert torch.get_num_threads() == 4
        torch.set_num_threads(1)
        h.run_ok("store", "info", work.store)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    snap = work.snapshot()
    h.assert_refused(h.invoke("--threads", 0, "store", "info", work.store), snap, work.dir, "--threads")


def test_help_explains_far_and_lr(h):
    assert "False-accept rates" in h.run_ok("eval", "--help").stdout
    for command in ("train-student", "train-teacher"):
        text = " ".join(h.run_ok(command, "--help").stdout.split())
        assert "cosine" in text and "--lr" in text, command


def test_compare_notes_reports_from_different_datasets():
    from distill.evaluation.compare import side_by_side_table

    def report(dataset, fingerprint):
        return {
            "source": {"dataset": dataset, "split": "test", "fingerprint": fingerprint},
            "num_samples": 10,
            "classification": {"top1": 0.5},
        }

    same = side_by_side_table({"a": report("digits", "f" * 64), "b": report("digits", "f" * 64)})
    assert "different datasets" not in same
    other = side_by_side_table({"a": report("digits", "f" * 64), "b": report("folder:x", "e" * 64)})
    assert "different datasets" in other and "folder:x/test" in other
    changed = side_by_side_table({"a": report("digits", "f" * 64), "b": report("digits", "e" * 64)})
    assert "different datasets" in changed  # the same name over other pixels


def test_training_curves_have_whole_epoch_ticks(monkeypatch, tmp_path):
    import distill.training.curves as curves

    seen = {}
    monkeypatch.setattr(curves, "save_png", lambda fig, path: seen.setdefault("fig", fig))
    log = [{"epoch": e, "loss": {"total": 1.0 / e}, "test_accuracy": 0.1 * e} for e in (1, 2, 3)]
    curves.plot_training_curves(log, tmp_path / "c.png")
    for ax in seen["fig"].axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_one_seed_tables_print_no_spread():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from benchmarks.paper_table import _summary
    from benchmarks.store_dtypes import mean_std, pct

    assert _summary([0.5]) == "50.00"
    assert _summary([0.5, 0.7]).startswith("60.00 ± ")
    assert pct(mean_std([0.25])) == "25.00" and "±" in pct(mean_std([0.25, 0.5]))
