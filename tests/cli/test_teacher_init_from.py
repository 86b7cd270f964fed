"""``train-teacher --init-from``: the backbone starts from a trained teacher (SH-KD's fine-tuned teacher),
the head does not; another architecture is refused."""

from __future__ import annotations

import torch


def test_init_from_starts_the_backbone_from_the_teacher(tmp_path, artifacts, h):
    out = tmp_path / "sh.pt"
    h.run_ok("train-teacher", "--dataset", "digits", "--out", out, "--init-from", artifacts.teacher, "--head-from",
             artifacts.student, "--epochs", 1, "--lr", 1e-9, "--eval-split", "none", "--quiet")  # fmt: skip
    new = torch.load(out, map_location="cpu", weights_only=True)
    teacher = torch.load(artifacts.teacher, map_location="cpu", weights_only=True)["state_dict"]
    student = torch.load(artifacts.student, map_location="cpu", weights_only=True)["state_dict"]
    weights = {k: v for k, v in new["state_dict"].items() if v.is_floating_point() and "running" not in k}
    for key, value in weights.items():
        source = student if key.startswith("head.") else teacher  # backbone from the teacher, head from the student
        torch.testing.assert_close(value, source[key], atol=1e-5, rtol=0)
    assert new["extra"]["init_from"]["path"] == str(artifacts.teacher)


def test_init_from_another_architecture_is_refused(tmp_path, artifacts, h):
    out = tmp_path / "t.pt"
    result = h.invoke("train-teacher", "--dataset", "digits", "--out", out, "--arch", "convnet_student",
                      "--init-from", artifacts.teacher, "--epochs", 1)  # fmt: skip
    assert result.exit_code == 2 and "architecture" in result.stderr and not out.exists(), result.output
