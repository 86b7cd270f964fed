"""Training throughput: one step of each variant on the same batches, and whole-run amortisation.

    python -m benchmarks.training [--quick] [--device cpu|cuda] [--out-dir DIR]

(the same as ``python -m benchmarks.run --sections training,amortisation``; see :mod:`benchmarks.run`).

* ``training`` — one step of resnet8x4 (the CIFAR student of docs/methods.md) on 32×32 inputs: vanilla (a plain CE
  step, no store), store-KD, store-TH-KD, store-CRD (RepDistiller's 16,384 negatives), online-KD and
  online-TH-KD (resnet32x4 run every step over the same views), and the bare teacher forward. The store and
  online variants are fsd's own run object, :class:`distill.training.run.StudentRun`, stepped one batch at a
  time through ``train_step`` — the code ``fsd train-student`` runs, not a copy of it. All variants read
  the *same* batches (same sample ids and view parameters, checked every round); one step of each per
  round, the order rotated every round, after warm-up rounds; figures are medians of per-round ratios.
* ``amortisation`` — whole ``train_student`` runs: k students from one store (one extraction + k store
  runs) against k online-teacher runs; k = 1, 3, 10 composed from the measured extraction and run times.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from benchmarks.harness import STUDENT_ARCH, Clock, Context, StepResult, autocast, endless, interleaved, log, median


class StoreTrainer:
    """A store (or online-teacher) variant: ``StudentRun`` driven one step at a time, phases timed by its own
    ``train_step(clock=…)``. Nothing of the trainer is rebuilt here; ``chunk_rows`` lays the online
    baseline's views out like the store's, so every variant reads the same batches."""

    def __init__(self, config, device, amp: bool, chunk_rows: int) -> None:
        from distill.training.run import StudentRun

        self.run = StudentRun.build(replace(config, amp="bf16" if amp else None), chunk_rows=chunk_rows)
        self.run.step.train()
        self.criterion, self.teacher = self.run.criterion, self.run.teacher
        self.batches = endless(self.run.stream, self.run.steps_per_epoch)
        self.clock = Clock(device)

    def step(self) -> StepResult:
        t0 = self.clock()
        batch = next(self.batches)
        t1 = self.clock()
        stats = self.run.train_step(batch, clock=self.clock)
        t2 = self.clock()
        return StepResult(t2 - t0, {"stream": t1 - t0, **stats.phases}, batch.indices)


class VanillaTrainer:
    """The baseline, not an fsd trainer: a plain CE step of the student on the same batches (same ids, same
    rendered views), with no store, no teacher head and no distillation loss — what training without fsd
    costs. Its batches come from GeneratedViews, i.e. the views an augmentation pipeline would draw."""

    def __init__(
        self, dataset, device, amp: bool, batch: int, views: int, seed: int, chunk_rows: int, steps_per_epoch: int
    ) -> None:
        import torch

        from distill.models import create_model
        from distill.training.common import OptimConfig, make_optimizer, seed_everything
        from featstore.stream import GeneratedViews, StoreStream

        seed_everything(seed)
        self.student = (
            create_model(STUDENT_ARCH, num_classes=dataset.num_classes, in_channels=3, embedding_dim=256)
            .to(device)
            .train()
        )
        total_steps = 10 * steps_per_epoch  # the schedule's length only sets the (unmeasured) learning rate
        self.optimizer, self.scheduler = make_optimizer(list(self.student.parameters()), OptimConfig(), total_steps)
        source = GeneratedViews(dataset, views, seed=seed, chunk_rows=chunk_rows)
        self.batches = endless(StoreStream(source, batch, seed=seed), steps_per_epoch)
        self.dataset, self.device, self.amp = dataset, device, amp
        self.clock = Clock(device)
        self.loss_sum = 0.0
        self.F = torch.nn.functional

    def step(self) -> StepResult:
        from featstore.views import render_views

        clock, dataset, device = self.clock, self.dataset, self.device
        t0 = clock()
        batch = next(self.batches)
        t1 = clock()
        x = render_views(dataset.get_images(batch.indices), batch.view_params, dataset.view_policy).to(device)
        y = batch.labels.to(device)
        t2 = clock()
        with autocast(device, self.amp):
            z = self.student.forward_features(x)
            loss = self.F.cross_entropy(self.student.head.training_logits(z, y), y)
        t3 = clock()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t4 = clock()
        self.optimizer.step()
        self.scheduler.step()
        self.loss_sum += float(loss.detach()) * len(y)
        t5 = clock()
        phases = {
            "stream": t1 - t0,
            "render": t2 - t1,
            "teacher": 0.0,
            "forward": t3 - t2,
            "backward": t4 - t3,
            "optimizer+log": t5 - t4,
        }
        return StepResult(t5 - t0, phases, batch.indices)


class TeacherForward:
    """The bare teacher cost per batch: forward_features of the same rendered batch, no grad, eval mode."""

    def __init__(
        self, model, dataset, device, amp: bool, batch: int, views: int, seed: int, chunk_rows: int, steps_per_epoch
    ) -> None:
        from featstore.stream import GeneratedViews, StoreStream

        self.model = model
        source = GeneratedViews(dataset, views, seed=seed, chunk_rows=chunk_rows)
        self.batches = endless(StoreStream(source, batch, seed=seed), steps_per_epoch)
        self.dataset, self.device, self.amp = dataset, device, amp
        self.clock = Clock(device)

    def step(self) -> StepResult:
        import torch

        from featstore.views import render_views

        batch = next(self.batches)
        x = render_views(self.dataset.get_images(batch.indices), batch.view_params, self.dataset.view_policy).to(
            self.device
        )
        t0 = self.clock()
        with torch.no_grad(), autocast(self.device, self.amp):
            self.model.forward_features(x)
        t1 = self.clock()
        return StepResult(t1 - t0, {"teacher": t1 - t0}, batch.indices)


def crd_loss_seconds(trainer: StoreTrainer, batch: int, device, amp: bool, reps: int) -> float:
    """Forward + backward of the CRD term alone on one batch's shapes: its share of a step, whatever the student."""
    import torch

    from distill.losses import DistillInputs

    loss = trainer.criterion.losses["crd"]
    dim, n = trainer.teacher.dim, trainer.teacher.source.shape.num_samples
    clock, times = Clock(device), []
    for _ in range(reps + 1):
        inputs = DistillInputs(
            student_embedding=torch.randn(batch, dim, device=device, requires_grad=True),
            student_logits=torch.zeros(batch, 1, device=device),
            labels=torch.zeros(batch, dtype=torch.long, device=device),
            teacher_embedding=torch.randn(batch, dim, device=device),
            indices=torch.randint(0, n, (batch,), device=device),
        )
        t0 = clock()
        with autocast(device, amp):
            value = loss(inputs)
        value.backward()
        times.append(clock() - t0)
    return median(times[1:])  # the first call warms up


def build_variants(ctx: Context) -> dict[str, Any]:
    """The seven variants, in the order the rounds rotate through (vanilla first)."""
    from distill.training.student import StudentConfig

    s, device, dataset, store = ctx.sizes, ctx.device, ctx.train_dataset, ctx.train_store
    base = StudentConfig(
        store=store.url,
        dataset=dataset.spec,
        out=ctx.work / "unused.pt",
        arch=STUDENT_ARCH,
        batch_size=s.batch,
        device=device.type,
        eval_split=None,
        progress=False,
    )
    online = replace(base, store=None, online_teacher=ctx.teacher_path, views=s.views, view_seed=0)
    runs = {
        "store-KD": replace(base, recipe="kd"),
        "store-TH-KD": replace(base, recipe="th-kd"),
        "store-CRD": replace(base, recipe="crd"),
        "online-KD": replace(online, recipe="kd"),
        "online-TH-KD": replace(online, recipe="th-kd"),
    }
    trainers = {name: StoreTrainer(config, device, ctx.amp, store.chunk_rows) for name, config in runs.items()}
    steps = trainers["store-KD"].run.steps_per_epoch  # the baselines draw each epoch as the runs do
    common = (dataset, device, ctx.amp, s.batch, s.views, 0, store.chunk_rows, steps)
    return {
        "vanilla": VanillaTrainer(*common),
        **trainers,
        "teacher-forward": TeacherForward(trainers["online-KD"].teacher.model, *common),
    }


def per_round_ratios(t: dict[str, list[float]], rounds: int) -> dict[str, list[float]]:
    """Every training figure, one value per timed round (the variants of a round saw the same load)."""

    def per_round(fn: Callable[[int], float]) -> list[float]:
        return [fn(i) for i in range(rounds)]

    ratios = {
        "store_kd_vs_vanilla": per_round(lambda i: t["vanilla"][i] / t["store-KD"][i]),
        "store_thkd_vs_vanilla": per_round(lambda i: t["vanilla"][i] / t["store-TH-KD"][i]),
        "store_crd_vs_vanilla": per_round(lambda i: t["vanilla"][i] / t["store-CRD"][i]),
        "ideal_speedup": per_round(lambda i: (t["teacher-forward"][i] + t["vanilla"][i]) / t["vanilla"][i]),
        "online_kd_vs_store_kd": per_round(lambda i: t["online-KD"][i] / t["store-KD"][i]),
        "online_thkd_vs_store_thkd": per_round(lambda i: t["online-TH-KD"][i] / t["store-TH-KD"][i]),
    }
    ratios["kd_speedup_efficiency"] = [a / b for a, b in zip(ratios["online_kd_vs_store_kd"], ratios["ideal_speedup"])]
    ratios["thkd_speedup_efficiency"] = [
        a / b for a, b in zip(ratios["online_thkd_vs_store_thkd"], ratios["ideal_speedup"])
    ]
    return ratios


def bench_training(ctx: Context) -> dict[str, Any]:
    s = ctx.sizes
    trainers = build_variants(ctx)
    crd_negatives = trainers["store-CRD"].criterion.losses["crd"].k
    log(f"training: {', '.join(trainers)}; batch {s.batch}, {s.warmup_rounds} warm-up + {s.rounds} rounds")
    raw = interleaved({name: t.step for name, t in trainers.items()}, s.warmup_rounds, s.rounds)
    t = raw["times"]
    ratios = per_round_ratios(t, s.rounds)
    phase_medians = {name: {k: median([p[k] for p in ph]) for k in ph[0]} for name, ph in raw["phases"].items()}
    crd_alone = crd_loss_seconds(trainers["store-CRD"], s.batch, ctx.device, ctx.amp, max(3, s.rounds))
    return {
        "batch": s.batch,
        "train_samples": s.train_samples,
        "views": s.views,
        "warmup_rounds": s.warmup_rounds,
        "rounds": s.rounds,
        "crd_negatives": crd_negatives,
        "amp": ctx.amp,
        "step_seconds": t,
        "step_seconds_median": {n: median(v) for n, v in t.items()},
        "samples_per_second": {n: s.batch / median(v) for n, v in t.items()},
        "phase_seconds_median": phase_medians,
        "crd_loss_alone_seconds": crd_alone,
        "ratios_per_round": ratios,
        "ratios": {k: median(v) for k, v in ratios.items()},
    }


def bench_amortisation(ctx: Context) -> dict[str, Any]:
    from distill.training.student import StudentConfig, train_student

    s = ctx.sizes
    if ctx.ext_store_url is None:
        raise RuntimeError("amortisation needs the extraction section's store")
    base = StudentConfig(
        store=ctx.ext_store_url,
        dataset=ctx.ext_dataset.spec,
        out=ctx.work / "amort.pt",
        arch=STUDENT_ARCH,
        recipe="kd",
        epochs=s.amort_epochs,
        batch_size=s.batch,
        eval_split=None,
        device=ctx.device.type,
        overwrite=True,
        progress=False,
    )
    online = replace(base, store=None, online_teacher=ctx.teacher_path, views=s.views, view_seed=0)
    times: dict[str, list[float]] = {"store": [], "online": []}
    for rep in range(s.amort_reps):
        for name in ("store", "online") if rep % 2 == 0 else ("online", "store"):
            clock = Clock(ctx.device)
            t0 = clock()
            train_student(base if name == "store" else online)
            times[name].append(clock() - t0)
        log(
            f"  amortisation rep {rep + 1}: store run {times['store'][-1]:.1f} s, online run {times['online'][-1]:.1f} s"
        )
    extract, store_run, online_run = ctx.extract_seconds, median(times["store"]), median(times["online"])
    ks = (1, 3, 10)
    return {
        "samples": len(ctx.ext_dataset),
        "views": s.views,
        "epochs": s.amort_epochs,
        "batch": s.batch,
        "recipe": "kd",
        "extract_seconds": extract,
        "store_run_seconds": times["store"],
        "online_run_seconds": times["online"],
        "total_seconds": {str(k): {"store": extract + k * store_run, "online": k * online_run} for k in ks},
        "speedup": {str(k): k * online_run / (extract + k * store_run) for k in ks},
    }


if __name__ == "__main__":
    from benchmarks.run import main

    main(sections=("training", "amortisation"))
