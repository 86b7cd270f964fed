"""``train-student`` with the triplet recipes: class-balanced batches train and are recorded; batches that
cannot hold a positive are refused before any work."""

from __future__ import annotations

import json

import torch


def test_kd_triplet_trains_on_class_balanced_batches(h, work):
    out = work.dir / "triplet.pt"
    h.run_ok("train-student", "--store", work.store, "--dataset", "digits", "--out", out, "--recipe", "kd-triplet",
             "--epochs", 1, "--batch-size", 40, "--samples-per-class", 4, "--eval-split", "none", "--quiet")  # fmt: skip
    log = json.loads(out.with_name("triplet.log.json").read_text())
    assert set(log["weights"]) == {"ce", "kd", "triplet"}
    assert 0 < log["epochs"][0]["loss"]["triplet"] < 2.2  # a cosine triplet term is at most 2 + margin
    extra = torch.load(out, map_location="cpu", weights_only=True)["extra"]
    assert extra["samples_per_class"] == 4


def test_triplet_batches_without_positives_are_refused(h, work):
    before = work.snapshot()
    result = h.invoke("train-student", "--store", work.store, "--dataset", "digits", "--out", work.dir / "t.pt",
                      "--recipe", "th-kd-triplet", "--batch-size", 8, "--quiet")  # fmt: skip
    h.assert_refused(result, before, work.dir, "--samples-per-class")


def test_unbalanceable_samples_per_class_is_refused(h, work):
    before = work.snapshot()
    result = h.invoke("train-student", "--store", work.store, "--dataset", "digits", "--out", work.dir / "t.pt",
                      "--batch-size", 30, "--samples-per-class", 4, "--quiet")  # fmt: skip
    h.assert_refused(result, before, work.dir, "not a multiple")


def test_kd_triplet_trains_with_an_online_teacher(h, work, artifacts):
    out = work.dir / "online.pt"
    h.run_ok("train-student", "--online-teacher", artifacts.teacher, "--dataset", "digits", "--out", out,
             "--recipe", "kd-triplet", "--epochs", 1, "--batch-size", 40, "--samples-per-class", 4,
             "--eval-split", "none", "--quiet")  # fmt: skip
    assert torch.load(out, map_location="cpu", weights_only=True)["extra"]["samples_per_class"] == 4
