"""Tests for the one-pass strategy of streaming_verification (distill.evaluation.one_pass, tile_counts): windows,
tail and the extra passes when a window misses each give the materialising path's report bit for bit; the
torch fold on the CPU equals the numpy one; the numpy fold without numba equals the compiled one."""

from __future__ import annotations

import numpy as np
import pytest

from distill.evaluation import one_pass, pair_tiles, tile_counts
from distill.evaluation import verification as ver
from distill.evaluation.metrics import FARS, verification_metrics
from distill.evaluation.testing import pair_scores
from distill.evaluation.verification import streaming_verification, tiled_pair_scores

FARS_ALL = (*FARS, 2.5e-3, 0.3, 0.5, 1.0)


def continuous(
    n: int = 700, dim: int = 24, classes: int = 20, seed: int = 0, noise: float = 1.3
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n)
    x = (rng.normal(size=(classes, dim))[y] + noise * rng.normal(size=(n, dim))).astype(np.float32)
    return x, y


def exact(n: int, seed: int) -> np.ndarray:
    """Rows whose float32 cosines are exact in any summation order (entries ±1 on 4 or all 16 coordinates)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 16), dtype=np.float32)
    for i in range(n):
        cols = rng.choice(16, size=4, replace=False) if rng.random() < 0.5 else np.arange(16)
        x[i, cols] = rng.choice([-1.0, 1.0], size=cols.size)
    return x


def count_passes(monkeypatch) -> list[int]:
    passes: list[int] = []
    tiles = ver.tiles
    monkeypatch.setattr(ver, "tiles", lambda *a: passes.append(1) or tiles(*a))
    return passes


@pytest.mark.parametrize(("bins", "block"), [(1 << 16, 64), (1 << 20, 256)])
def test_windows_and_tail_give_the_exact_report_in_one_pass(bins: int, block: int, monkeypatch) -> None:
    x, y = continuous(noise=0.7)  # overlapping, but the mixed buckets fit in the window budget
    gen, imp = tiled_pair_scores(x, y, block)
    passes = count_passes(monkeypatch)
    # a small tail: most thresholds and the mixed buckets fall below the cut, in windows
    report, _ = streaming_verification(x, y, FARS_ALL, block=block, bins=bins, use_gpu=False, _tail_cap=2000)
    assert report == verification_metrics(gen, imp, FARS_ALL)
    assert len(passes) == 1  # the whole sample is the data here: every window is where it is needed


@pytest.mark.parametrize(("tail_cap", "budget"), [(2000, 1 << 24), (1, 1 << 27)])
def test_a_missed_window_costs_a_pass_not_exactness(tail_cap: int, budget: int, monkeypatch) -> None:
    # too few windows (64 for hundreds of mixed buckets) or a tail that overflows:
    # extra window-only passes
    x, y = continuous(seed=1)
    gen, imp = tiled_pair_scores(x, y, 128)
    passes = count_passes(monkeypatch)
    report, (far, tar) = streaming_verification(
        x, y, FARS_ALL, block=128, use_gpu=False, _tail_cap=tail_cap, _window_budget=budget
    )
    assert report == verification_metrics(gen, imp, FARS_ALL)
    assert len(passes) >= 2
    assert far[0] == tar[0] == 0.0 and far[-1] == tar[-1] == 1.0


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize(("tail_cap", "budget"), [(1 << 22, 1 << 27), (2000, 1 << 24)])
def test_any_number_of_tile_threads_gives_the_same_report(workers: int, tail_cap: int, budget: int, monkeypatch):
    # each thread scores whole tiles with one BLAS thread into its own counts; the summed counts are exact,
    # in one pass and when windows miss (the second case: extra passes, sharded the same way)
    monkeypatch.setattr(pair_tiles, "_blas_threads", lambda: workers)
    x, y = continuous(seed=2)
    gen, imp = tiled_pair_scores(x, y, 96)
    run = streaming_verification(x, y, FARS_ALL, block=96, use_gpu=False, _tail_cap=tail_cap, _window_budget=budget)
    assert pair_tiles.make_backend(x, y, False, None).workers == workers
    assert run[0] == verification_metrics(gen, imp, FARS_ALL)
    monkeypatch.setattr(pair_tiles, "_blas_threads", lambda: 1)
    single = streaming_verification(x, y, FARS_ALL, block=96, use_gpu=False, _tail_cap=tail_cap, _window_budget=budget)
    assert run[0] == single[0]
    np.testing.assert_array_equal(run[1][0], single[1][0])
    np.testing.assert_array_equal(run[1][1], single[1][1])


def test_merged_counts_keep_a_part_overflow_visible() -> None:
    slots = np.full(16, -1, dtype=np.int32)
    parts = [tile_counts.TileCounts.empty(16, 2, slots, np.int32, 3, 0) for _ in range(2)]
    parts[0].gen[:2], parts[0].gen_filled = [5, 6], 2
    parts[1].gen[:2], parts[1].gen_filled = [7, 8], 3  # one genuine key did not fit
    parts[0].tail[:3], parts[0].tail_filled, parts[0].tail_seen = [1, 2, 3], 3, 4  # one tail key did not fit
    parts[1].tail[:1], parts[1].tail_filled, parts[1].tail_seen = [9], 1, 1
    parts[0].hist4[0, 1], parts[1].hist4[2, 1] = 4, 5
    merged = tile_counts.TileCounts.merged(parts)
    assert merged.genuine_keys().tolist() == [5, 6, 7, 8] and merged.gen_filled == 5
    assert merged.tail_keys().tolist() == [1, 2, 3, 9] and merged.tail_overflowed
    assert merged.hist[1] == 9


def test_torch_fold_on_the_cpu_equals_numpy() -> None:
    torch = pytest.importorskip("torch")
    x = exact(220, seed=7)
    y = np.random.default_rng(7).integers(0, 7, size=220)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for cap in (10**6, 200):
            numpy_side = streaming_verification(x, y, FARS_ALL, block=50, use_gpu=False, _tail_cap=cap)
            torch_side = streaming_verification(x, y, FARS_ALL, block=50, _torch_device="cpu", _tail_cap=cap)
            assert torch_side[0] == numpy_side[0] == verification_metrics(*pair_scores(x, y), FARS_ALL)
            assert np.array_equal(torch_side[1][0], numpy_side[1][0])
            assert np.array_equal(torch_side[1][1], numpy_side[1][1])
    finally:
        torch.set_num_threads(threads)


def test_numpy_fold_without_numba_equals_the_kernel(monkeypatch) -> None:
    x, y = continuous(n=400, seed=2)
    gen, imp = tiled_pair_scores(x, y, 90)
    compiled = streaming_verification(x, y, FARS_ALL, block=90, use_gpu=False, _tail_cap=500)
    monkeypatch.setattr(tile_counts, "_KERNEL", [None])
    assert not tile_counts.have_numba()
    plain = streaming_verification(x, y, FARS_ALL, block=90, use_gpu=False, _tail_cap=500)
    assert plain[0] == compiled[0] == verification_metrics(gen, imp, FARS_ALL)
    assert np.array_equal(plain[1][0], compiled[1][0])


def test_fold_keys_histogram_and_genuine_match_numpy() -> None:
    rng = np.random.default_rng(3)
    s = rng.normal(scale=0.2, size=(37, 41)).astype(np.float32)
    s[0, :5] = [-0.0, 0.0, -0.0, 1.0, -1.0]
    yi, yj = rng.integers(0, 3, 37), rng.integers(0, 3, 41)
    counts = tile_counts.TileCounts.empty(1 << 12, 2000, np.full(1 << 12, -1), np.int64, 0, tile_counts.NO_TAIL)
    tile_counts.fold_numpy(counts, s, yi, yj, diag=False)
    keys = ver.float32_keys(s)
    assert np.array_equal(counts.hist, np.bincount((keys >> 20).ravel(), minlength=1 << 12))
    assert np.array_equal(np.sort(counts.genuine_keys()), np.sort(keys[yi[:, None] == yj[None, :]]))
    assert counts.tail_filled == counts.tail_seen == 0


def test_plan_puts_windows_around_each_threshold() -> None:
    x, y = continuous(n=500, seed=4)
    from distill.evaluation.validate import normalised_known

    xn, yn = normalised_known(x, y)
    gen, imp = tiled_pair_scores(x, y, 2048)
    checked = [("1e-01", 0.1), ("1e-02", 0.01)]
    slots, cut = one_pass._plan(xn, yn, gen.size, imp.size, checked, 1 << 16, 16, 200, 512)
    ordered = np.sort(ver.float32_keys(imp))[::-1]
    for _, far in checked:
        threshold = int(ordered[int(far * imp.size)])  # the (k+1)-th largest impostor
        assert threshold < cut and slots[threshold >> 16] >= 0
