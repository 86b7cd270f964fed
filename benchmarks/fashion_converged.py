"""Every recipe on Fashion-MNIST with students trained to convergence: writes the converged table of
docs/results.md and benchmarks/fashion_converged.json.

    python -m benchmarks.fashion_converged [--teacher CKPT] [--seeds 3] [--epochs 40] [--short-seeds crd=2]
    python -m benchmarks.fashion_table --converged …          (the same)

Data: a fixed, stratified training subset — the first ``--per-class`` (1,000) images of every class of the
Debian package's Fashion-MNIST training split (``idx:?per_class=1000``, 10,000 images) — and the full
10,000-image test split. Teacher: ``resnet20`` trained on all 60,000 training images (``--teacher-epochs``,
15), or reused with ``--teacher CKPT``; its 2-view store of the subset feeds every student.

Students: ``convnet_student``, ``--epochs`` (40) with the trainer's cosine schedule to 0, so the last
epochs change the training loss little; the script records each run's per-epoch training loss (the
trainer's log), prints the last epoch's relative change and marks a row whose change is 2 % or more, and
draws the vanilla and KD curves as a PNG beside the table. ``--seeds`` (3) seeds per recipe; a recipe can
run on fewer (``--short-seeds crd=2,crd-th=2``) when the budget demands it, and the table says so. The
triplet recipes train on class-balanced batches (``--triplet-samples-per-class``, 8: 8 classes × 8).

SH-KD: per seed, that seed's vanilla student gives its head; the SH-KD teacher starts from the ordinary
teacher's backbone (``train-teacher --init-from``) and is fine-tuned ``--sh-teacher-epochs`` (3) on the
training subset with the student's head frozen, so it stays close to the ordinary teacher (its accuracy is
printed beside the table; HeadSharingKD's own code trains that teacher from scratch instead, docs/methods.md);
its store feeds a CRD+KD student (``crd-kd``, the README's step 3).

Every student is evaluated on the test split: top-1, R@1, MAP@R, TAR@FAR=1e-3 and x-R@1 (student queries
against the ordinary teacher's stored gallery of the subset). The verdicts — TH-KD vs KD, SH-KD vs KD,
CRD-TH vs CRD, KD + triplet vs KD (top-1 and MAP@R) and the teacher head's effect on cross-model retrieval —
are written from those numbers: a difference counts when it exceeds 2σ of the difference of the means.

Budget: 2 jobs of one torch thread each, the longest ready job first (vanilla before all, since it unlocks
SH-KD). Before starting, the script prints an estimate from per-epoch costs measured on this machine
(:data:`EPOCH_SECONDS`); ``--estimate-only`` prints it and stops.
"""

from __future__ import annotations

import argparse
import heapq
import math
import os
import platform
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.fashion_table import FULL_TEST, FULL_TRAIN, _extract, _teacher_origin, beyond_two_sigma, spec
from benchmarks.paper_table import METRICS, _metrics, _summary
from benchmarks.results_md import replace_marked, write_json

ROOT = Path(__file__).resolve().parents[1]
RECIPES = (
    "vanilla", "kd", "kde", "th-kd", "kde-th", "crd", "crd-exact", "crd-th", "rkd", "pkt", "sp", "sh-kd",
    "kd-triplet", "th-kd-triplet",
)  # fmt: skip
TRIPLET_RECIPES = ("kd-triplet", "th-kd-triplet")
START, END = "<!-- fashion-converged:start -->", "<!-- fashion-converged:end -->"
HEADING = "## Fashion-MNIST, students trained to convergence"
CONVERGED = 0.02  # the last epoch changes the training loss by less than this fraction

# The cost model of the estimate, in single-thread CPU seconds (measured niced with one torch thread on the
# shared 2-core machine; docs/results.md): a convnet_student epoch on 10,000 images per recipe (rows not
# measured take the closest measured one), a resnet20 epoch and a 2-view extraction per 1,000 images, one
# student's evaluation on 10,000 test images against a 10,000-row gallery, and each job's start-up.
EPOCH_SECONDS = {
    "vanilla": 1.8, "kd": 1.9, "th-kd": 2.0, "kd-triplet": 1.7, "sp": 2.3, "pkt": 2.3, "rkd": 3.0, "crd": 4.8,
    "crd-exact": 5.1,
}  # fmt: skip
SIMILAR = {"kde": "kd", "kde-th": "th-kd", "crd-th": "crd", "sh-kd": "crd", "th-kd-triplet": "th-kd"}
TEACHER_EPOCH_PER_1000 = 4.7
EXTRACT_PER_1000 = 1.4
EVAL_SECONDS = 29.0
JOB_SECONDS = 3.0


@dataclass(frozen=True)
class Setup:
    """What every job of one run shares (picklable: it travels to the worker processes)."""

    train_spec: str
    test_spec: str
    store: str
    teacher: str
    work: str
    epochs: int
    arch: str
    teacher_arch: str
    triplet_k: int | None
    sh_epochs: int
    sh_lr: float


@dataclass(order=True)
class Job:
    """One unit of work: a student (recipe, seed), an SH-KD teacher (seed) or its student."""

    priority: float
    kind: str = field(compare=False)  # "student" | "sh-teacher"
    recipe: str = field(compare=False)
    seed: int = field(compare=False)
    store: str = field(compare=False, default="")
    head_from: str = field(compare=False, default="")


def student_job(setup: Setup, recipe: str, seed: int, store: str) -> dict:
    """Train one student, evaluate it; the per-epoch training losses come back with its metrics."""
    import torch

    torch.set_num_threads(1)
    import distill.evaluation as ev
    from distill.training.student import StudentConfig, train_student

    out = Path(setup.work) / f"{recipe}_s{seed}.pt"
    started = time.perf_counter()
    result = train_student(
        StudentConfig(
            store=store,
            dataset=setup.train_spec,
            out=out,
            arch=setup.arch,
            recipe="crd-kd" if recipe == "sh-kd" else recipe,
            epochs=setup.epochs,
            seed=seed,
            samples_per_class=setup.triplet_k if recipe in TRIPLET_RECIPES else None,
            eval_split=None,
            overwrite=True,
            progress=False,
        )
    )
    seconds = time.perf_counter() - started
    report, _ = ev.evaluate(
        ev.embeddings_from_checkpoint(out, setup.test_spec, "test"), gallery=ev.embeddings_from_store(setup.store)
    )
    curve = [entry["loss"]["total"] for entry in result.log]
    return {"metrics": _metrics(report), "seconds": seconds, "loss": curve, "path": str(out)}


def sh_teacher_job(setup: Setup, seed: int, head_from: str) -> dict:
    """SH-KD's teacher: the ordinary teacher's backbone fine-tuned to a student's frozen head; its store."""
    import torch

    torch.set_num_threads(1)
    import distill.evaluation as ev
    from distill.training.common import OptimConfig
    from distill.training.teacher import TeacherConfig, train_teacher

    out = Path(setup.work) / f"teacher_sh_s{seed}.pt"
    store = str(Path(setup.work) / f"teacher_sh_s{seed}.zarr")
    started = time.perf_counter()
    train_teacher(
        TeacherConfig(
            dataset=setup.train_spec,
            out=out,
            arch=setup.teacher_arch,
            epochs=setup.sh_epochs,
            seed=seed,
            head_from=Path(head_from),
            init_from=Path(setup.teacher),
            optim=OptimConfig(lr=setup.sh_lr),
            eval_split=None,
            overwrite=True,
            progress=False,
        )
    )
    _extract(out, setup.train_spec, store)
    top1 = ev.evaluate(ev.embeddings_from_checkpoint(out, setup.test_spec, "test"))[0]["classification"]["top1"]
    return {"store": store, "top1": top1, "seconds": time.perf_counter() - started}


def epoch_seconds(recipe: str) -> float:
    return EPOCH_SECONDS.get(recipe) or EPOCH_SECONDS[SIMILAR.get(recipe, "kd")]


def eval_seconds(args: argparse.Namespace) -> float:
    """One evaluation, scaled from 10,000 queries × a 10,000-row gallery (the pairwise parts dominate)."""
    return EVAL_SECONDS * (args.test_limit / 10_000) * (10 * args.per_class / 10_000)


def job_cost(job: Job, args: argparse.Namespace) -> float:
    """Estimated single-thread seconds of a job, scaled by the training images (/ 10,000)."""
    thousands = args.per_class * 10 / 1000
    if job.kind == "sh-teacher":
        teacher = thousands * (TEACHER_EPOCH_PER_1000 * args.sh_teacher_epochs + EXTRACT_PER_1000)
        return JOB_SECONDS + teacher + eval_seconds(args)
    return JOB_SECONDS + epoch_seconds(job.recipe) * args.epochs * thousands / 10 + eval_seconds(args)


def seeds_of(recipe: str, args: argparse.Namespace) -> int:
    return min(args.seeds, args.short_seeds.get(recipe, args.seeds))


def initial_jobs(args: argparse.Namespace) -> list[Job]:
    jobs = []
    for recipe in args.recipes:
        if recipe == "sh-kd":
            continue  # queued by its seed's vanilla student
        for seed in range(seeds_of(recipe, args)):
            job = Job(0.0, "student", recipe, seed)
            job.priority = -math.inf if recipe == "vanilla" else -job_cost(job, args)
            jobs.append(job)
    return jobs


def follow_ups(job: Job, result: dict, args: argparse.Namespace) -> list[Job]:
    """What a finished job unlocks: vanilla → its seed's SH-KD teacher → that teacher's student."""
    if job.kind == "student" and job.recipe == "vanilla" and "sh-kd" in args.recipes:
        if job.seed < seeds_of("sh-kd", args):
            teacher = Job(0.0, "sh-teacher", "sh-kd", job.seed, head_from=result.get("path", ""))
            teacher.priority = -job_cost(teacher, args) - job_cost(Job(0.0, "student", "sh-kd", 0), args)
            return [teacher]
    if job.kind == "sh-teacher":
        student = Job(0.0, "student", "sh-kd", job.seed, store=result.get("store", ""))
        student.priority = -job_cost(student, args)
        return [student]
    return []


def estimate(args: argparse.Namespace) -> float:
    """Seconds the run should take: the teacher and store, then the jobs list-scheduled as the run schedules
    them (longest ready first on ``args.jobs`` workers)."""
    thousands = args.per_class * 10 / 1000
    teacher_images = min(args.teacher_limit, FULL_TRAIN) / 1000
    teacher = 0.0 if args.teacher else teacher_images * TEACHER_EPOCH_PER_1000 * args.teacher_epochs / args.jobs
    prologue = teacher + thousands * EXTRACT_PER_1000 / args.jobs + eval_seconds(args)
    ready = initial_jobs(args)
    heapq.heapify(ready)
    running: list[tuple[float, int, Job]] = []  # (finish time, tie-break, job)
    now, count = 0.0, 0
    while ready or running:
        while ready and len(running) < args.jobs:
            job = heapq.heappop(ready)
            count += 1
            heapq.heappush(running, (now + job_cost(job, args), count, job))
        now, _, job = heapq.heappop(running)
        for follow in follow_ups(job, {}, args):
            heapq.heappush(ready, follow)
    return prologue + now


def run_jobs(args: argparse.Namespace, setup: Setup) -> tuple[dict, dict]:
    """Every job on ``args.jobs`` processes, longest ready first: ({recipe: {seed: result}}, {seed: SH top-1})."""
    students: dict[str, dict[int, dict]] = {}
    sh_teachers: dict[int, dict] = {}
    ready = initial_jobs(args)
    heapq.heapify(ready)
    with ProcessPoolExecutor(args.jobs) as pool:
        running: dict = {}
        while ready or running:
            while ready and len(running) < args.jobs:
                job = heapq.heappop(ready)
                if job.kind == "sh-teacher":
                    future = pool.submit(sh_teacher_job, setup, job.seed, job.head_from)
                else:
                    future = pool.submit(student_job, setup, job.recipe, job.seed, job.store or setup.store)
                running[future] = job
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                result = future.result()
                if job.kind == "sh-teacher":
                    sh_teachers[job.seed] = result
                    print(f"SH teacher seed {job.seed}: test top-1 {result['top1']:.4f} ({result['seconds']:.0f} s)")
                else:
                    students.setdefault(job.recipe, {})[job.seed] = result
                    change = last_change(result["loss"])
                    print(f"{job.recipe:13s} seed {job.seed}: {result['metrics']} ({result['seconds']:.0f} s, "
                          f"last-epoch loss change {100 * change:.2f} %)", flush=True)  # fmt: skip
                for follow in follow_ups(job, result, args):
                    heapq.heappush(ready, follow)
    return students, sh_teachers


def last_change(curve: list[float]) -> float:
    """|L_E − L_(E−1)| / L_(E−1): how much the last epoch still moved the training loss (inf for one epoch)."""
    if len(curve) < 2 or curve[-2] == 0:
        return math.inf
    return abs(curve[-1] - curve[-2]) / abs(curve[-2])


# -- the verdicts ---------------------------------------------------------------------------------------------

CLAIMS = (
    ("TH-KD vs KD", "th-kd", "kd", ("top-1", "MAP@R")),
    ("SH-KD vs KD", "sh-kd", "kd", ("top-1", "MAP@R")),
    ("CRD-TH vs CRD", "crd-th", "crd", ("top-1", "MAP@R")),
    ("KD + triplet vs KD", "kd-triplet", "kd", ("top-1", "MAP@R")),
    ("TH-KD + triplet vs TH-KD", "th-kd-triplet", "th-kd", ("top-1", "MAP@R")),
)
# pairs that differ only by the teacher head's TH term: what it does to student → teacher retrieval
HEAD_PAIRS = (("th-kd", "kd"), ("kde-th", "kde"), ("crd-th", "crd"), ("th-kd-triplet", "kd-triplet"))


def compare(results: dict, a: str, b: str, metric: str) -> str:
    """ "+0.42 ± 0.30 (2σ 0.60): within 2σ" for mean(a) − mean(b) in points."""
    delta, sigma, significant = beyond_two_sigma([r[metric] for r in results[a]], [r[metric] for r in results[b]])
    if sigma == 0:
        return f"{100 * delta:+.2f} (one seed: no σ)"
    verdict = ("better" if delta > 0 else "worse") + ", beyond 2σ" if significant else "within 2σ"
    return f"{100 * delta:+.2f} (2σ = {200 * sigma:.2f}): {verdict}"


def verdicts(results: dict) -> list[str]:
    """One line per claim (saying so when a row it needs was not run), then every row against vanilla."""
    lines = []
    for title, a, b, metrics in CLAIMS:
        if a in results and b in results:
            parts = "; ".join(f"{m} {compare(results, a, b, m)}" for m in metrics)
            lines.append(f"- **{title}** (`{a}` − `{b}`): {parts}.")
        else:
            lines.append(f"- **{title}**: not measured (`{a}` or `{b}` was not run).")
    head = [f"`{a}` − `{b}` {compare(results, a, b, 'x-R@1')}" for a, b in HEAD_PAIRS if a in results and b in results]
    lines.append("- **The teacher head and cross-model retrieval** (x-R@1, student queries against the teacher's "
                 "gallery; pairs that differ only by the TH term): " + ("; ".join(head) if head else "not measured")
                 + ".")  # fmt: skip
    base = results.get("vanilla")
    if base is not None:
        for recipe in results:
            if recipe != "vanilla":
                found = []
                for metric, _ in METRICS:
                    delta, sigma, significant = beyond_two_sigma(
                        [r[metric] for r in results[recipe]], [r[metric] for r in base]
                    )
                    if significant:
                        found.append(f"{metric} {100 * delta:+.2f} (2σ = {200 * sigma:.2f})")
                lines.append(f"- `{recipe}` vs vanilla beyond 2σ: " + (", ".join(found) if found else "none"))
    return lines


# -- outputs --------------------------------------------------------------------------------------------------


def plot_curves(students: dict, path: Path) -> None:
    """The vanilla and KD students' training loss per epoch, every seed, log scale."""
    from matplotlib.ticker import MaxNLocator

    from distill.plotting import save_png, subplots

    fig, ax = subplots(1, 1, figsize=(6, 3.6), dpi=110)
    for recipe, colour in (("vanilla", "tab:blue"), ("kd", "tab:orange")):
        for seed, run in sorted(students.get(recipe, {}).items()):
            curve = run["loss"]
            ax.plot(range(1, len(curve) + 1), curve, color=colour, alpha=0.8, label=recipe if seed == 0 else None)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (total)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    ax.set_title("Fashion-MNIST students, 10,000 images: training loss per epoch")
    save_png(fig, path)


def table(args, students: dict, sh_teachers: dict, teacher: dict, total: float, torch_version: str) -> str:
    results = {r: [students[r][s]["metrics"] for s in sorted(students[r])] for r in RECIPES if r in students}
    rows = [f"| teacher (`{args.teacher_arch}`) | " + " | ".join(f"{100 * teacher[m]:.2f}" for m, _ in METRICS)
            + " | 1 | | |"]  # fmt: skip
    unconverged = []
    for recipe in RECIPES:
        if recipe not in students:
            continue
        runs = [students[recipe][s] for s in sorted(students[recipe])]
        change = max(last_change(r["loss"]) for r in runs)
        if change >= CONVERGED:
            unconverged.append(recipe)
        cells = [_summary([r["metrics"][m] for r in runs]) for m, _ in METRICS]
        mark = "" if change < CONVERGED else " ✗"
        rows.append(f"| {recipe} | " + " | ".join(cells) + f" | {len(runs)} | {100 * change:.2f}{mark} | "
                    f"{statistics.fmean(r['seconds'] for r in runs):.0f} |")  # fmt: skip
    short = {r: seeds_of(r, args) for r in args.recipes if seeds_of(r, args) < args.seeds}
    seen = "all 60,000" if args.teacher_limit >= FULL_TRAIN else f"the first {args.teacher_limit:,}"
    teacher_note = (
        f"trained for {args.teacher_epochs} epochs on {seen} training images"
        if args.teacher is None
        else f"reused from `{args.teacher.name}`: {_teacher_origin(args.teacher)}"
    )
    sh = [sh_teachers[s]["top1"] for s in sorted(sh_teachers)]
    sh_note = (
        f" SH-KD teachers (the ordinary teacher's backbone fine-tuned {args.sh_teacher_epochs} epochs on the subset "
        f"with the seed's vanilla student head frozen): test top-1 {_summary(sh)} against {100 * teacher['top-1']:.2f}."
        if sh
        else ""
    )
    curves = os.path.relpath(args.png, args.out.parent)
    notes = [
        f"Fashion-MNIST (Debian `dataset-fashion-mnist`): students `{args.student_arch}` trained {args.epochs} "
        f"epochs (cosine schedule to 0) on a fixed stratified subset of {10 * args.per_class:,} training images "
        f"(the first {args.per_class:,} of each class, `idx:?per_class={args.per_class}`), streamed from a 2-view "
        f"store of `{args.teacher_arch}` ({teacher_note}); evaluated on the {args.test_limit:,}-image test split; "
        f"mean ± std over the seeds of each row, %. x-R@1: student queries against the teacher's stored gallery "
        f"of the subset. Triplet rows: class-balanced batches of {64 // args.triplet_samples_per_class} classes × "
        f"{args.triplet_samples_per_class}." + sh_note,
        "",
        "| method | " + " | ".join(m for m, _ in METRICS) + " | seeds | last-epoch Δloss % | s/run |",
        "|---|" + "---:|" * (len(METRICS) + 3),
        *rows,
        "",
        f"Training-loss curves of the vanilla and KD students: [{Path(curves).name}]({curves}). Last-epoch Δloss: "
        f"the largest over the seeds of |L_E − L_(E−1)| / L_(E−1); "
        + (
            f"rows at or above {100 * CONVERGED:.0f} % (✗): {', '.join(unconverged)}."
            if unconverged
            else f"every row is below {100 * CONVERGED:.0f} %."
        ),  # fmt: skip
    ]
    if short:
        notes += ["", "Fewer seeds to fit the budget: " + ", ".join(f"`{r}` {n}" for r, n in short.items()) + "."]
    command = command_line(args)
    notes += [
        "",
        "Verdicts (Δ in points, σ of the difference of the means √(s²/n + s²/n)):",
        "",
        *verdicts(results),
        "",
        f"Generated by `{command}` in {total / 60:.0f} min (estimated {estimate(args) / 60:.0f}) on "
        f"{platform.machine()} ({os.cpu_count()} cores, {args.jobs} jobs), torch {torch_version}, "
        f"{time.strftime('%Y-%m-%d')}.",
    ]
    return "\n".join(notes)


# -- the command ----------------------------------------------------------------------------------------------

# the options that change the numbers (paths and --estimate-only do not), as the table's command line shows them
SHOWN = ("seeds", "short_seeds", "epochs", "per_class", "test_limit", "teacher", "teacher_epochs", "teacher_limit",
         "teacher_arch", "student_arch", "sh_teacher_epochs", "sh_teacher_lr", "triplet_samples_per_class", "recipes")  # fmt: skip


def _shown(path: Path) -> str:
    """A path as the table and the JSON show it: relative to the repository when inside it, else its name."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else resolved.name


def command_line(args: argparse.Namespace) -> str:
    """The command that regenerates the table: every option in :data:`SHOWN` that differs from its default."""
    parts = ["python -m benchmarks.fashion_converged"]
    for name in SHOWN:
        value, default = getattr(args, name), args.defaults[name]
        if name == "recipes":
            default = [r for r in default.split(",")]
        if value == default or (name == "teacher" and value is None):
            continue
        if name == "short_seeds":
            value = ",".join(f"{r}={n}" for r, n in value.items())
        elif name == "recipes":
            value = ",".join(value)
        elif name == "teacher":
            value = _shown(value)
        parts.append(f"--{name.replace('_', '-')} {value}")
    return " ".join(parts)


def _seed_counts(text: str) -> dict[str, int]:
    counts = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        recipe, _, n = item.partition("=")
        if recipe not in RECIPES or not n.isdigit() or int(n) < 1:
            raise argparse.ArgumentTypeError(f"{item!r} is not RECIPE=N (N ≥ 1, RECIPE one of {', '.join(RECIPES)})")
        counts[recipe] = int(n)
    return counts


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--short-seeds", type=_seed_counts, default={}, metavar="RECIPE=N,…",
                        help="run these recipes on fewer seeds (budget); the table says so")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=40, help="student epochs")
    parser.add_argument("--per-class", type=int, default=1000, help="training images per class (the subset)")
    parser.add_argument("--test-limit", type=int, default=FULL_TEST, help="first N test images evaluated")
    parser.add_argument("--teacher", type=Path, default=None, help="reuse this teacher checkpoint")
    parser.add_argument("--teacher-epochs", type=int, default=15, help="when training the teacher (all 60,000)")
    parser.add_argument("--teacher-limit", type=int, default=FULL_TRAIN, help="images the teacher trains on")
    parser.add_argument("--teacher-arch", default="resnet20")
    parser.add_argument("--student-arch", default="convnet_student")
    parser.add_argument("--sh-teacher-epochs", type=int, default=3, help="SH-KD teachers' fine-tuning epochs")
    parser.add_argument("--sh-teacher-lr", type=float, default=0.01, help="SH-KD teachers' fine-tuning peak lr")
    parser.add_argument("--triplet-samples-per-class", type=int, default=8, help="K of the triplet rows' batches")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated subset of the rows")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--budget-min", type=float, default=100, help="warn when the estimate exceeds it")
    parser.add_argument("--estimate-only", action="store_true", help="print the estimate and stop")
    parser.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "_work" / "fashion_converged")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "fashion_converged.json")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "fashion_converged_curves.png")
    args = parser.parse_args(argv)
    args.defaults = {name: parser.get_default(name) for name in SHOWN}
    args.recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = set(args.recipes) - set(RECIPES)
    if unknown or ("sh-kd" in args.recipes and "vanilla" not in args.recipes):
        parser.error(f"--recipes: unknown {sorted(unknown)} (or sh-kd without vanilla); valid: {', '.join(RECIPES)}")
    if "sh-kd" in args.recipes and seeds_of("sh-kd", args) > seeds_of("vanilla", args):
        parser.error("--short-seeds: sh-kd needs a vanilla student of each of its seeds")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    planned = estimate(args)
    print(f"estimate: {planned / 60:.0f} min on {args.jobs} jobs (budget {args.budget_min:g} min)", flush=True)
    if planned > 60 * args.budget_min:
        print("warning: over the budget; --short-seeds RECIPE=N runs the longest rows on fewer seeds", flush=True)
    if args.estimate_only:
        for recipe in args.recipes:
            cost = job_cost(Job(0.0, "student", recipe, 0), args)
            if recipe == "sh-kd":
                cost += job_cost(Job(0.0, "sh-teacher", recipe, 0), args)
            print(f"  {recipe:14s} {cost:6.0f} s per seed × {seeds_of(recipe, args)}")
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    import distill.evaluation as ev
    from benchmarks.fashion_table import _teacher

    started = time.perf_counter()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    train_spec = "idx:?flip=0.5&per_class=" + str(args.per_class)
    test_spec, teacher_spec = spec(args.test_limit, FULL_TEST), spec(args.teacher_limit, FULL_TRAIN)
    store = str(work / "teacher.zarr")
    cores = len(os.sched_getaffinity(0))
    if args.teacher is None:
        teacher = work / "teacher.pt"
        _teacher((0, None, str(teacher), store, args.teacher_epochs, args.teacher_arch, teacher_spec, train_spec,
                  test_spec), threads=cores)  # fmt: skip
    else:
        teacher = args.teacher
        torch.set_num_threads(cores)  # nothing else runs yet: every core
        _extract(teacher, train_spec, store)
    teacher_report, _ = ev.evaluate(
        ev.embeddings_from_checkpoint(teacher, test_spec, "test"), gallery=ev.embeddings_from_store(store)
    )
    torch.set_num_threads(1)
    print(f"teacher: test top-1 {teacher_report['classification']['top1']:.4f}", flush=True)
    setup = Setup(train_spec, test_spec, store, str(teacher), str(work), args.epochs, args.student_arch,
                  args.teacher_arch, args.triplet_samples_per_class or None, args.sh_teacher_epochs,
                  args.sh_teacher_lr)  # fmt: skip
    students, sh_teachers = run_jobs(args, setup)
    total = time.perf_counter() - started
    teacher_metrics = _metrics(teacher_report)
    if "vanilla" in students or "kd" in students:
        plot_curves(students, args.png)
    text = table(args, students, sh_teachers, teacher_metrics, total, torch.__version__)
    replace_marked(args.out, START, END, text, heading=HEADING)
    write_json(
        args.json,
        {
            "config": {k: (_shown(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "defaults"},
            "teacher": teacher_metrics,
            "sh_teacher_top1": {s: r["top1"] for s, r in sh_teachers.items()},
            "students": {
                r: {s: {k: v for k, v in run.items() if k != "path"} for s, run in seeds.items()}
                for r, seeds in students.items()
            },  # fmt: skip
            "estimate_seconds": planned,
            "seconds": total,
        },
    )
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
