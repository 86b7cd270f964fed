"""Bad input through ``fsd``: every case exits 2 with exactly one ``Error: …`` line, no traceback, and leaves
every file in the work directory byte-identical (nothing created, nothing changed, nothing deleted).

Argument templates name files of the per-test work directory: {w} the directory itself, {teacher},
{student}, {store} private copies of the session artefacts.
"""

from __future__ import annotations

import pickle
import shutil

import h5py
import numpy as np
import pytest
import torch

PRECIOUS = b"precious bytes that no refused command may touch\n"


def fill(template: list[str], work) -> list[str]:
    return [a.format(w=work.dir, teacher=work.teacher, student=work.student, store=work.store) for a in template]


def student_cmd(store: str = "{store}", *extra: str, out: str = "{w}/new_student.pt") -> list[str]:
    return ["train-student", "--store", store, "--dataset", "digits", "--out", out, "--epochs", "1", "--quiet", *extra]


def extract_cmd(teacher: str = "{teacher}", *extra: str, out: str = "{w}/new_store.zarr") -> list[str]:
    return ["extract-teacher", "--teacher", teacher, "--dataset", "digits", "--out", out, "--quiet", *extra]


def teacher_cmd(*extra: str, out: str = "{w}/new_teacher.pt") -> list[str]:
    return ["train-teacher", "--dataset", "digits", "--out", out, "--epochs", "1", "--quiet", *extra]


def run_refused(h, work, args: list[str], match: str | None = None, before=None) -> str:
    """Snapshot the work dir, run the command, assert the one-line refusal and an unchanged work dir."""
    before = work.snapshot() if before is None else before
    result = h.invoke(*fill(args, work))
    return h.assert_refused(result, before, work.dir, match)


def setup_not_a_store(work) -> None:
    (work.dir / "plain_dir").mkdir()
    (work.dir / "plain_dir" / "notes.txt").write_bytes(PRECIOUS)
    (work.dir / "text.txt").write_bytes(PRECIOUS)


# -- stores ----------------------------------------------------------------------------------------------
MISSING_STORE = {
    "train-student": student_cmd("{w}/missing.zarr"),
    "eval --store": ["eval", "--faiss", "--store", "{w}/missing.zarr"],
    "eval --gallery-store": [
        "eval",
        "--faiss",
        "--model",
        "{student}",
        "--dataset",
        "digits",
        "--gallery-store",
        "{w}/missing.zarr",
    ],
    "store info": ["store", "info", "{w}/missing.zarr"],
}


@pytest.mark.parametrize("args", MISSING_STORE.values(), ids=MISSING_STORE.keys())
def test_missing_store(h, work, args):
    run_refused(h, work, args, match="does not exist")


NOT_A_STORE = {
    f"{cmd} {target}": template
    for target in ("plain_dir", "text.txt")
    for cmd, template in {
        "train-student": student_cmd("{w}/" + target),
        "eval --store": ["eval", "--faiss", "--store", "{w}/" + target],
        "store info": ["store", "info", "{w}/" + target],
        # an extraction must never adopt (or, with --overwrite, delete) something that is not an fsd store
        "extract --out": extract_cmd(out="{w}/" + target),
        "extract --out --overwrite": extract_cmd("{teacher}", "--overwrite", out="{w}/" + target),
    }.items()
}


@pytest.mark.parametrize("args", NOT_A_STORE.values(), ids=NOT_A_STORE.keys())
def test_not_a_zarr_store(h, work, args):
    setup_not_a_store(work)
    run_refused(h, work, args, match="not a zarr feature store")


def test_zarr_group_without_fsd_attributes(h, work):
    import zarr

    group = zarr.open_group(zarr.storage.LocalStore(work.dir / "other.zarr"), mode="w-")
    group.create_array("x", shape=(3,), dtype="float32")
    run_refused(h, work, student_cmd("{w}/other.zarr"), match="not an fsd feature store")


INCOMPLETE = {
    "train-student": student_cmd("{w}/incomplete.zarr"),
    "eval --store": ["eval", "--faiss", "--store", "{w}/incomplete.zarr"],
    "eval --gallery-store": [
        "eval",
        "--faiss",
        "--model",
        "{student}",
        "--dataset",
        "digits",
        "--gallery-store",
        "{w}/incomplete.zarr",
    ],
}


@pytest.mark.parametrize("args", INCOMPLETE.values(), ids=INCOMPLETE.keys())
def test_incomplete_store(h, work, args):
    shutil.copytree(work.store, work.dir / "incomplete.zarr")
    h.make_incomplete(work.dir / "incomplete.zarr")
    run_refused(h, work, args, match="incomplete")


def test_store_from_another_split_is_refused_for_training(h, work, artifacts):
    shutil.copytree(artifacts.test_store, work.dir / "test_split.zarr")
    line = run_refused(h, work, student_cmd("{w}/test_split.zarr", "--split", "train"), match="extracted from")
    assert "'test'" in line and "'train'" in line


def test_train_store_used_with_the_test_split_is_refused(h, work):
    run_refused(h, work, student_cmd("{store}", "--split", "test"), match="fingerprint")


@pytest.mark.parametrize("variant", ["other-teacher", "other-views", "other-dtype", "other-seed"])
def test_extract_into_a_store_made_differently_is_refused(h, work, artifacts, variant):
    teacher = str(artifacts.other_teacher) if variant == "other-teacher" else "{teacher}"
    views = "1" if variant == "other-views" else "2"
    extra = ["--views", views, "--chunk-rows", "200"]
    if variant == "other-dtype":
        extra += ["--dtype", "float32"]
    if variant == "other-seed":
        extra += ["--seed", "7"]
    run_refused(h, work, extract_cmd(teacher, *extra, out="{store}"), match="refusing to overwrite")


def test_extract_into_an_incomplete_store_of_another_teacher_is_refused(h, work, artifacts):
    h.make_incomplete(work.store)
    line = run_refused(
        h,
        work,
        extract_cmd(str(artifacts.other_teacher), "--views", "2", "--chunk-rows", "200", out="{store}"),
        match="refusing to overwrite",
    )
    assert "teacher" in line


# -- checkpoints -----------------------------------------------------------------------------------------
CHECKPOINT_USERS = {
    "extract --teacher": lambda ckpt: extract_cmd(ckpt),
    "eval --model": lambda ckpt: ["eval", "--faiss", "--model", ckpt, "--dataset", "digits"],
}


@pytest.mark.parametrize("use", CHECKPOINT_USERS.values(), ids=CHECKPOINT_USERS.keys())
def test_missing_checkpoint(h, work, use):
    run_refused(h, work, use("{w}/missing.pt"), match="does not exist")


@pytest.mark.parametrize("use", CHECKPOINT_USERS.values(), ids=CHECKPOINT_USERS.keys())
def test_random_bytes_checkpoint(h, work, use):
    (work.dir / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    run_refused(h, work, use("{w}/random.pt"), match="random.pt")


@pytest.mark.parametrize("keep", [0, 16, 1000, 0.5, -1], ids=lambda k: f"keep={k}")
@pytest.mark.parametrize("use", CHECKPOINT_USERS.values(), ids=CHECKPOINT_USERS.keys())
def test_truncated_checkpoint(h, work, use, keep):
    data = work.teacher.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (len(data) + keep if keep < 0 else keep)
    (work.dir / "truncated.pt").write_bytes(data[:n])
    run_refused(h, work, use("{w}/truncated.pt"), match="truncated.pt")


class _WritesMarker:
    """Unpickling this object calls ``open(marker, "w")``, i.e. runs code that creates a file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("fmt", ["zip", "legacy", "plain-pickle"])
@pytest.mark.parametrize("use", CHECKPOINT_USERS.values(), ids=CHECKPOINT_USERS.keys())
def test_pickle_bearing_checkpoint_never_runs_code(h, work, tmp_path, use, fmt):
    marker = tmp_path / "PWNED"
    payload = {"format": 1, "kind": "teacher", "state_dict": {}, "boom": _WritesMarker(str(marker))}
    path = work.dir / "evil.pt"
    if fmt == "zip":
        torch.save(payload, path)
    elif fmt == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload))
    assert not marker.exists()
    run_refused(h, work, use("{w}/evil.pt"), match="not a safe fsd checkpoint")
    assert not marker.exists(), "loading a checkpoint executed pickled code"


def test_student_checkpoint_as_teacher_is_refused(h, work):
    run_refused(h, work, extract_cmd("{student}"), match="student checkpoint")


def test_torch_file_that_is_not_an_fsd_checkpoint(h, work):
    torch.save({"weights": torch.zeros(3)}, work.dir / "plain.pt")
    run_refused(h, work, extract_cmd("{w}/plain.pt"), match="not an fsd checkpoint")


def _tamper(work, name: str, **changes) -> None:
    payload = torch.load(work.teacher, weights_only=True)
    for key, value in changes.items():
        if value is KeyError:
            del payload[key]
        else:
            payload[key] = value
    torch.save(payload, work.dir / name)


@pytest.mark.parametrize("use", CHECKPOINT_USERS.values(), ids=CHECKPOINT_USERS.keys())
def test_checkpoint_with_missing_field(h, work, use):
    _tamper(work, "nokind.pt", kind=KeyError)
    run_refused(h, work, use("{w}/nokind.pt"), match="nokind.pt")


@pytest.mark.parametrize("use", CHECKPOINT_USERS.values(), ids=CHECKPOINT_USERS.keys())
def test_checkpoint_whose_weights_do_not_fit_its_arch(h, work, use):
    _tamper(work, "nosd.pt", state_dict={"w": torch.zeros(2)})
    run_refused(h, work, use("{w}/nosd.pt"), match="do not fit")


@pytest.mark.parametrize("use", CHECKPOINT_USERS.values(), ids=CHECKPOINT_USERS.keys())
def test_checkpoint_with_bad_model_config(h, work, use):
    _tamper(work, "badcfg.pt", model_config={"bogus": 1})
    run_refused(h, work, use("{w}/badcfg.pt"))


def test_teacher_checkpoint_without_image_shape(h, work):
    _tamper(work, "noshape.pt", dataset={"spec": "digits", "split": "train"})
    run_refused(h, work, extract_cmd("{w}/noshape.pt"))


# -- embeddings files ------------------------------------------------------------------------------------
def _h5(path, **datasets) -> None:
    with h5py.File(path, "w") as handle:
        for name, value in datasets.items():
            handle[name] = value


_RNG = np.random.default_rng(0)
_EMB = _RNG.standard_normal((40, 8)).astype(np.float32)
_LAB = np.arange(40) % 4
_NAN = _EMB.copy()
_NAN[3, 2] = np.nan
H5_CASES = {
    "embeddings 1-D": (dict(embeddings=_EMB[:, 0], labels=_LAB), "do not match"),
    "labels length mismatch": (dict(embeddings=_EMB, labels=_LAB[:-1]), "do not match"),
    "labels 2-D": (dict(embeddings=_EMB, labels=_LAB[:, None]), "do not match"),
    "missing labels": (dict(embeddings=_EMB), "labels"),
    "missing embeddings": (dict(labels=_LAB), "embeddings"),
    "NaN embeddings": (dict(embeddings=_NAN, labels=_LAB), "nan"),
    "inf embeddings": (dict(embeddings=np.full_like(_EMB, np.inf), labels=_LAB), "infinite"),
    "float labels": (dict(embeddings=_EMB, labels=_LAB.astype(np.float32)), "integers"),
    "one sample": (dict(embeddings=_EMB[:1], labels=_LAB[:1]), "at least 2"),
}


@pytest.mark.parametrize("datasets,match", H5_CASES.values(), ids=H5_CASES.keys())
def test_bad_embeddings_h5(h, work, datasets, match):
    _h5(work.dir / "bad.h5", **datasets)
    run_refused(h, work, ["eval", "--faiss", "--embeddings", "{w}/bad.h5", "--out", "{w}/r.json"], match=match)


@pytest.mark.parametrize("content", [PRECIOUS, b""], ids=["text", "empty"])
def test_embeddings_file_that_is_not_hdf5(h, work, content):
    (work.dir / "emb.h5").write_bytes(content)
    run_refused(h, work, ["eval", "--faiss", "--embeddings", "{w}/emb.h5"], match="not an HDF5 file")


def test_missing_embeddings_file(h, work):
    run_refused(h, work, ["eval", "--faiss", "--embeddings", "{w}/missing.h5"], match="does not exist")


# -- recipes, losses, datasets ---------------------------------------------------------------------------
LOSS_CASES = {
    "unknown recipe": (["--recipe", "no-such-recipe"], "unknown recipe"),
    "unknown loss": (["--loss", "ce=1,bogus=2"], "unknown loss"),
    "item without =": (["--loss", "ce"], "NAME=WEIGHT"),
    "weight not a number": (["--loss", "ce=abc"], "not a number"),
    "empty name": (["--loss", "=1"], "unknown loss"),
    "only commas": (["--loss", ",,"], "empty"),
    "negative weight": (["--loss", "ce=-1"], "≥ 0"),
    "nan weight": (["--loss", "kd=nan"], "finite"),
    "all weights zero": (["--recipe", "vanilla", "--loss", "ce=0"], "no loss term"),
}


@pytest.mark.parametrize("extra,match", LOSS_CASES.values(), ids=LOSS_CASES.keys())
def test_bad_recipe_or_loss(h, work, extra, match):
    run_refused(h, work, student_cmd("{store}", *extra), match=match)


DATASET_USERS = {
    "train-teacher": lambda spec: ["train-teacher", "--dataset", spec, "--out", "{w}/t.pt", "--epochs", "1"],
    "extract-teacher": lambda spec: [
        "extract-teacher",
        "--teacher",
        "{teacher}",
        "--dataset",
        spec,
        "--out",
        "{w}/s.zarr",
    ],
    "train-student": lambda spec: ["train-student", "--store", "{store}", "--dataset", spec, "--out", "{w}/s.pt"],
    "eval --model": lambda spec: ["eval", "--faiss", "--model", "{teacher}", "--dataset", spec],
}


@pytest.mark.parametrize("spec", ["imagenet", "digits:extra", ""], ids=["unknown", "digits-with-arg", "empty"])
@pytest.mark.parametrize("use", DATASET_USERS.values(), ids=DATASET_USERS.keys())
def test_unknown_dataset_spec(h, work, use, spec):
    run_refused(h, work, use(spec), match="dataset")


def test_unknown_arch(h, work):
    run_refused(h, work, teacher_cmd("--arch", "resnet9000"), match="unknown model")


# -- existing outputs ------------------------------------------------------------------------------------
EXISTING_OUTPUT = {
    "train-teacher --out": teacher_cmd(out="{w}/exists.out"),
    "train-student --out": student_cmd("{store}", out="{w}/exists.out"),
    "eval --out": ["eval", "--faiss", "--store", "{store}", "--out", "{w}/exists.out"],
    "eval --plot": ["eval", "--faiss", "--store", "{store}", "--plot", "{w}/exists.out"],
}


@pytest.mark.parametrize("args", EXISTING_OUTPUT.values(), ids=EXISTING_OUTPUT.keys())
def test_existing_output_without_overwrite(h, work, args):
    (work.dir / "exists.out").write_bytes(PRECIOUS)
    run_refused(h, work, args, match="already exists")
    assert (work.dir / "exists.out").read_bytes() == PRECIOUS


def test_extract_over_a_store_made_by_the_same_teacher_with_overwrite_is_not_refused(h, work):
    """Control for the refusals above: --overwrite does replace an fsd store (so refusals are deliberate)."""
    result = h.invoke(*fill(extract_cmd("{teacher}", "--views", "1", "--overwrite", out="{store}"), work))
    assert result.exit_code == 0, h.describe(result)


def test_existing_student_log_without_overwrite(h, work):
    (work.dir / "new_student.log.json").write_bytes(PRECIOUS)
    run_refused(h, work, student_cmd("{store}"), match="already exists")


# -- sizes -----------------------------------------------------------------------------------------------
SIZE_CASES = {
    "train-teacher --epochs 0": (teacher_cmd("--epochs", "0"), "epochs"),
    "train-teacher --epochs -1": (teacher_cmd("--epochs", "-1"), "epochs"),
    "train-teacher --batch-size 0": (teacher_cmd("--batch-size", "0"), "batch-size"),
    "train-teacher --lr 0": (teacher_cmd("--lr", "0"), "lr"),
    "train-student --epochs 0": (student_cmd("{store}", "--epochs", "0"), "epochs"),
    "train-student --batch-size 0": (student_cmd("{store}", "--batch-size", "0"), "batch-size"),
    "train-student --batch-size -5": (student_cmd("{store}", "--batch-size", "-5"), "batch-size"),
    "train-student --temperature 0": (student_cmd("{store}", "--temperature", "0"), "temperature"),
    "extract --views 0": (extract_cmd("{teacher}", "--views", "0"), "views"),
    "extract --views -2": (extract_cmd("{teacher}", "--views", "-2"), "views"),
    "extract --chunk-rows 0": (extract_cmd("{teacher}", "--chunk-rows", "0"), "chunk-rows"),
    "extract --batch-size 0": (extract_cmd("{teacher}", "--batch-size", "0"), "batch-size"),
}


@pytest.mark.parametrize("args,match", SIZE_CASES.values(), ids=SIZE_CASES.keys())
def test_non_positive_sizes(h, work, args, match):
    run_refused(h, work, args, match=match)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors:UserWarning")
@pytest.mark.parametrize("dim", ["0", "-3"])
def test_non_positive_embedding_dim(h, work, dim):
    run_refused(h, work, teacher_cmd("--embedding-dim", dim), match="embedding-dim")


# -- eval sources and options ----------------------------------------------------------------------------
EVAL_CASES = {
    "no source": (["eval", "--faiss"], "exactly one"),
    "no source, with --out": (["eval", "--faiss", "--out", "{w}/r.json"], "exactly one"),
    "model + store": (
        ["eval", "--faiss", "--model", "{teacher}", "--dataset", "digits", "--store", "{store}"],
        "exactly one",
    ),
    "store + embeddings": (["eval", "--faiss", "--store", "{store}", "--embeddings", "{w}/x.h5"], "exactly one"),
    "all three": (
        [
            "eval",
            "--faiss",
            "--model",
            "{teacher}",
            "--dataset",
            "digits",
            "--store",
            "{store}",
            "--embeddings",
            "{w}/x.h5",
        ],
        "exactly one",
    ),
    "model without dataset": (["eval", "--faiss", "--model", "{teacher}"], "--dataset"),
    "far not numbers": (["eval", "--faiss", "--store", "{store}", "--far", "a,b"], "--far"),
    "far out of range": (["eval", "--faiss", "--store", "{store}", "--far", "0,2"], "--far"),
    "gallery of another dim": (
        ["eval", "--faiss", "--embeddings", "{w}/small.h5", "--gallery-store", "{store}", "--out", "{w}/r.json"],
        "dim",
    ),
}


@pytest.mark.parametrize("args,match", EVAL_CASES.values(), ids=EVAL_CASES.keys())
def test_bad_eval_usage(h, work, args, match):
    _h5(work.dir / "small.h5", embeddings=_EMB, labels=_LAB)
    run_refused(h, work, args, match=match)


def test_click_usage_error_is_one_error_line_and_exit_2(h, work):
    """click's own usage errors (bad choice) also follow the contract: exit 2, one Error: line."""
    run_refused(h, work, ["eval", "--faiss", "--store", "{store}", "--split", "validation"], match="--split")


def test_refused_commands_leave_no_partial_files(h, work):
    """A training run refused late (after the store was opened) leaves no *.partial temporaries around."""
    run_refused(h, work, student_cmd("{store}", "--arch", "no-such-arch"), match="unknown model")
    assert not [p for p in work.dir.rglob("*") if p.name.endswith(".partial")]


# -- output paths blocked by a file ----------------------------------------------------------------------
BLOCKED_OUTPUT = {
    "extract-teacher": extract_cmd(out="{w}/text.txt/new_store.zarr"),
    "train-teacher": teacher_cmd(out="{w}/text.txt/new_teacher.pt"),
    "train-student": student_cmd(out="{w}/text.txt/new_student.pt"),
    "store export": ["store", "export", "{store}", "--out", "{w}/text.txt/out.h5"],
    "eval --out": ["eval", "--faiss", "--store", "{store}", "--out", "{w}/text.txt/report.json"],
}


@pytest.mark.parametrize("args", BLOCKED_OUTPUT.values(), ids=BLOCKED_OUTPUT.keys())
def test_output_whose_folder_is_a_file(h, work, args):
    """A file where the output's folder should be: one Error line (it was a FileExistsError traceback)."""
    (work.dir / "text.txt").write_bytes(PRECIOUS)
    run_refused(h, work, args, match="cannot create the folder")


HEAD_OPTIONS = {
    "scale on a linear head": (teacher_cmd("--head-scale", "10"), "apply to margin heads"),
    "zero cosface scale": (teacher_cmd("--head", "cosface", "--head-scale", "0"), "positive scale"),
    "negative arcface margin": (teacher_cmd("--head", "arcface", "--head-margin", "-0.1"), "margin in [0"),
}


@pytest.mark.parametrize(("args", "match"), HEAD_OPTIONS.values(), ids=HEAD_OPTIONS.keys())
def test_bad_head_options(h, work, args, match):
    run_refused(h, work, args, match=match)


def test_a_last_batch_of_one_sample_is_left_out(h, work):
    """1347 digits at batch 673 leave one sample over: BatchNorm cannot train on it (it was a traceback)."""
    h.run_ok(*fill(teacher_cmd("--batch-size", "673"), work))
    h.run_ok(*fill(student_cmd("{store}", "--batch-size", "673"), work))
