"""Tests for featstore.views: identity view, replayable parameters, rendering against a numpy reference,
and that grouping rows with equal parameters never changes pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from featstore.errors import InvalidInput
from featstore.views import PARAM_NAMES, ViewPolicy, identity_params, render_views, sample_view_params, sample_views

SHIFT = ViewPolicy(kind="shift", source_size=(8, 8), pad=2, flip_p=0.5)
RESIZED = ViewPolicy(kind="resized_crop", source_size=(16, 12), pad=1, flip_p=0.5)


def images(n: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((n, c, h, w), dtype=np.float32))


def numpy_render(img: np.ndarray, params: np.ndarray, pad: int) -> np.ndarray:
    """Reference for a crop of the source size: zero-pad, crop, flip (no resize)."""
    top, left, ch, cw, flip = (int(p) for p in params)
    padded = np.pad(img, ((0, 0), (pad, pad), (pad, pad)))
    crop = padded[:, top : top + ch, left : left + cw]
    return crop[..., ::-1] if flip else crop


# -- parameters ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", [SHIFT, RESIZED])
def test_view_zero_is_identity_params(policy: ViewPolicy) -> None:
    expected = identity_params(policy)
    h, w = policy.source_size
    np.testing.assert_array_equal(expected, [policy.pad, policy.pad, h, w, 0])
    for seed in (0, 7):
        for sample in (0, 3, 99):
            p = sample_view_params(policy, seed, sample, 0)
            assert p.dtype == np.float32 and p.shape == (len(PARAM_NAMES),)
            np.testing.assert_array_equal(p, expected)


@pytest.mark.parametrize("policy", [SHIFT, RESIZED])
def test_view_zero_renders_source_exactly(policy: ViewPolicy) -> None:
    h, w = policy.source_size
    x = images(5, 3, h, w)
    params = sample_views(policy, 0, np.arange(5), 1)[:, 0]
    out = render_views(x, params, policy)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, x)


@pytest.mark.parametrize("policy", [SHIFT, RESIZED])
def test_params_replayable(policy: ViewPolicy) -> None:
    a = sample_views(policy, 3, np.arange(30), 4)
    b = sample_views(policy, 3, np.arange(30), 4)
    np.testing.assert_array_equal(a, b)
    # Independent of which other samples are drawn alongside or their order (resume / sharded workers).
    single = np.stack([sample_view_params(policy, 3, s, v) for s in (17, 5) for v in range(4)])
    np.testing.assert_array_equal(single, np.concatenate([a[17], a[5]]))
    np.testing.assert_array_equal(sample_views(policy, 3, np.array([17, 5]), 4), a[[17, 5]])


@pytest.mark.parametrize("policy", [SHIFT, RESIZED])
def test_params_differ_across_seeds_samples_and_views(policy: ViewPolicy) -> None:
    a = sample_views(policy, 0, np.arange(40), 4)
    b = sample_views(policy, 1, np.arange(40), 4)
    # Non-identity views: different seeds give different parameters for many (sample, view) pairs.
    assert not np.array_equal(a[:, 1:], b[:, 1:])
    assert (np.abs(a[:, 1:] - b[:, 1:]).sum(-1) > 0).mean() > 0.5
    # Different samples with the same view index are not all the same.
    assert len(np.unique(a[:, 1], axis=0)) > 5
    # Different views of one sample are not all the same.
    assert len(np.unique(a[:, 1:].reshape(-1, len(PARAM_NAMES)), axis=0)) > 5


def test_shift_params_within_padding() -> None:
    params = sample_views(SHIFT, 0, np.arange(200), 3)[:, 1:].reshape(-1, len(PARAM_NAMES))
    top, left, ch, cw, flip = params.T
    assert set(np.unique(top)) == set(range(0, 2 * SHIFT.pad + 1))
    assert set(np.unique(left)) == set(range(0, 2 * SHIFT.pad + 1))
    assert np.all(ch == 8) and np.all(cw == 8)
    assert set(np.unique(flip)) == {0.0, 1.0}
    assert 0.3 < flip.mean() < 0.7


def test_flip_probability_zero_never_flips() -> None:
    policy = ViewPolicy(kind="shift", source_size=(8, 8), pad=1, flip_p=0.0)
    params = sample_views(policy, 0, np.arange(100), 4)
    assert np.all(params[..., 4] == 0)


# -- rendering -----------------------------------------------------------------------------------------


def test_shift_render_matches_numpy_padded_crop() -> None:
    n = 60
    x = images(n, 2, 8, 8, seed=1)
    params = sample_views(SHIFT, 5, np.arange(n), 3)
    for view in range(3):
        out = render_views(x, params[:, view], SHIFT).numpy()
        for i in range(n):
            np.testing.assert_array_equal(out[i], numpy_render(x[i].numpy(), params[i, view], SHIFT.pad))
    # At least some rendered views really move pixels / flip.
    assert len(np.unique(params[:, 1:, :2].reshape(-1, 2), axis=0)) > 1
    assert params[:, 1:, 4].any()


def test_explicit_shift_and_flip() -> None:
    policy = ViewPolicy(kind="shift", source_size=(4, 5), pad=1)
    x = torch.arange(20, dtype=torch.float32).reshape(1, 1, 4, 5) + 1
    # Crop the padded image at (0, 2): one zero row on top, shifted one column left, zero column on the right.
    out = render_views(x, np.array([[0, 2, 4, 5, 0]], dtype=np.float32), policy)[0, 0].numpy()
    src = x[0, 0].numpy()
    expected = np.zeros((4, 5), dtype=np.float32)
    expected[1:, :4] = src[:3, 1:]
    np.testing.assert_array_equal(out, expected)
    flipped = render_views(x, np.array([[1, 1, 4, 5, 1]], dtype=np.float32), policy)[0, 0].numpy()
    np.testing.assert_array_equal(flipped, src[:, ::-1])


def test_resized_crop_boxes_and_render() -> None:
    h, w = RESIZED.source_size
    pad = RESIZED.pad
    params = sample_views(RESIZED, 0, np.arange(100), 3)[:, 1:].reshape(-1, len(PARAM_NAMES))
    top, left, ch, cw, flip = params.T
    assert np.all(ch >= 1) and np.all(cw >= 1)
    # Inside the image (which sits at offset `pad` in the padded image), hence inside the padded image.
    assert np.all(top >= pad) and np.all(left >= pad)
    assert np.all(top + ch <= pad + h) and np.all(left + cw <= pad + w)
    area = ch * cw / (h * w)
    assert area.min() >= RESIZED.scale[0] * 0.8 and area.max() <= 1.0
    assert len(np.unique(params[:, 2:4], axis=0)) > 5  # genuinely varied sizes

    x = images(40, 3, h, w, seed=2)
    rparams = sample_views(RESIZED, 0, np.arange(40), 2)[:, 1]
    out = render_views(x, rparams, RESIZED)
    assert out.shape == (40, 3, h, w)
    padded = F.pad(x, (pad, pad, pad, pad))
    for i in range(40):
        t, left, bh, bw, fl = (int(v) for v in rparams[i])
        ref = F.interpolate(
            padded[i : i + 1, :, t : t + bh, left : left + bw], size=(h, w), mode="bilinear", align_corners=False
        )
        if fl:
            ref = ref.flip(-1)
        torch.testing.assert_close(out[i : i + 1], ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("policy", [SHIFT, RESIZED])
def test_grouping_does_not_change_pixels(policy: ViewPolicy) -> None:
    h, w = policy.source_size
    n = 50
    x = images(n, 3, h, w, seed=3)
    params = sample_views(policy, 11, np.arange(n), 3)
    for view in range(3):
        batch = render_views(x, params[:, view], policy)
        for i in range(n):
            alone = render_views(x[i : i + 1], params[i : i + 1, view], policy)
            assert torch.equal(batch[i : i + 1], alone), (view, i)
        # A permuted batch gives the permuted pixels.
        perm = np.random.default_rng(0).permutation(n)
        assert torch.equal(render_views(x[perm], params[perm, view], policy), batch[perm])


def test_render_accepts_tensor_params() -> None:
    x = images(6, 1, 8, 8)
    params = sample_views(SHIFT, 0, np.arange(6), 2)[:, 1]
    assert torch.equal(render_views(x, torch.from_numpy(params), SHIFT), render_views(x, params, SHIFT))


def test_unknown_kind_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="rotate"):
        ViewPolicy(kind="rotate", source_size=(8, 8))


def test_render_shape_mismatch_is_invalid_input() -> None:
    x = images(4, 1, 8, 8)
    with pytest.raises(InvalidInput, match=r"images \(4, 1, 8, 8\) and params \(3, 5\) disagree"):
        render_views(x, np.zeros((3, len(PARAM_NAMES)), dtype=np.float32), SHIFT)
    with pytest.raises(InvalidInput, match=r"images \(1, 8, 8\) and params \(1, 5\) disagree"):
        render_views(x[0], np.zeros((1, len(PARAM_NAMES)), dtype=np.float32), SHIFT)


def test_policy_to_dict_is_json_friendly() -> None:
    import json

    d = RESIZED.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["kind"] == "resized_crop" and d["source_size"] == [16, 12] and d["pad"] == 1
