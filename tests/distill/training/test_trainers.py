"""End-to-end tests of the trainers on real (small) artefacts: SH-KD (teacher trained with a student's
frozen head), the student→teacher projection, initialising the student head from the teacher's, margin
(ArcFace) teachers through extraction and TH-KD, the teacher head kept in the student checkpoint, and
determinism.

One teacher (2 epochs on digits) and one 2-view store are made once for the module; every test trains for
one or two epochs only.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import distill.training.step as step_module
from distill.losses import DistillInputs
from distill.models import create_model
from distill.models.checkpoint import file_sha256, load_checkpoint, load_teacher_source, save_checkpoint
from distill.models.heads import ArcFaceHead, LinearHead, frozen_head, head_from_store
from distill.training.common import OptimConfig
from distill.training.student import StudentConfig, head_cosine, init_head_from, train_student
from distill.training.teacher import TeacherConfig, train_teacher
from featstore.datasets import load_dataset
from featstore.errors import CheckpointError, InvalidInput
from featstore.extract import extract_teacher
from featstore.store import open_store

TEACHER_DIM = 64
CLASSES = 10
TRAIN_DIGITS = 1347  # the digits train split


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train")


@pytest.fixture(scope="module")
def base(tmp_path_factory, digits):
    """A trained linear-head teacher, its 2-view store, and a 1-epoch th-kd student of that store."""
    root = tmp_path_factory.mktemp("trainers")
    teacher = root / "teacher.pt"
    train_teacher(TeacherConfig(dataset="digits", out=teacher, epochs=2, eval_split=None, progress=False))
    store = str(root / "store.zarr")
    extract_teacher(load_teacher_source(teacher), digits, store, views=2, progress=False)
    student = root / "student.pt"
    result = train_student(student_config(store, student))
    return {"root": root, "teacher": teacher, "store": store, "student": student, "student_result": result}


def student_config(store: str, out: Path, **kwargs) -> StudentConfig:
    options = {"epochs": 1, "eval_split": None, "progress": False, "batch_size": 128}
    options.update(kwargs)
    return StudentConfig(store=store, dataset="digits", out=out, **options)


def backbone(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("head.")}


# ------------------------------------------------------------------------------------------------------
# (a) SH-KD
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sh_teacher(base):
    out = base["root"] / "sh_teacher.pt"
    result = train_teacher(
        TeacherConfig(dataset="digits", out=out, epochs=1, eval_split=None, progress=False, head_from=base["student"])
    )
    return out, result


def test_shkd_teacher_keeps_the_student_head_frozen(base, sh_teacher):
    out, result = sh_teacher
    student = load_checkpoint(base["student"], kind="student")
    teacher = load_checkpoint(out, kind="teacher")
    assert torch.equal(teacher.state_dict["head.weight"], student.state_dict["head.weight"])
    assert torch.equal(teacher.state_dict["head.bias"], student.state_dict["head.bias"])
    assert teacher.head_type == student.head_type == "linear"
    assert teacher.embedding_dim == student.embedding_dim and teacher.num_classes == CLASSES
    assert 0.0 <= result.train_accuracy <= 1.0 and result.test_accuracy is None
    # the head the store of this teacher would record is the student's
    source = load_teacher_source(out)
    np.testing.assert_array_equal(source.head_weight, student.state_dict["head.weight"].numpy())
    np.testing.assert_array_equal(source.head_bias, student.state_dict["head.bias"].numpy())


def test_shkd_teacher_backbone_was_trained(base, sh_teacher):
    out, _ = sh_teacher
    teacher = load_checkpoint(out, kind="teacher")
    # what the backbone was before training: the same seed and construction as train_teacher
    torch.manual_seed(0)
    init = create_model("convnet_teacher", num_classes=CLASSES, in_channels=1, embedding_dim=TEACHER_DIM).state_dict()
    trained = backbone(teacher.state_dict)
    changed = [k for k, v in trained.items() if v.is_floating_point() and not torch.equal(v, init[k])]
    assert "features.0.weight" in changed and "embed.0.weight" in changed
    assert trained["features.1.running_mean"].abs().sum() > 0  # BatchNorm saw data
    assert int(trained["features.1.num_batches_tracked"]) > 0
    # and it differs from the base teacher (trained with its own head)
    base_teacher = load_checkpoint(base["teacher"], kind="teacher")
    assert not torch.equal(trained["features.0.weight"], base_teacher.state_dict["features.0.weight"])


def test_shkd_provenance(base, sh_teacher):
    out, _ = sh_teacher
    extra = load_checkpoint(out).extra
    assert extra["head_from"]["sha256"] == file_sha256(base["student"])
    assert extra["head_from"]["path"] == str(base["student"])
    assert extra["head_from"]["recipe"] == "th-kd"
    assert len(extra["log"]) == 1 and np.isfinite(extra["log"][0]["loss"])
    assert "head_from" not in load_checkpoint(base["teacher"]).extra


def test_shkd_refuses_a_teacher_checkpoint(base):
    out = base["root"] / "refused_teacher.pt"
    with pytest.raises(CheckpointError, match="student"):
        train_teacher(
            TeacherConfig(
                dataset="digits", out=out, epochs=1, eval_split=None, progress=False, head_from=base["teacher"]
            )
        )
    assert not out.exists()


def test_shkd_refuses_a_student_with_other_classes(base, tmp_path):
    student = load_checkpoint(base["student"], kind="student")
    state = dict(student.state_dict)
    state["head.weight"], state["head.bias"] = state["head.weight"][:5].clone(), state["head.bias"][:5].clone()
    fake = replace(student, num_classes=5, state_dict=state, model_config={**student.model_config, "num_classes": 5})
    path = save_checkpoint(fake, tmp_path / "five.pt")
    out = tmp_path / "teacher.pt"
    with pytest.raises(InvalidInput, match="5 classes"):
        train_teacher(
            TeacherConfig(dataset="digits", out=out, epochs=1, eval_split=None, progress=False, head_from=path)
        )
    assert not out.exists()


def test_shkd_refuses_a_head_that_does_not_fit(base, tmp_path):
    """The checkpoint says 32-d but its head weights are 64-d: the teacher (built 32-d) cannot take them."""
    student = load_checkpoint(base["student"], kind="student")
    fake = replace(student, embedding_dim=32)
    path = save_checkpoint(fake, tmp_path / "misfit.pt")
    out = tmp_path / "teacher.pt"
    with pytest.raises(InvalidInput, match="does not fit"):
        train_teacher(
            TeacherConfig(dataset="digits", out=out, epochs=1, eval_split=None, progress=False, head_from=path)
        )
    assert not out.exists()


# ------------------------------------------------------------------------------------------------------
# (b) projection when the student's embedding size differs
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", ["kde-th", "th-kd"])
def test_projection_student(base, tmp_path, recipe):
    out = tmp_path / f"{recipe}.pt"
    result = train_student(student_config(base["store"], out, recipe=recipe, embedding_dim=16))
    ckpt = load_checkpoint(out, kind="student")
    assert ckpt.embedding_dim == 16 and ckpt.model_config["embedding_dim"] == 16
    assert ckpt.state_dict["head.weight"].shape == (CLASSES, 16)
    projection = ckpt.extra["projection"]
    assert set(projection) == {"weight"} and projection["weight"].shape == (TEACHER_DIM, 16)
    assert torch.isfinite(projection["weight"]).all()
    terms = result.log[0]["loss"]
    assert all(np.isfinite(v) for v in terms.values())
    assert "th" in terms and ("kde" in terms) == (recipe == "kde-th")
    assert "head_cosine" not in result.log[0]  # student and teacher heads have different sizes
    ckpt.build_model()  # the student itself rebuilds without the projection


def test_projection_is_trained_only_by_losses_that_use_it(base, tmp_path):
    """vanilla (CE only) never touches P; kde-th trains it. Same seed → same initial P."""
    vanilla = tmp_path / "vanilla.pt"
    kde = tmp_path / "kde.pt"
    train_student(student_config(base["store"], vanilla, recipe="vanilla", embedding_dim=16))
    train_student(student_config(base["store"], kde, recipe="kde-th", embedding_dim=16))
    p_vanilla = load_checkpoint(vanilla).extra["projection"]["weight"]
    p_kde = load_checkpoint(kde).extra["projection"]["weight"]
    assert p_vanilla.shape == p_kde.shape == (TEACHER_DIM, 16)
    assert not torch.equal(p_vanilla, p_kde)


def test_no_projection_when_dims_agree(base):
    ckpt = load_checkpoint(base["student"], kind="student")
    assert ckpt.embedding_dim == TEACHER_DIM
    assert ckpt.extra["projection"] == {}


def test_explicit_teacher_dim_gives_no_projection(base, tmp_path):
    out = tmp_path / "same.pt"
    train_student(student_config(base["store"], out, embedding_dim=TEACHER_DIM, recipe="kde-th"))
    ckpt = load_checkpoint(out)
    assert ckpt.extra["projection"] == {} and ckpt.embedding_dim == TEACHER_DIM


def test_init_head_from_teacher_refuses_other_dims(base, tmp_path):
    out = tmp_path / "bad.pt"
    with pytest.raises(InvalidInput, match="sizes differ"):
        train_student(student_config(base["store"], out, embedding_dim=16, init_head_from_teacher=True))
    assert not out.exists()


# ------------------------------------------------------------------------------------------------------
# (c) initialising the student head from the teacher head; per-epoch head cosine
# ------------------------------------------------------------------------------------------------------
def test_init_head_from_copies_weight_and_bias(base):
    teacher_head = head_from_store(open_store(base["store"]))
    torch.manual_seed(0)
    student = create_model("convnet_student", num_classes=CLASSES, embedding_dim=TEACHER_DIM)
    before = head_cosine(student.head, teacher_head)
    assert before is not None and abs(before) < 0.5
    init_head_from(student.head, teacher_head)
    assert torch.equal(student.head.weight, teacher_head.weight)
    assert torch.equal(student.head.bias, teacher_head.bias)
    assert student.head.weight.requires_grad  # stays trainable
    assert student.head.weight.data_ptr() != teacher_head.weight.data_ptr()
    assert head_cosine(student.head, teacher_head) == pytest.approx(1.0, abs=1e-6)


def test_head_cosine_values():
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    a, b = frozen_head("linear", w, None), frozen_head("linear", torch.tensor([[0.0, 1.0], [0.0, 5.0]]), None)
    assert head_cosine(a, b) == pytest.approx(0.5)  # rows: cos 0 and cos 1
    assert head_cosine(a, frozen_head("linear", torch.ones(3, 2), None)) is None


def test_init_head_from_teacher_training_run(base, tmp_path):
    out = tmp_path / "init.pt"
    result = train_student(
        student_config(base["store"], out, epochs=2, init_head_from_teacher=True, optim=OptimConfig(lr=1e-6))
    )
    assert [e["epoch"] for e in result.log] == [1, 2]
    assert all(e["head_cosine"] == pytest.approx(1.0, abs=1e-3) for e in result.log)
    ckpt = load_checkpoint(out)
    assert ckpt.extra["init_head_from_teacher"] is True
    store = open_store(base["store"])
    cos = F.cosine_similarity(ckpt.state_dict["head.weight"], torch.from_numpy(store.head_weight()), dim=1)
    assert cos.min() > 0.999
    logged = json.loads(result.log_path.read_text())
    assert [e["head_cosine"] for e in logged["epochs"]] == [e["head_cosine"] for e in result.log]


def test_head_cosine_logged_without_init(base):
    log = base["student_result"].log
    assert len(log) == 1 and "head_cosine" in log[0]
    assert -1.0 <= log[0]["head_cosine"] < 0.5  # a random student head does not agree with the teacher's
    assert load_checkpoint(base["student"]).extra["init_head_from_teacher"] is False


# ------------------------------------------------------------------------------------------------------
# (d) a margin (ArcFace) teacher through extraction and TH-KD
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def arcface(base, digits):
    root = base["root"]
    teacher = root / "arc_teacher.pt"
    train_teacher(
        TeacherConfig(
            dataset="digits",
            out=teacher,
            epochs=1,
            eval_split=None,
            progress=False,
            head="arcface",
            head_scale=16.0,
            head_margin=0.2,
        )
    )
    store = str(root / "arc_store.zarr")
    extract_teacher(load_teacher_source(teacher), digits, store, views=1, progress=False)
    return teacher, store


def test_arcface_teacher_checkpoint_and_store(arcface):
    teacher, store_url = arcface
    ckpt = load_checkpoint(teacher, kind="teacher")
    assert ckpt.head_type == "arcface"
    assert ckpt.model_config["head"] == "arcface"
    assert (ckpt.model_config["head_scale"], ckpt.model_config["head_margin"]) == (16.0, 0.2)
    assert "head.bias" not in ckpt.state_dict
    store = open_store(store_url)
    assert store.meta["head"]["type"] == "arcface"
    assert (store.meta["head"]["scale"], store.meta["head"]["margin"]) == (16.0, 0.2)
    assert store.head_bias() is None
    np.testing.assert_array_equal(store.head_weight(), ckpt.state_dict["head.weight"].numpy())


def test_arcface_store_head_gives_scaled_cosine(arcface):
    _, store_url = arcface
    store = open_store(store_url)
    head = head_from_store(store)
    assert isinstance(head, ArcFaceHead) and (head.scale, head.margin) == (16.0, 0.2)
    embeddings, _, _ = store.read_rows(0, 200)
    z = torch.from_numpy(embeddings[:, 0])
    w = torch.from_numpy(store.head_weight())
    expected = 16.0 * F.normalize(z, dim=1) @ F.normalize(w, dim=1).T
    with torch.no_grad():
        torch.testing.assert_close(head(z), expected, rtol=1e-5, atol=1e-5)


def test_thkd_from_arcface_store_uses_scaled_cosine_teacher_logits(arcface, tmp_path, monkeypatch):
    _, store_url = arcface
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    class Recording(DistillInputs):
        def __post_init__(self) -> None:
            super().__post_init__()
            seen.append((self.teacher_embedding.detach().clone(), self.teacher_logits.detach().clone()))

    monkeypatch.setattr(step_module, "DistillInputs", Recording)
    out = tmp_path / "arc_student.pt"
    result = train_student(student_config(store_url, out, recipe="th-kd"))
    assert seen and all(np.isfinite(v) for v in result.log[0]["loss"].values())
    w = F.normalize(torch.from_numpy(open_store(store_url).head_weight()), dim=1)
    for z_t, logits in seen:
        torch.testing.assert_close(logits, 16.0 * F.normalize(z_t, dim=1) @ w.T, rtol=1e-5, atol=1e-5)
        assert logits.abs().max() <= 16.0 + 1e-4  # no margin, only s·cos
    ckpt = load_checkpoint(out, kind="student")
    assert ckpt.head_type == "linear"  # the student's own head is a plain linear one
    head = ckpt.extra["teacher_head"]
    assert head["type"] == "arcface" and (head["scale"], head["margin"]) == (16.0, 0.2) and head["bias"] is None


# ------------------------------------------------------------------------------------------------------
# (e) the teacher head in the student checkpoint
# ------------------------------------------------------------------------------------------------------
def test_student_checkpoint_keeps_the_store_head(base):
    store = open_store(base["store"])
    head = load_checkpoint(base["student"]).extra["teacher_head"]
    assert head["type"] == store.meta["head"]["type"] == "linear"
    np.testing.assert_array_equal(head["weight"].numpy(), store.head_weight())
    np.testing.assert_array_equal(head["bias"].numpy(), store.head_bias())
    assert head["scale"] is None and head["margin"] is None
    # and it is the base teacher's own head
    teacher = load_checkpoint(base["teacher"])
    assert torch.equal(head["weight"], teacher.state_dict["head.weight"])
    assert torch.equal(head["bias"], teacher.state_dict["head.bias"])
    rebuilt = frozen_head(head["type"], head["weight"], head["bias"], head["scale"], head["margin"])
    assert isinstance(rebuilt, LinearHead)


# ------------------------------------------------------------------------------------------------------
# (f) determinism
# ------------------------------------------------------------------------------------------------------
def test_identical_runs_give_identical_students(base, tmp_path):
    again = tmp_path / "again.pt"
    result = train_student(student_config(base["store"], again))
    first, second = load_checkpoint(base["student"]), load_checkpoint(again)
    assert first.state_dict.keys() == second.state_dict.keys()
    for key in first.state_dict:
        assert torch.equal(first.state_dict[key], second.state_dict[key]), key
    assert result.log[0]["loss"] == base["student_result"].log[0]["loss"]


def test_identical_projection_runs_are_identical(base, tmp_path):
    paths = [tmp_path / "p1.pt", tmp_path / "p2.pt"]
    for path in paths:
        train_student(student_config(base["store"], path, recipe="kde-th", embedding_dim=16))
    a, b = (load_checkpoint(p) for p in paths)
    for key in a.state_dict:
        assert torch.equal(a.state_dict[key], b.state_dict[key]), key
    assert torch.equal(a.extra["projection"]["weight"], b.extra["projection"]["weight"])


def test_different_seed_gives_a_different_student(base, tmp_path):
    other = tmp_path / "seed1.pt"
    train_student(student_config(base["store"], other, seed=1))
    first, second = load_checkpoint(base["student"]), load_checkpoint(other)
    assert not torch.equal(first.state_dict["head.weight"], second.state_dict["head.weight"])


def _teacher_run(tmp_path, name: str, **optim) -> tuple[dict, dict]:
    """(initial parameters, checkpoint) of a 2-epoch digits teacher trained with ``OptimConfig(**optim)``."""
    torch.manual_seed(0)  # train_teacher seeds torch with its seed (0) before it builds the model
    model = create_model("convnet_teacher", num_classes=10, in_channels=1)
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}  # not BN's running statistics
    out = tmp_path / f"{name}.pt"
    config = OptimConfig(**optim)
    train_teacher(TeacherConfig(dataset="digits", out=out, epochs=2, eval_split=None, progress=False, optim=config))
    return initial, load_checkpoint(out, kind="teacher")


def test_train_teacher_applies_warmup(tmp_path):
    # after epoch 1 of 2, the plain cosine is at lr/2; with a 1-epoch warm-up the cosine has just begun (lr)
    _, plain = _teacher_run(tmp_path, "plain", lr=0.05)
    _, warm = _teacher_run(tmp_path, "warm", lr=0.05, warmup_epochs=1)
    assert plain.extra["log"][0]["lr"] == pytest.approx(0.025, rel=0.05)
    assert warm.extra["log"][0]["lr"] == pytest.approx(0.05)


def test_train_teacher_applies_grad_clip(tmp_path):
    # plain SGD (no momentum, no decay): each step moves the weights by at most lr × clip in L2 norm
    lr, clip = 0.05, 1e-4
    initial, clipped = _teacher_run(tmp_path, "clip", lr=lr, momentum=0, weight_decay=0, grad_clip=clip)
    steps = 2 * -(-TRAIN_DIGITS // 64)
    moved = torch.sqrt(sum(((clipped.state_dict[k] - v) ** 2).sum() for k, v in initial.items()))
    assert 0 < float(moved) <= lr * clip * steps * 1.001
