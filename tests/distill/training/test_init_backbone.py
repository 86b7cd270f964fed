"""``train-teacher --init-from``: a checkpoint whose backbone has other shapes (another embedding size or input
channels, e.g. an SH-KD student head of another width) is one refusal, not a torch traceback."""

from __future__ import annotations

import pytest

from distill.models import create_model
from distill.models.checkpoint import Checkpoint, save_checkpoint
from distill.training.teacher import init_backbone
from featstore.errors import InvalidInput

DATASET = {"spec": "digits", "split": "train", "fingerprint": "x", "image_shape": [1, 8, 8]}


@pytest.mark.parametrize("change", [{"embedding_dim": 16}, {"in_channels": 3}])
def test_init_from_a_backbone_of_other_shapes_is_refused(tmp_path, change):
    source = create_model("resnet8", num_classes=10, in_channels=1, embedding_dim=32)
    path = save_checkpoint(Checkpoint("teacher", "resnet8", {}, source.state_dict(), "linear", 32, 10, DATASET),
                           tmp_path / "t.pt")  # fmt: skip
    model = create_model("resnet8", num_classes=10, **{"in_channels": 1, "embedding_dim": 32, **change})
    with pytest.raises(InvalidInput, match="do not fit"):
        init_backbone(model, "resnet8", path)
