"""Store dtypes on digits: size on disk, reconstruction error, and what a student learns from each.

Trains one digits teacher (``convnet_teacher``), extracts a store of the train split for every store dtype
(float32, float16, bfloat16, int8; same teacher, views and view seed), measures

* bytes per embedding on disk (compressed embeddings, plus the per-row scales for int8, / (N × V)),
* the compression ratio against raw float32 (N × V × D × 4 bytes),
* max / mean absolute reconstruction error and the minimum row cosine against the float32 store,
* the live check of ``fsd store verify --teacher`` over every row (minimum cosine, in the JSON),

then trains the default student (``convnet_student``, recipe ``th-kd``) from each store for each seed and
evaluates top-1 and R@1 on the digits test split (``distill.evaluation.run_eval``, as ``fsd eval``): mean ± sample std over seeds.

The markdown table replaces the text between ``<!-- dtype-table:start -->`` and ``<!-- dtype-table:end -->``
in ``--out`` (docs/store.md; the rest of the document is hand-written), and every number goes to a JSON
file (default: benchmarks/store_dtypes.json). The teacher and stores in ``--workdir`` are reused when they
exist (an interrupted run resumes); students are always retrained.

Example: python -m benchmarks.store_dtypes --seeds 3 --epochs 20 --workdir /tmp/dtypes --out docs/store.md
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.results_md import replace_marked, write_json
from distill.evaluation import EvalRequest, run_eval
from distill.models.checkpoint import file_sha256, load_checkpoint, load_teacher_source
from distill.training.student import StudentConfig, train_student
from distill.training.teacher import TeacherConfig, train_teacher
from featstore.codecs import DTYPES
from featstore.datasets import load_dataset
from featstore.extract import extract_teacher
from featstore.store import FeatureStore, open_store
from featstore.verify import LIVE_COSINE_THRESHOLDS, verify_live

START, END = "<!-- dtype-table:start -->", "<!-- dtype-table:end -->"
ORDER = ("float32", "float16", "bfloat16", "int8")
DATASET = "digits"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def all_rows(store: FeatureStore) -> np.ndarray:
    return store.read_rows(0, store.shape.num_samples)[0]


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def score(path: Path, device: str) -> dict[str, float]:
    report = run_eval(EvalRequest(model=path, dataset=DATASET, device=device)).report
    return {"top1": float(report["classification"]["top1"]), "r1": float(report["retrieval"]["recall_at_k"]["1"])}


def mean_std(values: list[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
        "values": [float(v) for v in arr],
    }


def one_minus(cosine: float) -> str:
    gap = 1.0 - cosine
    return "0" if gap < 1e-12 else f"{gap:.1e}"  # float64 rounding of an exact match reads as 0


def pct(stat: dict[str, Any]) -> str:
    if len(stat.get("values", [0, 0])) < 2:  # one seed has no spread: "± 0.00" would claim one
        return f"{100 * stat['mean']:.2f}"
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def markdown(results: dict[str, Any]) -> str:
    setup = results["setup"]
    teacher = results["teacher"]
    lines = [
        (
            f"Digits train split: N = {setup['samples']} samples × V = {setup['views']} views × D = {setup['dim']} dims "
            f"(`{setup['teacher_arch']}`, {setup['teacher_epochs']} epochs; raw float32 = {4 * setup['dim']} bytes per "
            f"embedding). Students: `{setup['student_arch']}`, recipe `{setup['recipe']}`, {setup['student_epochs']} "
            f"epochs, seeds {', '.join(map(str, setup['seeds']))}; top-1 and R@1 on the digits test split "
            f"({setup['test_samples']} samples), mean ± sample std over seeds, in %. Errors and cosines are against the "
            "float32 store (the teacher's exact output)."
        ),
        "",
        (
            "| dtype | bytes / embedding | compression vs float32 | max abs error | mean abs error | 1 − min cosine "
            "| student top-1 (%) | student R@1 (%) |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for dtype in ORDER:
        row = results["dtypes"][dtype]
        lines.append(
            f"| {dtype} | {row['bytes_per_embedding']:.1f} | {row['compression_ratio']:.2f}× "
            f"| {row['max_abs_error']:.2e} | {row['mean_abs_error']:.2e} | {one_minus(row['min_cosine'])} "
            f"| {pct(row['student']['top1'])} | {pct(row['student']['r1'])} |"
        )
    lines += [
        "",
        (
            f"Teacher on the same test split: top-1 {100 * teacher['top1']:.2f}, R@1 {100 * teacher['r1']:.2f}. "
            f"Mean |embedding value| {results['mean_abs_value']:.3f}. "
            f"Generated by `python -m benchmarks.store_dtypes` ({setup['date']}, torch {setup['torch']}, "
            f"{setup['machine']}); raw numbers in `benchmarks/store_dtypes.json`."
        ),
    ]
    return "\n".join(lines)


def write_table(doc: Path, table: str) -> None:
    """Replace the marked block of ``doc`` (append a marked block when the markers are absent)."""
    replace_marked(doc, START, END, table)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3, help="students per dtype (seeds 0 … N-1)")
    parser.add_argument("--epochs", type=int, default=20, help="student epochs")
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--recipe", default="th-kd")
    parser.add_argument("--workdir", type=Path, default=None, help="teacher, stores and students go here")
    parser.add_argument("--out", type=Path, default=Path("docs/store.md"), help="markdown doc to update")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_suffix(".json"), help="raw results")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="only rewrite the table in --out from an existing --json (no training)",
    )
    args = parser.parse_args(argv)
    if args.render_only:
        return args
    if args.seeds < 1 or args.epochs < 1 or args.teacher_epochs < 1 or args.views < 1:
        parser.error("--seeds, --epochs, --teacher-epochs and --views must be positive")
    if args.workdir is None:
        parser.error("--workdir is required (unless --render-only)")
    return args


def ensure_teacher(teacher_path: Path, args: argparse.Namespace) -> None:
    """Train the digits teacher unless ``teacher_path`` already holds one (an interrupted run resumes)."""
    if teacher_path.exists():
        log(f"reusing teacher {teacher_path}")
        return
    log(f"training teacher ({args.teacher_epochs} epochs)")
    result = train_teacher(
        TeacherConfig(dataset=DATASET, out=teacher_path, epochs=args.teacher_epochs, device=args.device, progress=False)
    )
    log(f"teacher: train acc {result.train_accuracy:.4f}, test acc {result.test_accuracy:.4f}, {result.seconds:.0f} s")


def measure_store(store: FeatureStore, reference: np.ndarray, teacher, train, device: str) -> dict[str, Any]:
    """Size on disk, reconstruction error against the float32 store, and the live check over every row."""
    n, v, _ = reference.shape
    raw, stored = store.nbytes_embeddings()
    decoded = all_rows(store)
    error = np.abs(decoded - reference)
    live = verify_live(store, teacher, train, n * v, seed=0, device=device)
    row = {
        "bytes_stored_embeddings": stored,
        "bytes_raw_float32": raw,
        "bytes_store_total": store.nbytes_stored(),
        "bytes_per_embedding": stored / (n * v),
        "compression_ratio": raw / stored,
        "chunk_rows": store.chunk_rows,
        "chunks": store.num_chunks,
        "max_abs_error": float(error.max()),
        "mean_abs_error": float(error.mean()),
        "min_cosine": float(row_cosines(decoded, reference).min()),
        "live_check": live.to_dict(),
        "live_threshold": LIVE_COSINE_THRESHOLDS[store.dtype],
    }
    log(
        f"{store.dtype}: {row['bytes_per_embedding']:.1f} B/emb, {row['compression_ratio']:.2f}×, "
        f"max|Δ| {row['max_abs_error']:.2e}, min cos {row['min_cosine']:.8f}, {live.line()}"
    )
    return row


def student_scores(dtype: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One student per seed from the ``dtype`` store: mean ± std of top-1 and R@1 on the test split."""
    scores = []
    for seed in range(args.seeds):
        out = work / f"student_{dtype}_seed{seed}.pt"
        result = train_student(
            StudentConfig(
                store=str(work / f"store_{dtype}.zarr"),
                dataset=DATASET,
                out=out,
                recipe=args.recipe,
                epochs=args.epochs,
                seed=seed,
                device=args.device,
                overwrite=True,
                progress=False,
            )
        )
        scores.append(score(out, args.device))
        log(
            f"student {dtype} seed {seed}: top-1 {scores[-1]['top1']:.4f}, R@1 {scores[-1]['r1']:.4f} "
            f"({result.seconds:.0f} s)"
        )
    return {"top1": mean_std([s["top1"] for s in scores]), "r1": mean_std([s["r1"] for s in scores])}


def describe_setup(reference: np.ndarray, teacher_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    n, v, d = reference.shape
    teacher_ckpt = load_checkpoint(teacher_path, kind="teacher")
    return {
        "dataset": DATASET,
        "samples": n,
        "views": v,
        "dim": d,
        "test_samples": len(load_dataset(DATASET, "test")),
        "teacher_arch": teacher_ckpt.arch,
        "teacher_epochs": int(teacher_ckpt.extra.get("epochs", args.teacher_epochs)),
        "teacher_sha256": file_sha256(teacher_path),
        "student_arch": "convnet_student",
        "recipe": args.recipe,
        "student_epochs": args.epochs,
        "seeds": list(range(args.seeds)),
        "view_seed": 0,
        "device": args.device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} CPU" if args.device == "cpu" else args.device,
        "date": time.strftime("%Y-%m-%d"),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        write_table(args.out, markdown(json.loads(args.json.read_text())))
        log(f"rewrote the table in {args.out} from {args.json}")
        return 0
    assert set(ORDER) == set(DTYPES), "a new store dtype needs a row here"
    started = time.perf_counter()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    teacher_path = work / "teacher.pt"
    ensure_teacher(teacher_path, args)
    teacher = load_teacher_source(teacher_path)
    train = load_dataset(DATASET, "train")
    stores: dict[str, FeatureStore] = {}
    for dtype in ORDER:
        url = str(work / f"store_{dtype}.zarr")
        summary = extract_teacher(
            teacher, train, url, views=args.views, dtype=dtype, seed=0, device=args.device, progress=False
        )
        log(summary.line())
        stores[dtype] = open_store(url)
    reference = all_rows(stores["float32"])
    rows = {dtype: measure_store(stores[dtype], reference, teacher, train, args.device) for dtype in ORDER}
    for dtype in ORDER:
        rows[dtype]["student"] = student_scores(dtype, work, args)
    results = {
        "setup": describe_setup(reference, teacher_path, args),
        "teacher": score(teacher_path, args.device),
        "mean_abs_value": float(np.abs(reference).mean()),
        "dtypes": rows,
        "seconds": time.perf_counter() - started,
    }
    write_json(args.json, results)
    table = markdown(results)
    write_table(args.out, table)
    print(table)
    log(f"wrote {args.out} and {args.json} in {results['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
