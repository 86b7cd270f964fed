"""Exact TAR@FAR over all pairs at N = 20,000: streaming (bounded memory) against materialising every score.

Makes N random clustered embeddings (default 20,000 × 128, 1,000 classes of 20: 190,000 genuine and
199,800,000 impostor pairs), then runs, each in a fresh child process so that its peak RSS is its own:

* ``streaming``: :func:`distill.evaluation.verification.streaming_verification` (CPU, numpy tiles), which returns the
  report and a down-sampled ROC curve;
* ``materialising``: the previous evaluation path, :func:`distill.evaluation.testing.pair_scores` (all 2 × 10^8 scores) +
  :func:`distill.evaluation.metrics.verification_metrics` + :func:`distill.evaluation.metrics.roc_curve`.

It records wall time, peak RSS (``resource.getrusage``) and the RSS before the metric started (so the
difference is what the metric itself needed), asserts that both reports are identical (every TAR, AUC and
EER bit for bit), writes a JSON file and replaces the section ``## Exact TAR@FAR at N = 20,000`` of
``benchmarks/RESULTS.md`` (created if absent; other sections are left alone).

Example: python -m benchmarks.tar_at_far            # the full run (minutes; several GB for the materialising path)
         python -m benchmarks.tar_at_far --n 3000 --no-write   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.results_md import publish

HERE = Path(__file__).resolve().parent

SECTION = "## Exact TAR@FAR at N = 20,000"


def make_data(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class centres N(0, I), samples = centre + N(0, 1.5² I): overlapping genuine/impostor score ranges."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    labels = np.arange(n, dtype=np.int64) % classes
    x = centres[labels] + 1.5 * rng.standard_normal((n, dim), dtype=np.float32)
    return x, labels


def rss_mib() -> float:
    """Current resident set size (Linux /proc), MiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(args: argparse.Namespace) -> None:
    """One method in this (fresh) process; prints one JSON line."""
    from distill.evaluation import verification as ver
    from distill.evaluation.metrics import FARS, roc_curve, verification_metrics
    from distill.evaluation.testing import pair_scores

    x, y = make_data(args.n, args.dim, args.classes, args.seed)
    passes = 0
    if args.worker == "streaming":
        tiles = ver.tiles  # counted where verification looks it up: one call per pass over the pairs

        def counted(*a: Any):
            nonlocal passes
            passes += 1
            return tiles(*a)

        ver.tiles = counted
    before = rss_mib()
    started = time.perf_counter()
    if args.worker == "streaming":
        report, (far, _) = ver.streaming_verification(x, y, FARS, block=args.block, use_gpu=False)
        curve_points = int(far.size)
    else:
        gen, imp = pair_scores(x, y)
        report = verification_metrics(gen, imp, FARS)
        curve_points = int(roc_curve(gen, imp)[0].size)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(
        json.dumps(
            {
                "method": args.worker,
                "seconds": seconds,
                "rss_before_mib": before,
                "peak_rss_mib": peak,
                "metric_rss_mib": peak - before,
                "passes": passes or None,
                "roc_points": curve_points,
                "report": report,
            }
        )
    )


def run_child(method: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.tar_at_far",
        "--worker",
        method,
        "--n",
        str(args.n),
        "--dim",
        str(args.dim),
        "--classes",
        str(args.classes),
        "--seed",
        str(args.seed),
        "--block",
        str(args.block),
    ]
    print(f"[{time.strftime('%H:%M:%S')}] {method} ...", flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=HERE.parent)
    if done.returncode != 0:
        raise SystemExit(f"{method} failed (exit {done.returncode}):\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"[{time.strftime('%H:%M:%S')}] {method}: {result['seconds']:.1f} s, peak RSS {result['peak_rss_mib']:.0f} "
        f"MiB ({result['metric_rss_mib']:+.0f} MiB for the metric)",
        flush=True,
    )
    return result


def markdown(results: dict[str, Any]) -> str:
    s, m = results["streaming"], results["materialising"]
    p, machine = results["params"], results["machine"]
    v = s["report"]
    tars = ", ".join(f"{k}: {'null' if t is None else f'{t:.6f}'}" for k, t in v["tar_at_far"].items())
    intro = (
        f"`python -m benchmarks.tar_at_far` — N = {p['n']:,} embeddings, D = {p['dim']}, {p['classes']:,} "
        f"classes ({v['num_genuine']:,} genuine, {v['num_impostor']:,} impostor pairs), CPU only "
        f"(numpy/OpenBLAS; no GPU on this machine), tiles of {p['block']}² scores. Each method ran in a fresh "
        "process; *metric RSS* = peak RSS − RSS just before the call. Raw numbers: "
        "`benchmarks/tar_at_far.json`."
    )
    streaming = (
        f"| streaming (`streaming_verification`) | {s['seconds']:.1f} | {s['peak_rss_mib']:.0f} | "
        f"{s['metric_rss_mib']:.0f} | {s['passes']} |"
    )
    materialising = (
        f"| materialising (`pair_scores` + `verification_metrics` + `roc_curve`) | {m['seconds']:.1f} | "
        f"{m['peak_rss_mib']:.0f} | {m['metric_rss_mib']:.0f} | 1, then sorts |"
    )
    k = v["num_impostor"] // 10**6  # floor(1e-6 * N_imp)
    values = (
        f"Both reports are identical, bit for bit (asserted): TAR@FAR {tars}; ROC AUC {v['roc_auc']!r}; "
        f"EER {v['eer']!r}. At FAR 1e-06, k = floor(1e-6 × {v['num_impostor']:,}) = {k}, so it is defined."
    )
    where = (
        f"Machine: {machine['cpus']} CPU cores shared with other jobs (load average {machine['loadavg_before']} "
        f"at the start), {machine['platform']}, Python {machine['python']}, numpy {machine['numpy']}. Timings on "
        "a shared machine are indicative only (easily ±30 %); the memory figures are not affected."
    )
    table = [
        "| method | time (s) | peak RSS (MiB) | metric RSS (MiB) | passes over the pairs |",
        "|---|---:|---:|---:|---:|",
        streaming,
        materialising,
    ]
    return "\n".join([SECTION, "", intro, "", *table, "", values, "", where, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--block", type=int, default=2048)
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--json", type=Path, default=HERE / "tar_at_far.json")
    parser.add_argument("--no-write", action="store_true", help="Print only; write neither file.")
    parser.add_argument("--worker", choices=("streaming", "materialising"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    load = os.getloadavg()
    results: dict[str, Any] = {
        "params": {"n": args.n, "dim": args.dim, "classes": args.classes, "seed": args.seed, "block": args.block},
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": [round(v, 2) for v in load],
            "platform": platform.platform(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
    }
    for method in ("streaming", "materialising"):
        results[method] = run_child(method, args)
    same = results["streaming"]["report"] == results["materialising"]["report"]
    results["identical_reports"] = same
    if not same:
        raise SystemExit(
            "the two reports differ:\n"
            + json.dumps({k: results[k]["report"] for k in ("streaming", "materialising")}, indent=2)
        )
    publish(markdown(results), SECTION, results, args.json, args.results, write=not args.no_write)


if __name__ == "__main__":
    main()
