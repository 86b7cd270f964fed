"""Consistent teaching, end to end: the student's input for (sample i, view v), as the trainer renders it
from a streamed batch, is pixel for pixel the input the teacher embedded at extraction."""

from __future__ import annotations

import numpy as np
import torch

from distill.models import create_model
from featstore.datasets import load_dataset
from featstore.extract import TeacherSource, extract_teacher
from featstore.store import open_store
from featstore.stream import StoreStream
from featstore.views import render_views, sample_view_params


def test_student_input_equals_teacher_input_pixel_for_pixel(tmp_path):
    torch.manual_seed(0)
    model = create_model("convnet_teacher", num_classes=10, embedding_dim=16).eval()
    teacher = TeacherSource(
        model=model,
        arch="convnet_teacher",
        checkpoint_sha256="0" * 64,
        embedding_dim=16,
        input_shape=[1, 8, 8],
        head_type="linear",
        head_weight=np.zeros((10, 16), np.float32),
        head_bias=None,
    )
    dataset = load_dataset("digits")
    url = str(tmp_path / "s.zarr")
    extract_teacher(teacher, dataset, url, views=3, dtype="float32", chunk_rows=100, seed=5, progress=False)

    seen_views = set()
    for batch in StoreStream(open_store(url), 128, seed=1):
        # exactly what train_student does with a batch
        student_input = render_views(dataset.get_images(batch.indices), batch.view_params, dataset.view_policy)
        # what extraction rendered: the view drawn from (store seed, sample, view), nothing from the batch
        fresh = np.stack(
            [sample_view_params(dataset.view_policy, 5, int(i), int(v)) for i, v in zip(batch.indices, batch.view_ids)]
        )
        teacher_input = render_views(dataset.get_images(batch.indices), fresh, dataset.view_policy)
        assert torch.equal(student_input, teacher_input)
        with torch.no_grad():  # and the stored embedding is the teacher's output on exactly those pixels
            torch.testing.assert_close(model.forward_features(student_input), batch.embeddings, rtol=0, atol=1e-5)
        seen_views.update(batch.view_ids.tolist())
    assert seen_views == {0, 1, 2}
