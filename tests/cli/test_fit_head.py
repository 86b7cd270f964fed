"""fsd store fit-head: a head for a head-less store, trained on the stored embeddings only."""

from __future__ import annotations

import numpy as np
import torch

from distill.models.heads import head_from_store
from featstore.store import open_store


def _stored(url):
    store = open_store(url)
    rows = np.concatenate([store.read_chunk(c)[0][:, 0] for c in range(store.num_chunks)])
    return store, rows, store.labels()


def test_fit_head_makes_a_headless_store_teach(tmp_path, artifacts, h):
    url = tmp_path / "headless.zarr"
    extract = ["extract-teacher", "--teacher", artifacts.teacher, "--dataset", "digits", "--out", url, "--quiet"]
    h.run_ok(*extract, "--drop-head", "--views", 2)
    assert not open_store(url).has_head
    out = h.run_ok("store", "fit-head", url, "--head", "linear", "--epochs", 30).stdout
    store, z, labels = _stored(url)
    assert store.has_head and store.meta["head"]["type"] == "linear"
    fitted = store.meta["head"]["fitted"]
    with torch.no_grad():
        predicted = head_from_store(store)(torch.from_numpy(z)).argmax(1).numpy()
    recomputed = float((predicted == labels).mean())
    assert abs(recomputed - fitted["train_accuracy"]) < 1e-9 and f"{100 * recomputed:.2f}%" in out
    # as good on these embeddings as the head the teacher was trained with
    _, original, _ = _stored(artifacts.store)
    teacher_store = open_store(artifacts.store)
    with torch.no_grad():
        teacher_acc = float(
            (head_from_store(teacher_store)(torch.from_numpy(original)).argmax(1).numpy() == labels).mean()
        )
    assert recomputed >= teacher_acc - 0.02, (recomputed, teacher_acc)
    assert fitted["samples"] == 2 * len(labels)  # every view of every row

    before = h.snapshot(url)
    refused = h.invoke("store", "fit-head", url, "--head", "arcface")
    assert refused.exit_code == 2 and "--overwrite" in refused.stderr and h.snapshot(url) == before
    h.run_ok("store", "fit-head", url, "--head", "arcface", "--epochs", 5, "--overwrite")
    assert open_store(url).meta["head"]["type"] == "arcface" and not list(url.glob(".head-*"))
    h.run_ok(*extract, "--drop-head", "--views", 2)  # re-running the extraction resumes (nothing to do)
    student = tmp_path / "student.pt"
    h.run_ok("train-student", "--store", url, "--dataset", "digits", "--out", student, "--epochs", 1, "--quiet")
    assert student.exists()


def test_fit_head_bad_input(tmp_path, artifacts, h):
    refused = h.invoke("store", "fit-head", tmp_path / "missing.zarr")
    assert refused.exit_code == 2 and refused.stderr.startswith("Error: ")
    refused = h.invoke("store", "fit-head", artifacts.store, "--head", "linear", "--head-scale", 10, "--overwrite")
    assert refused.exit_code == 2 and "margin heads" in refused.stderr


def test_head_from_refuses_options_it_would_ignore(tmp_path, artifacts, h):
    out = tmp_path / "t.pt"
    args = ["train-teacher", "--dataset", "digits", "--out", out, "--head-from", artifacts.student, "--epochs", 1]
    for extra in (["--head", "arcface"], ["--head-margin", "0.2"], ["--embedding-dim", "32"]):
        result = h.invoke(*args, *extra)
        assert result.exit_code == 2 and extra[0] in result.stderr and not out.exists(), result.output
