"""``fsd compare`` (reports side by side with deltas) and the report outputs of ``fsd eval``: --pairs (index,
names, LFW), the CMC plot beside the ROC, and their bad-input refusals (exit 2, one ``Error:`` line).

Nothing here needs the session artefacts (trained models, stores): reports and embeddings are made in tmp_path.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from distill.evaluation.protocols.pairs import lfw_accuracy, parse_pairs, resolve_pairs, score_pairs

LFW_TEXT = """2\t2
Ann\t1\t2
Bob\t1\t3
Ann\t1\tBob\t1
Cid\t1\tDee\t1
Cid\t1\t2
Dee\t1\t2
Ann\t2\tCid\t2
Bob\t3\tDee\t2
"""


def report(r1: float, top1: float | None, tar3: float | None, samples: int = 100, **verification) -> dict:
    out = {
        "source": {"kind": "embeddings"},
        "num_samples": samples,
        "retrieval": {
            "recall_at_k": {"1": r1, "2": r1},
            "precision_at_1": r1,
            "r_precision": 0.5,
            "map_at_r": 0.25,
            "num_queries": samples,
        },
        "verification": {
            "num_genuine": 10,
            "num_impostor": 90,
            "tar_at_far": {"1e-03": tar3, "1e-02": 0.5},
            "roc_auc": 0.9,
            "eer": 0.1,
            **verification,
        },
    }
    if top1 is not None:
        out["classification"] = {"top1": top1}
    return out


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def rows(stdout: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in stdout.splitlines()[2:] if line and line[0] != " "}


# ----------------------------------------------------------------------------------------------------------------
# fsd compare
# ----------------------------------------------------------------------------------------------------------------


def test_compare_side_by_side_with_deltas(h, tmp_path) -> None:
    a = write(tmp_path / "teacher.json", report(0.5, 0.9, None))
    b = write(tmp_path / "kd.json", report(0.75, 0.8, 0.25))
    result = h.run_ok("compare", a, b)
    out = result.stdout
    header = out.splitlines()[0].split()
    assert header == ["metric", "teacher", "kd", "Δ"]
    table = rows(out)
    assert table["R@1"] == ["50.00", "75.00", "+25.00"]
    assert table["top-1"] == ["90.00", "80.00", "-10.00"]
    assert table["TAR@1e-3"] == ["—", "25.00", "—"]  # null in the baseline: no delta
    assert table["TAR@1e-2"] == ["50.00", "50.00", "+0.00"]
    assert table["EER"] == ["10.00", "10.00", "+0.00"]
    assert table["P@1"] == ["50.00", "75.00", "+25.00"] and "R@2" in table and "R-prec" in table
    assert [k for k in table if k.startswith("TAR@")] == ["TAR@1e-3", "TAR@1e-2"]  # no duplicate row
    assert "LFW" not in out and "x-R@1" not in out  # rows no report has are left out
    assert "Δ: percentage points against teacher" in out
    assert "note:" not in out


def test_compare_baseline_option_and_notes(h, tmp_path) -> None:
    a = write(tmp_path / "a.json", report(0.5, None, 0.1))
    b = write(tmp_path / "b.json", report(0.6, None, 0.2, samples=50))
    c = write(
        tmp_path / "c.json",
        report(0.7, None, 0.3, protocol="pairs", pairs={"file": "pairs.txt"}, lfw={"accuracy_mean": 0.95}),
    )
    out = h.run_ok("compare", a, b, c, "--baseline", b).stdout
    assert out.splitlines()[0].split() == ["metric", "a", "Δ", "b", "c", "Δ"]
    assert rows(out)["R@1"] == ["50.00", "-10.00", "60.00", "70.00", "+10.00"]
    assert rows(out)["LFW"] == ["acc", "—", "—", "—", "95.00", "—"]
    assert "top-1" not in rows(out)
    assert "note: the reports cover different numbers of samples (a: 100, b: 50, c: 100)" in out
    assert "note: verification protocols differ (a: all pairs, b: all pairs, c: pairs from pairs.txt)" in out
    # a baseline that is not among the reports is added as the first column
    out = h.run_ok("compare", b, c, "--baseline", a).stdout
    assert out.splitlines()[0].split() == ["metric", "a", "b", "Δ", "c", "Δ"]
    # one report: just its values
    out = h.run_ok("compare", a).stdout
    assert out.splitlines()[0].split() == ["metric", "a"] and "Δ" not in out


def test_compare_same_stems_use_paths(h, tmp_path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a = write(tmp_path / "x" / "report.json", report(0.5, None, None))
    b = write(tmp_path / "y" / "report.json", report(0.6, None, None))
    header = h.run_ok("compare", a, b).stdout.splitlines()[0].split()
    assert header == ["metric", str(a), str(b), "Δ"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "does not exist"),
        ("{not json", "is not valid JSON (Expecting property name enclosed in double quotes at line 1, column 2)"),
        ("[1, 2]", "is not an fsd eval report"),
        ('{"retrieval": {}}', "is not an fsd eval report"),
        (report(0.5, "high", None), "classification.top1 is 'high', not a number"),
        (
            '{"num_samples": 100, "verification": {}, "retrieval": {"map_at_r": ' + "9" * 400 + "}}",
            "map_at_r is not a finite number",
        ),
        ("\udcff", "not a UTF-8 text file"),
    ],
)
def test_compare_bad_reports(h, tmp_path, content, match) -> None:
    good = write(tmp_path / "good.json", report(0.5, None, None))
    bad = tmp_path / "bad.json"
    if isinstance(content, str) and content == "\udcff":
        bad.write_bytes(b"\xff\xfe{")
    elif content is not None:
        write(bad, content)
    before = h.snapshot(tmp_path)
    h.assert_refused(h.invoke("compare", good, bad), before, tmp_path, match=match)


def test_compare_tolerates_odd_protocol_fields(h, tmp_path) -> None:
    """Hand-edited reports whose protocol fields are not objects are compared, not a traceback."""
    a = write(tmp_path / "a.json", report(0.5, None, None))
    b = write(tmp_path / "b.json", {**report(0.6, None, None), "ijb": {"protocol": "IJB-C"}})
    c = write(tmp_path / "c.json", report(0.7, None, None, protocol="pairs", pairs="lfw.txt"))
    out = h.run_ok("compare", a, b, c).stdout
    assert "verification protocols differ" in out and "IJB templates (?)" in out and "pairs from ?" in out


def test_compare_needs_a_report(h, tmp_path) -> None:
    result = h.invoke("compare")
    assert result.exit_code == 2 and "Missing argument" in result.stderr


# ----------------------------------------------------------------------------------------------------------------
# fsd eval --pairs / --plot
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def lfw_h5(tmp_path) -> Path:
    """8 images of 4 people (Ann, Bob, Cid, Dee), with names, clustered by person."""
    names = ["Ann_0001", "Ann_0002", "Bob_0001", "Bob_0003", "Cid_0001", "Cid_0002", "Dee_0001", "Dee_0002"]
    labels = np.repeat(np.arange(4), 2)
    rng = np.random.default_rng(0)
    emb = (rng.normal(size=(4, 8))[labels] * 2 + rng.normal(size=(8, 8))).astype(np.float32)
    path = tmp_path / "lfw.h5"
    with h5py.File(path, "w") as f:
        f["embeddings"] = emb
        f["labels"] = labels
        f["names"] = np.array(names, dtype=h5py.string_dtype())
    return path


def test_eval_lfw_pairs_report_and_plots(h, tmp_path, lfw_h5) -> None:
    pairs_file = write(tmp_path / "pairs.txt", LFW_TEXT)
    out, plot = tmp_path / "r.json", tmp_path / "roc.png"
    result = h.run_ok("eval", "--faiss", "--embeddings", lfw_h5, "--pairs", pairs_file, "--out", out, "--plot", plot)
    assert f"8 pairs from {pairs_file} (lfw format)" in result.stdout
    assert "LFW accuracy" in result.stdout and "over 2 folds" in result.stdout
    rep = json.loads(out.read_text())
    v = rep["verification"]
    assert v["protocol"] == "pairs"
    assert v["pairs"] == {"file": str(pairs_file), "format": "lfw", "num_pairs": 8, "folds": 2}
    assert v["num_genuine"] == v["num_impostor"] == 4
    with h5py.File(lfw_h5) as f:
        emb, names = f["embeddings"][...], f["names"].asstr()[...].tolist()
    pairs = resolve_pairs(parse_pairs(LFW_TEXT), 8, names)
    assert v["lfw"] == lfw_accuracy(score_pairs(emb, pairs.a, pairs.b), pairs.same, pairs.folds)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "roc_cmc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "CMC curve written to" in result.stdout


def test_eval_index_pairs_and_all_pairs_default(h, tmp_path, lfw_h5) -> None:
    pairs_file = write(tmp_path / "pairs.txt", "0 1 1\n2 3 1\n0 2 0\n4 6 0\n1 7 0\n")
    out = tmp_path / "r.json"
    h.run_ok("eval", "--faiss", "--embeddings", lfw_h5, "--pairs", pairs_file, "--out", out, "--far", "0.5")
    v = json.loads(out.read_text())["verification"]
    assert (v["num_genuine"], v["num_impostor"], v["pairs"]["format"]) == (2, 3, "index") and "lfw" not in v
    h.run_ok("eval", "--faiss", "--embeddings", lfw_h5, "--out", out, "--overwrite")
    v = json.loads(out.read_text())["verification"]
    assert "protocol" not in v and v["num_genuine"] + v["num_impostor"] == 8 * 7 // 2


@pytest.mark.parametrize(
    ("pairs_text", "extra", "match"),
    [
        ("0 1 1\n0 1\n", [], "pairs.txt line 2: expected 'i j label' (3 fields), got 2 fields"),
        ("0 1 1\n0 8 0\n", [], "pairs.txt line 2: index 8 out of range for 8 embeddings"),
        ("Ann_0001 Zed_0001 0\n", [], "line 1: unknown name 'Zed_0001'"),
        ("0 1 nan\n", [], "line 1: label must be 1 (same) or 0 (different), got 'nan'"),
        (LFW_TEXT.replace("Bob\t1\t3", "Bob\t1\tthree"), [], "line 3: image number must be a positive integer"),
        ("0 1 1\n", ["--pairs-format", "lfw"], "line 1: an LFW pairs file starts with"),
        (None, [], "pairs file"),
    ],
)
def test_eval_bad_pairs_refused(h, tmp_path, lfw_h5, pairs_text, extra, match) -> None:
    pairs_file = tmp_path / "pairs.txt"
    if pairs_text is not None:
        write(pairs_file, pairs_text)
    before = h.snapshot(tmp_path)
    result = h.invoke(
        "eval", "--faiss", "--embeddings", lfw_h5, "--pairs", pairs_file, "--out", tmp_path / "r.json", *extra
    )
    h.assert_refused(result, before, tmp_path, match=match)


def test_eval_names_pairs_need_names(h, tmp_path) -> None:
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["embeddings"] = np.eye(4, dtype=np.float32)
        f["labels"] = np.array([0, 0, 1, 1])
    pairs_file = write(tmp_path / "pairs.txt", "a b 1\n")
    before = h.snapshot(tmp_path)
    result = h.invoke("eval", "--faiss", "--embeddings", path, "--pairs", pairs_file)
    h.assert_refused(result, before, tmp_path, match="the embeddings have no names")


def test_eval_bad_names_dataset_refused(h, tmp_path) -> None:
    path = tmp_path / "bad_names.h5"
    with h5py.File(path, "w") as f:
        f["embeddings"] = np.eye(4, dtype=np.float32)
        f["labels"] = np.array([0, 0, 1, 1])
        f["names"] = np.arange(3)
    before = h.snapshot(tmp_path)
    h.assert_refused(
        h.invoke("eval", "--faiss", "--embeddings", path),
        before,
        tmp_path,
        match="'names' must be a dataset of 4 strings",
    )


def test_eval_existing_cmc_plot_needs_overwrite(h, tmp_path, lfw_h5) -> None:
    (tmp_path / "roc_cmc.png").write_bytes(b"precious")
    before = h.snapshot(tmp_path)
    result = h.invoke("eval", "--faiss", "--embeddings", lfw_h5, "--plot", tmp_path / "roc.png")
    h.assert_refused(result, before, tmp_path, match="roc_cmc.png already exists")
