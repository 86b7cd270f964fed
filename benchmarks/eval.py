"""Retrieval evaluation speed: ``retrieval_report`` against pytorch-metric-learning's AccuracyCalculator.

    python -m benchmarks.eval [--quick] [--device cpu|cuda] [--eval-n N] [--out-dir DIR]

(the same as ``python -m benchmarks.run --sections eval``). P@1, R-precision and MAP@R at
k = max_bin_count on the same clustered, L2-normalised embeddings; the values must agree to 1e-6 (the run
stops otherwise), so the ratio compares two computations of the same numbers.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.harness import Context, clustered_embeddings, log, median

TOLERANCE = 1e-6


def bench_eval(ctx: Context) -> dict[str, Any]:
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    from distill.evaluation import EmbeddingSet, retrieval_report
    from distill.evaluation.search import faiss_gpu_available

    s = ctx.sizes
    x, y = clustered_embeddings(s.eval_n, s.eval_dim, s.eval_classes, seed=0)
    use_gpu = ctx.device.type == "cuda" and faiss_gpu_available()
    calc = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"), k="max_bin_count", device=ctx.device
    )
    times: dict[str, list[float]] = {"fsd": [], "pml": []}
    values: dict[str, dict[str, float]] = {}
    for rep in range(s.eval_reps):
        for name in ("fsd", "pml") if rep % 2 == 0 else ("pml", "fsd"):
            t0 = time.perf_counter()
            if name == "fsd":
                r = retrieval_report(EmbeddingSet(x, y), use_gpu=use_gpu)
                values["fsd"] = {
                    "precision_at_1": r["precision_at_1"],
                    "r_precision": r["r_precision"],
                    "map_at_r": r["map_at_r"],
                }
            else:
                query = torch.from_numpy(x).to(ctx.device) if ctx.device.type == "cuda" else x
                r = calc.get_accuracy(query, y)
                values["pml"] = {
                    "precision_at_1": float(r["precision_at_1"]),
                    "r_precision": float(r["r_precision"]),
                    "map_at_r": float(r["mean_average_precision_at_r"]),
                }
            times[name].append(time.perf_counter() - t0)
        log(f"  eval rep {rep + 1}: fsd {times['fsd'][-1]:.1f} s, pml {times['pml'][-1]:.1f} s")
    diff = max(abs(values["fsd"][k] - values["pml"][k]) for k in values["fsd"])
    if diff > TOLERANCE:
        raise RuntimeError(f"fsd and pytorch-metric-learning disagree by {diff:.2e}: {values}")
    per_rep = [f / p for f, p in zip(times["fsd"], times["pml"])]
    return {
        "n": s.eval_n,
        "dim": s.eval_dim,
        "classes": s.eval_classes,
        "faiss_gpu": use_gpu,
        "fsd_seconds": times["fsd"],
        "pml_seconds": times["pml"],
        "fsd_vs_pml": median(per_rep),
        "values": values,
        "max_abs_difference": diff,
        "values_equal": True,
    }


if __name__ == "__main__":
    from benchmarks.run import main

    main(sections=("eval",))
