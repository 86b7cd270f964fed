"""The converged table's pure parts: the budget estimate and its scheduling, short seeds, the convergence
measure and the verdicts written from numbers."""

from __future__ import annotations

import argparse
import math

import pytest

from benchmarks import fashion_converged as fc


def _args(*argv: str) -> argparse.Namespace:
    return fc.parse(list(argv))


def test_estimate_counts_every_job_and_shrinks_with_short_seeds():
    full = fc.estimate(_args("--teacher", "t.pt"))
    short = fc.estimate(_args("--teacher", "t.pt", "--short-seeds", "crd=1,crd-th=1"))
    assert 0 < short < full
    with_teacher = fc.estimate(_args())
    assert with_teacher > full  # training the teacher costs time
    one_job = _args("--teacher", "t.pt", "--jobs", "1")
    total = sum(fc.job_cost(job, one_job) for job in fc.initial_jobs(one_job))
    assert total < fc.estimate(one_job)  # plus the SH-KD teachers and their students, one after another


def test_seed_counts_and_refusals():
    args = _args("--short-seeds", "crd=2", "--seeds", "5")
    assert fc.seeds_of("crd", args) == 2 and fc.seeds_of("kd", args) == 5
    with pytest.raises(SystemExit):
        _args("--short-seeds", "nope=2")
    with pytest.raises(SystemExit):
        _args("--short-seeds", "vanilla=1", "--seeds", "3")  # sh-kd would lack vanilla heads


def test_last_change():
    assert fc.last_change([2.0, 1.0, 0.99]) == pytest.approx(0.01)
    assert fc.last_change([1.0]) == math.inf


def test_verdicts_follow_the_numbers():
    def runs(*top1):
        return [{"top-1": t, "R@1": t, "MAP@R": t, "TAR@1e-3": t, "x-R@1": t} for t in top1]

    results = {"vanilla": runs(0.80, 0.81, 0.80), "kd": runs(0.85, 0.86, 0.85), "th-kd": runs(0.851, 0.849, 0.85)}
    lines = fc.verdicts(results)
    th = next(line for line in lines if "TH-KD vs KD" in line)
    assert "within 2σ" in th and "beyond" not in th
    assert any("`kd` vs vanilla beyond 2σ: top-1 +5.00" in line for line in lines)
    assert any("cross-model retrieval" in line and "`th-kd` − `kd`" in line for line in lines)
