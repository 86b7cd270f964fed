"""One student training run as an object: built once from a config, then driven step → epoch → save.

The CLI (``fsd train-student``), the demo, the online-teacher baseline and ``benchmarks/`` all drive this
same object, so a benchmark measures the trainer users run rather than a copy of it.

Each step takes a batch of stored teacher embeddings from the stream, renders the student's input images
with the *same* stored view parameters (consistent teaching), computes teacher logits as the stored head
applied to the stored embeddings, and minimises the recipe's weighted losses. The run knows nothing about
individual recipes: the criterion is built from data (distill/losses/recipes.py).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.losses import Criterion, TrainingContext, build_criterion
from distill.models import count_parameters, create_model
from distill.models.checkpoint import Checkpoint, save_checkpoint
from distill.models.heads import head_state
from distill.models.registry import accepts
from distill.training.amp import Amp
from distill.training.common import Optimisation, accuracy, check_positive, seed_everything
from distill.training.config import StudentConfig, StudentResult
from distill.training.curves import TensorBoardLog, plot_training_curves
from distill.training.ddp import DistributedContext, init_distributed
from distill.training.outputs import keep_resume_state
from distill.training.resume import load_resume_state, run_identity, save_resume_state
from distill.training.step import DistillStep, StepStats, head_cosine, init_head_from
from distill.training.teacher_side import TeacherSide, needs_teacher_head, teacher_side
from featstore.atomic import atomic_write_text
from featstore.datasets import Dataset, LoadOptions, load_dataset, load_eval_dataset
from featstore.errors import InputNotFound, InvalidInput, OutputExists, TrainingDiverged
from featstore.loader import stream_views
from featstore.progress import progress
from featstore.stream import StoreStream, StreamBatch


def log_path_for(out: Path) -> Path:
    """The JSON epoch log written beside checkpoint ``out``."""
    return out.with_name(out.stem + ".log.json")


def resume_path_for(out: Path) -> Path:
    """The resume state written beside checkpoint ``out`` after every epoch."""
    return out.with_name(out.stem + ".resume.pt")


def check_outputs(config: StudentConfig) -> None:
    """Refuse before any work: nothing to resume, or an output that exists without --overwrite."""
    out = Path(config.out)
    resume_path = resume_path_for(out)
    keep_resume_state(resume_path, config.resume, config.overwrite)  # never start over on an interrupted run
    if config.resume and not resume_path.exists():
        raise InputNotFound(
            f"nothing to resume: {resume_path} does not exist"
            + (f" ({out} is already complete)" if out.exists() else "")
        )
    if not config.resume:
        for path in (out, log_path_for(out)):
            if path.exists() and not config.overwrite:
                raise OutputExists(f"{path} already exists (use --overwrite to replace it)")
    if config.plot is not None and config.plot.exists() and not (config.overwrite or config.resume):
        raise OutputExists(f"{config.plot} already exists (use --overwrite to replace it)")


def check_options(config: StudentConfig) -> None:
    """Refuse option values no run can use (sizes, optimiser fields, ``th_alpha`` outside [0, 1])."""
    check_positive(epochs=config.epochs, batch_size=config.batch_size, temperature=config.temperature)
    config.optim.validate()
    if config.embedding_dim is not None:
        check_positive(embedding_dim=config.embedding_dim)
    if config.th_alpha is not None and not (math.isfinite(config.th_alpha) and 0 <= config.th_alpha <= 1):
        raise InvalidInput(f"--th-alpha must lie in [0, 1], got {config.th_alpha}")


class StudentRun:
    """A student run's whole state, built once from a config and driven step → epoch → save.

    ``StudentRun.build(config)`` validates and builds; ``train_step``, ``run_epoch`` and ``save`` are the loop's
    pieces; ``fit`` is the loop ``train_student`` runs.

    Args:
        config: What the run is asked to do.
        criterion: The recipe's weighted losses.
        dataset: The training split whose samples the store's rows are.
    """

    def __init__(self, config: StudentConfig, criterion: Criterion, dataset: Dataset) -> None:
        """Use :meth:`build`; this only stores what :meth:`build` made, in the order it made it."""
        self.config, self.criterion, self.dataset = config, criterion, dataset
        self.out = Path(config.out)
        self.log: list[dict[str, Any]] = []
        self.first_epoch = 0
        self.started = time.perf_counter()

    @classmethod
    def build(cls, config: StudentConfig, *, chunk_rows: int | None = None) -> StudentRun:
        """Validate the config, then build dataset, teacher side, student, projection, stream, loss, optimiser.

        Args:
            config: What the run is asked to do.
            chunk_rows: Online baseline only: lays the generated views out in a store's chunk geometry, so the
                baseline reads exactly the batches a store run of that geometry reads.

        Returns:
            The run, restored from its resume state when ``config.resume``.

        Raises:
            InputNotFound: ``config.resume`` is set and there is no resume state.
            OutputExists: An output exists and ``config.overwrite`` is not set.
            InvalidInput: An option, the store or the dataset does not fit the run.
        """
        check_outputs(config)
        check_options(config)
        criterion = build_criterion(config.recipe, config.loss, config.temperature, config.th_alpha)  # fails early
        load = {"image_size": config.image_size, "options": LoadOptions(workers=config.loader_workers)}
        run = cls(config, criterion, load_dataset(config.dataset, config.split, **load))
        run.test = load_eval_dataset(config.dataset, config.eval_split, **load)
        run.dist = init_distributed(config.device)
        run.device = run.dist.device
        run.amp = Amp.create(config.amp, run.device)
        needs_head = needs_teacher_head(config, criterion.needs)
        run.teacher = teacher_side(config, run.dataset, run.device, chunk_rows=chunk_rows, needs_head=needs_head)
        run._build_models()
        run._build_stream()
        run._build_optimisation()
        if config.resume:
            run.restore()
        return run

    def _build_models(self) -> None:
        config, teacher = self.config, self.teacher
        seed_everything(config.seed)
        self.model_config = {
            "num_classes": teacher.source.shape.num_classes,
            "in_channels": self.dataset.image_shape[0],
            "embedding_dim": config.embedding_dim or teacher.dim,
        }
        if accepts(config.arch, "input_size"):  # face backbones size their embedding layer from it
            self.model_config["input_size"] = int(self.dataset.image_shape[-1])
        self.student = create_model(config.arch, trust_code=config.trust_code, **self.model_config).to(self.device)
        # P: the student embedding → the teacher's space, trained with the student when the sizes differ
        dim = self.model_config["embedding_dim"]
        self.projection = (nn.Identity() if dim == teacher.dim else nn.Linear(dim, teacher.dim, bias=False)).to(
            self.device
        )
        if config.init_head_from_teacher:
            init_head_from(self.student.head, teacher.head)

    def _build_stream(self) -> None:
        config, dist = self.config, self.dist
        self.stream = StoreStream(
            self.teacher.source,
            config.batch_size,
            seed=config.seed,
            view_sampling=config.view_sampling,
            rank=dist.rank,
            world_size=dist.world_size,
            skip_bad_chunks=config.skip_bad_chunks,
            samples_per_class=config.samples_per_class,
        )
        steps = self.stream.batches_per_rank()  # equal on every rank, so collective ops never wait forever
        if not dist.active and self.stream.num_samples() % config.batch_size == 1:
            steps -= 1  # a last batch of one sample has no batch statistics (BatchNorm refuses it)
        if steps <= 0:
            raise InvalidInput(
                f"no full training step per epoch: {self.stream.num_samples()} samples on rank {dist.rank} of "
                f"{dist.world_size} at batch size {config.batch_size} (use a smaller --batch-size, fewer ranks, "
                "or a store with more chunks: --chunk-rows at extraction)"
            )
        self.steps_per_epoch = steps

    def _build_optimisation(self) -> None:
        config, source = self.config, self.teacher.source
        self.criterion.setup(
            TrainingContext(
                store=source,
                student_dim=self.model_config["embedding_dim"],
                teacher_dim=self.teacher.dim,
                num_samples=source.shape.num_samples,
                device=self.device,
                seed=config.seed,
                skip_bad_chunks=config.skip_bad_chunks,
                batch_size=config.batch_size,
                samples_per_class=config.samples_per_class,
            )
        )
        self.step = DistillStep(self.student, self.projection, self.criterion, self.teacher.head).to(self.device)
        self.trainable = [p for p in self.step.parameters() if p.requires_grad]
        self.optimisation = Optimisation.build(
            self.trainable, config.optim, config.epochs, self.steps_per_epoch, amp=self.amp
        )
        self.optimizer, self.scheduler = self.optimisation.optimizer, self.optimisation.scheduler
        self.identity = run_identity(config, self.teacher, self.dataset, self.criterion.weights, self.dist.world_size)
        self.runner = self.dist.wrap(self.step)
        self.global_step = 0

    # -- the loop's pieces ---------------------------------------------------------------------------------
    def restore(self) -> None:
        """Continue from the resume state of the last complete epoch (its identity must be this run's)."""
        state = load_resume_state(resume_path_for(self.out), self.identity)
        self.step.load_state_dict(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        losses = state.get("losses")
        if losses is None:  # a resume state that keeps the loss generators' states by loss name
            losses = {name: {"generator": rng} for name, rng in state.get("rng", {}).items()}
        self.criterion.load_resume_state(losses)
        self.log, self.first_epoch = list(state["log"]), int(state["epoch"])
        self.global_step = self.first_epoch * self.steps_per_epoch

    def describe(self) -> str:
        """One line: the effective loss weights and the optimisation, printed when a run starts."""
        c, o = self.config, self.config.optim
        loss = " + ".join(f"{w:g}·{name}" for name, w in self.criterion.weights.items())
        extra = [f"T={c.temperature:g}"] + ([f"th_alpha={c.th_alpha:g}"] if c.th_alpha is not None else [])
        schedule = f"cosine, warm-up {o.warmup_epochs:g} epochs" if o.warmup_epochs else "cosine"
        clip = f", grad-clip {o.grad_clip:g}" if o.grad_clip else ""
        k = c.samples_per_class
        balanced = f" ({c.batch_size // k} classes × {k})" if k else ""
        return (
            f"train-student [{c.recipe}]: loss = {loss} ({', '.join(extra)}); {o.optimizer} lr {o.lr:g} ({schedule}"
            f"{clip}), wd {o.weight_decay:g}; {c.epochs} epochs × {self.steps_per_epoch} steps of {c.batch_size}"
            f"{balanced}; {self.device.type}{', amp ' + self.amp.dtype_name if self.amp.enabled else ''}"
        )

    def train_step(
        self, batch: StreamBatch, clock: Callable[[], float] | None = None, x: torch.Tensor | None = None
    ) -> StepStats:
        """Run one optimisation step on one stream batch.

        Args:
            batch: The stream batch: stored embeddings, labels, sample ids and view parameters.
            clock: With it, each phase is timed (benchmarks).
            x: The batch's rendered student input when a loader already made it (else rendered here).

        Returns:
            The step's loss terms, batch size and phase timings.

        Raises:
            TrainingDiverged: The loss became non-finite.
        """
        tick = clock or (lambda: 0.0)
        t0 = tick()
        device = self.device
        x = (self.dataset.render(batch.indices, batch.view_params) if x is None else x).to(device, non_blocking=True)
        t1 = tick()
        with self.amp.autocast():
            embedding = self.teacher.embed(batch.embeddings.to(device), x)
            t2 = tick()
            total, terms = self.runner(
                x, batch.labels.to(device), embedding, torch.from_numpy(batch.indices).to(device)
            )
        t3 = tick()
        self._check_finite(total, terms)
        self.optimisation.zero_grad()
        self.optimisation.backward(total)
        t4 = tick()
        self.optimisation.step()
        self.global_step += 1
        values = {name: float(terms[name].detach()) for name in self.criterion.weights}
        t5 = tick()
        phases = {
            "render": t1 - t0,
            "teacher": t2 - t1,
            "forward": t3 - t2,
            "backward": t4 - t3,
            "optimizer+log": t5 - t4,
        }
        return StepStats(float(total.detach()), values, len(batch.indices), phases, batch.indices)

    def _check_finite(self, total: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """A NaN/Inf loss stops the run before it reaches the weights; under DDP every rank stops together."""
        bad = torch.tensor([0.0 if bool(torch.isfinite(total.detach())) else 1.0])
        bad = self.dist.all_reduce_sum(bad)
        if float(bad) == 0:
            return
        epoch = self.global_step // self.steps_per_epoch + 1
        step = self.global_step % self.steps_per_epoch + 1
        values = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
        kept = (
            f"the last good state (epoch {epoch - 1}) is kept in {resume_path_for(self.out)}: fix the cause, then "
            "run again with --resume"
            if epoch > 1
            else "nothing was written"
        )
        raise TrainingDiverged(
            f"the loss became non-finite at epoch {epoch} step {step} ({values or 'total=' + str(float(total))}); "
            f"{kept} (a lower --lr, --grad-clip or a finite store/head usually cures it)"
        )

    def run_epoch(self, epoch: int, on_step: Callable[[StepStats], None] | None = None) -> dict[str, Any]:
        """Train one epoch, evaluate, and return its log entry (also appended to ``self.log``).

        Args:
            epoch: The epoch's index, from 0 (it seeds the stream's order).
            on_step: Called with each step's figures (the progress bar).

        Returns:
            The epoch's log entry: learning rate, mean loss terms, seconds, head cosine and test accuracy.

        Raises:
            TrainingDiverged: The weights became non-finite; the last good state stays in the resume file.
        """
        epoch_start = time.perf_counter()
        self.stream.set_epoch(epoch)
        self.step.train()
        names = ["total", *self.criterion.weights]
        sums = torch.zeros(len(names) + 1, dtype=torch.float64)  # total, terms…, samples
        # the views are rendered by DataLoader workers for datasets read from files, in the stream's order
        for batch, x in stream_views(self.dataset, self.stream, limit=self.steps_per_epoch, device=self.device):
            stats = self.train_step(batch, x=x)
            values = [stats.total] + [stats.terms[name] for name in self.criterion.weights]
            sums += torch.tensor([v * stats.samples for v in values] + [stats.samples], dtype=torch.float64)
            if on_step is not None:
                on_step(stats)
        sums = self.dist.all_reduce_sum(sums)
        entry: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": self.scheduler.get_last_lr()[0],
            "loss": {k: float(sums[i] / sums[-1]) for i, k in enumerate(names)},
            "seconds": time.perf_counter() - epoch_start,
        }
        cosine = None if self.teacher.head is None else head_cosine(self.student.head, self.teacher.head)
        if cosine is not None:
            entry["head_cosine"] = cosine
        self._check_weights(epoch)
        if self.test is not None and self.dist.is_main:
            entry["test_accuracy"] = accuracy(self.student, self.test, self.device)
        self.log.append(entry)
        return entry

    def _check_weights(self, epoch: int) -> None:
        if all(bool(torch.isfinite(p).all()) for p in self.step.parameters()):
            return
        raise TrainingDiverged(
            f"the student's weights became non-finite in epoch {epoch + 1}; the last good state"
            + (f" (epoch {epoch}) is kept in {resume_path_for(self.out)}" if epoch else " does not exist")
        )

    def save_resume_state(self, epochs_done: int) -> None:
        """Write the resume state after ``epochs_done`` complete epochs (rank 0; every rank waits for it)."""
        if self.dist.is_main:
            state_path = resume_path_for(self.out)
            save_resume_state(
                state_path, self.step, self.optimizer, self.scheduler, epochs_done, self.log, self.identity
            )
        self.dist.barrier()

    def checkpoint(self) -> Checkpoint:
        """The finished student, with everything needed to evaluate it and trace how it was made."""
        config, dataset = self.config, self.dataset
        return Checkpoint(
            kind="student",
            arch=config.arch,
            model_config=self.model_config,
            state_dict={k: v.cpu() for k, v in self.student.state_dict().items()},
            head_type=getattr(self.student.head, "head_type", "linear"),  # a code student's nn.Linear
            embedding_dim=self.model_config["embedding_dim"],
            num_classes=self.teacher.source.shape.num_classes,
            dataset={
                "spec": dataset.spec,
                "split": dataset.split,
                "fingerprint": dataset.fingerprint(),
                "image_shape": list(dataset.image_shape),
                "normalisation": dataset.normalisation,  # how to scale other images for it (eval --bin)
            },
            extra={
                "recipe": config.recipe,
                "weights": self.criterion.weights,
                "th_alpha": config.th_alpha,
                "temperature": config.temperature,
                "seed": config.seed,
                "epochs": config.epochs,
                "batch_size": config.batch_size,
                "optim": asdict(config.optim),
                "amp": self.amp.dtype_name if self.amp.enabled else None,
                "view_sampling": config.view_sampling,
                "samples_per_class": config.samples_per_class,
                "world_size": self.dist.world_size,
                "store": self.teacher.provenance,
                "teacher_head": None if self.teacher.head is None else head_state(self.teacher.head),
                "projection": {k: v.cpu() for k, v in self.projection.state_dict().items()},
                "init_head_from_teacher": config.init_head_from_teacher,
                "log": self.log,
                "test_accuracy": self.test_accuracy,
                **({"code_sha256": self.student.code_sha256} if hasattr(self.student, "code_sha256") else {}),
            },
        )

    @property
    def test_accuracy(self) -> float | None:
        """Top-1 of the last epoch on the evaluation split (None before an epoch or without one)."""
        return self.log[-1].get("test_accuracy") if self.log else None

    def save(self) -> Path:
        """Write the checkpoint, the JSON log and the curves (rank 0), then drop the resume state."""
        log_path = log_path_for(self.out)
        if self.dist.is_main:
            save_checkpoint(self.checkpoint(), self.out, overwrite=True)
            weights = self.criterion.weights
            atomic_write_text(
                log_path, json.dumps({"recipe": self.config.recipe, "weights": weights, "epochs": self.log}, indent=2)
            )
            if self.config.plot is not None:
                plot_training_curves(self.log, self.config.plot, title=f"{self.config.arch} [{self.config.recipe}]")
            resume_path_for(self.out).unlink(missing_ok=True)  # the run is complete: nothing left to resume
        return log_path

    def fit(self) -> StudentResult:
        """Run the whole loop: every remaining epoch (resume state after each), then the outputs.

        Returns:
            The checkpoint and log written, the final test accuracy and the run's figures.
        """
        config, dist = self.config, self.dist
        show = config.progress and dist.is_main
        if show:
            print(self.describe(), file=sys.stderr, flush=True)
        board = TensorBoardLog(config.tensorboard) if config.tensorboard is not None and dist.is_main else None
        bar = progress(
            total=config.epochs * self.steps_per_epoch,
            initial=self.first_epoch * self.steps_per_epoch,
            desc=f"train-student [{config.recipe}]",
            unit="step",
            enabled=show,
        )
        try:
            for epoch in range(self.first_epoch, config.epochs):

                def on_step(stats: StepStats, epoch: int = epoch) -> None:
                    bar.update(1)
                    lr = self.scheduler.get_last_lr()[0]
                    bar.set_postfix_str(f"epoch {epoch + 1}/{config.epochs} loss {stats.total:.3f} lr {lr:.3g}", False)

                entry = self.run_epoch(epoch, on_step if show else None)
                if "test_accuracy" in entry:
                    bar.set_postfix_str(
                        f"epoch {epoch + 1}/{config.epochs} loss {entry['loss']['total']:.3f} "
                        f"acc {entry['test_accuracy']:.3f}",
                        False,  # shown at the next redraw: in a log, no extra line per epoch
                    )
                if board is not None:
                    board.log_epoch(entry)
                self.save_resume_state(epoch + 1)
        finally:
            bar.close()
        log_path = self.save()
        if board is not None:
            board.close()
        self.close()
        return StudentResult(
            self.out,
            log_path,
            self.test_accuracy,
            count_parameters(self.student),
            time.perf_counter() - self.started,
            self.log,
        )

    def close(self) -> None:
        """Leave the process group, if the run joined one."""
        self.dist.close()


__all__ = ["DistillStep", "DistributedContext", "StepStats", "StudentRun", "TeacherSide"]
