"""The fused KxK conv + bias equals the three conv+BN branches, computed directly in numpy."""
from __future__ import annotations

import numpy as np
import pytest

from acnet_convert.fold.fusion import BatchNorm, fold_bn, fuse_acb, identity_kernel, sum_branches
from tests.numpy_conv import batch_norm, conv2d


# literal epsilons, none of them the package default: the oracle must not share the package's
EPSILONS = {"square": 1e-3, "ver": 2e-4, "hor": 0.05}


def _bn(rng: np.random.Generator, channels: int, eps: float) -> BatchNorm:
    return BatchNorm(
        gamma=rng.normal(1.0, 0.5, channels),
        beta=rng.normal(0.0, 0.5, channels),
        mean=rng.normal(0.0, 0.5, channels),
        variance=rng.uniform(0.01, 2.0, channels),
        epsilon=eps,
    )


def _branch(x, kernel, bn, eps, stride, padding, groups, bias=None):
    y = conv2d(x, kernel, stride, padding, groups)
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    return batch_norm(y, bn.gamma, bn.beta, bn.mean, bn.variance, eps)


@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("pre_bias", [False, True])
def test_fused_acb_equals_three_branches(k: int, stride: int, groups: int, pre_bias: bool) -> None:
    rng = np.random.default_rng(k * 100 + stride * 10 + groups + pre_bias)
    cin, cout, p = 8, 12, k // 2
    x = rng.normal(size=(2, cin, 13, 11))
    k_sq = rng.normal(size=(cout, cin // groups, k, k))
    k_ver = rng.normal(size=(cout, cin // groups, k, 1))
    k_hor = rng.normal(size=(cout, cin // groups, 1, k))
    eps = EPSILONS
    bn_sq, bn_ver, bn_hor = (_bn(rng, cout, eps[b]) for b in ("square", "ver", "hor"))
    b0 = rng.normal(size=cout) if pre_bias else None

    expected = (
        _branch(x, k_sq, bn_sq, eps["square"], stride, (p, p), groups, b0)
        + _branch(x, k_ver, bn_ver, eps["ver"], stride, (p, 0), groups)
        + _branch(x, k_hor, bn_hor, eps["hor"], stride, (0, p), groups)
    )
    kernel, bias = fuse_acb((k_sq, bn_sq), (k_ver, bn_ver), (k_hor, bn_hor), b0)
    fused = conv2d(x, kernel, stride, (p, p), groups) + bias.reshape(1, -1, 1, 1)

    assert kernel.dtype == np.float64 and bias.dtype == np.float64
    np.testing.assert_allclose(fused, expected, rtol=0, atol=1e-10 * np.abs(expected).max())
    # the twin: the package's default epsilon in one branch is a visible error
    wrong = fuse_acb((k_sq, BatchNorm(bn_sq.gamma, bn_sq.beta, bn_sq.mean, bn_sq.variance)), (k_ver, bn_ver), (k_hor, bn_hor), b0)
    assert np.abs(conv2d(x, wrong[0], stride, (p, p), groups) + wrong[1].reshape(1, -1, 1, 1) - expected).max() > 1e-4


def test_fold_bn_float32_inputs_are_folded_in_float64() -> None:
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(4, 3, 1, 1)).astype(np.float32)
    ref = _bn(rng, 4, 1e-3)
    bn = BatchNorm(*(a.astype(np.float32) for a in (ref.gamma, ref.beta, ref.mean, ref.variance)), epsilon=1e-3)
    folded, bias = fold_bn(kernel, bn)
    assert folded.dtype == np.float64
    x = rng.normal(size=(1, 3, 5, 5))
    stats = (np.float64(a) for a in (bn.gamma, bn.beta, bn.mean, bn.variance))
    expected = batch_norm(conv2d(x, kernel.astype(np.float64), 1, (0, 0)), *stats, eps=1e-3)
    np.testing.assert_allclose(conv2d(x, folded, 1, (0, 0)) + bias.reshape(1, -1, 1, 1), expected, atol=1e-12)


def test_fuse_acb_rejects_kernels_that_do_not_fit_and_leaves_inputs_alone() -> None:
    rng = np.random.default_rng(5)
    bn = _bn(rng, 2, 1e-5)
    square = rng.normal(size=(2, 2, 3, 3))
    with pytest.raises(ValueError):
        fuse_acb((square, bn), (np.zeros((2, 2, 5, 1)), bn), (np.zeros((2, 2, 1, 3)), bn))
    before = square.copy()
    fuse_acb((square, bn), (np.ones((2, 2, 3, 1)), bn), (np.ones((2, 2, 1, 3)), bn))
    np.testing.assert_array_equal(square, before)


def test_identity_kernel_copies_each_channel_in_grouped_convs() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 8, 5, 5))
    for groups in (1, 2, 8):
        kernel = identity_kernel(8, 8 // groups)
        np.testing.assert_array_equal(conv2d(x, kernel, 1, (0, 0), groups), x)


def test_sum_branches_places_each_kernel_at_its_offset() -> None:
    a, b = np.ones((1, 1, 1, 1)), np.full((1, 1, 3, 1), 2.0)
    kernel, bias = sum_branches([(a, np.ones(1), (1, 1)), (b, np.full(1, 3.0), (0, 2))], (3, 3))
    np.testing.assert_array_equal(kernel[0, 0], [[0, 0, 2], [0, 1, 2], [0, 0, 2]])
    np.testing.assert_array_equal(bias, [4.0])
    with pytest.raises(ValueError):
        sum_branches([(b, np.zeros(1), (1, 0))], (3, 3))  # would stick out below
