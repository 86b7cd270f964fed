"""fsd's throughput benchmarks: every figure a ratio against a baseline measured in the same run.

    python -m benchmarks.run [--quick] [--device cpu|cuda|auto] [--out-dir DIR] [--sections a,b,...]

Writes ``RESULTS.md`` (the figures against their goals, machine, versions, date) and ``run.json`` (every
number) into ``--out-dir`` (default: this folder) and prints the same markdown. In ``RESULTS.md`` it
replaces only the block between its own markers; other sections (``benchmarks/tar_at_far.py`` writes
``## Exact TAR@FAR at N = 20,000``) are kept.

Sections (``--sections``, default all), one script per subject, each also runnable alone
(``python -m benchmarks.training`` …), which runs this driver with its own sections:

* ``training`` and ``amortisation`` — :mod:`benchmarks.training`: a step of each variant (vanilla, store-KD,
  store-TH-KD, store-CRD, online-KD, online-TH-KD, bare teacher forward) through fsd's own ``StudentRun``;
  whole ``train_student`` runs for k students from one store against k online-teacher runs;
* ``stream`` — :mod:`benchmarks.stream`: StoreStream's rate against a numpy memmap of the same rows, and
  against the rate store-KD training consumes rows;
* ``extraction`` (and ``dask``, added after it unless ``--no-dask``) — :mod:`benchmarks.extraction`;
* ``eval`` — :mod:`benchmarks.eval`: ``retrieval_report`` against pytorch-metric-learning, equal values.

The shared timing, interleaving, machine info and synthetic data are :mod:`benchmarks.harness`; the report
is :mod:`benchmarks.report`. ``--quick`` shrinks every size for the smoke test
(tests/test_benchmarks_smoke.py); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from benchmarks import extraction, stream, training
from benchmarks.eval import bench_eval
from benchmarks.harness import FULL, QUICK, Context, log, machine_info, prepare
from benchmarks.report import publish

HERE = Path(__file__).resolve().parent
SECTIONS = ("training", "stream", "extraction", "amortisation", "eval")

# Each section: (ctx, results so far) → its result dict. stream reads training's consumption rate when
# training ran first; amortisation trains from extraction's store, so it runs extraction when that is missing.
RUNNERS: dict[str, Callable[[Context, dict[str, Any]], dict[str, Any]]] = {
    "training": lambda ctx, results: training.bench_training(ctx),
    "stream": lambda ctx, results: stream.bench_stream(ctx, results.get("training")),
    "extraction": lambda ctx, results: extraction.bench_extraction(ctx),
    "dask": lambda ctx, results: extraction.bench_dask(ctx),
    "amortisation": lambda ctx, results: training.bench_amortisation(ctx),
    "eval": lambda ctx, results: bench_eval(ctx),
}


def parse_sections(text: str, no_dask: bool) -> list[str]:
    sections = [x.strip() for x in text.split(",") if x.strip()]
    unknown = set(sections) - set(SECTIONS) - {"dask"}
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}; valid: {', '.join(SECTIONS)}")
    if "extraction" in sections and "dask" not in sections and not no_dask:
        sections.insert(sections.index("extraction") + 1, "dask")
    return sections


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every chosen section in order, in one temporary work folder; returns the results (run.json's content)."""
    import torch

    from distill.models.inference import select_device

    started = time.perf_counter()
    device = select_device(args.device)
    sizes = QUICK if args.quick else FULL
    if args.eval_n:
        sizes = replace(sizes, eval_n=args.eval_n)
    elif device.type == "cuda" and not args.quick:
        sizes = replace(sizes, eval_n=100_000)
    if args.rounds:
        sizes = replace(sizes, rounds=args.rounds)
    sections = parse_sections(args.sections, args.no_dask)
    amp = device.type == "cuda" and not args.no_amp
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    meta = {"quick": args.quick, "sizes": asdict(sizes), "argv": args.argv, "machine": machine_info(device)}
    results: dict[str, Any] = {"meta": {**meta, "sections": sections}}
    work = Path(tempfile.mkdtemp(prefix="fsd-bench-", dir=args.workdir))
    try:
        ctx = Context(sizes, device, amp, work)
        chosen = set(sections)
        prepare(
            ctx,
            train_data=bool({"training", "stream"} & chosen),
            extract_data=bool({"extraction", "amortisation"} & chosen),
        )
        for name in sections:
            log(f"section {name} ...")
            t0 = time.perf_counter()
            if name == "amortisation" and ctx.ext_store_url is None:
                results["extraction"] = RUNNERS["extraction"](ctx, results)
            results[name] = RUNNERS[name](ctx, results)
            log(f"section {name}: {time.perf_counter() - t0:.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["meta"]["seconds"] = time.perf_counter() - started
    return results


def parser(sections: Sequence[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test; the numbers mean nothing)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--out-dir", type=Path, default=HERE, help="where RESULTS.md and run.json go")
    p.add_argument("--sections", default=",".join(sections), help=f"subset of {','.join(SECTIONS)}")
    p.add_argument("--no-dask", action="store_true", help="skip the dask 2-vs-1 worker comparison")
    p.add_argument("--no-amp", action="store_true", help="on CUDA, train in float32 instead of bf16 autocast")
    p.add_argument("--eval-n", type=int, default=None, help="eval embeddings (default 40,000 CPU, 100,000 CUDA)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds of the training section")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads in this process (default: 1 on the CPU, torch's on CUDA)",
    )
    p.add_argument("--workdir", default=None, help="parent of the temporary work folder")
    return p


def main(argv: list[str] | None = None, sections: Sequence[str] = SECTIONS) -> None:
    """The entry of ``python -m benchmarks.run`` and, with their ``sections``, of each subject script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if tuple(sections) != SECTIONS:
        argv = ["--sections", ",".join(sections), *argv]  # so RESULTS.md names an equivalent benchmarks.run call
    args = parser(sections).parse_args(argv)
    args.argv = argv
    publish(run(args), args.out_dir)


if __name__ == "__main__":
    main()
