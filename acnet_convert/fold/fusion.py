"""The numpy kernel fusion. Pure arrays: no Paddle, no ONNX.

Everything is float64; callers cast once, at the end, to the deploy dtype.

Convolution is linear in its kernel, so branches that read the same input with the same
stride, dilation and groups sum into one conv: fold each branch's BN into its kernel and bias
(`fold_bn`), then place each kernel in the fused one at the tap offset its padding (and any
crop of its input) implies, and add (`sum_branches`). An identity branch (a bare BN of
the input) is a 1x1 kernel holding 1 at each channel's own input (`identity_kernel`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

BN_EPSILON = 1e-5  # Paddle's batch_norm default, used by resnet_acnet.py


@dataclass(frozen=True)
class BatchNorm:
    """Inference-mode batch norm: y = (x - mean) / sqrt(variance + epsilon) * gamma + beta.
    `gamma`/`beta` None mean a BN without affine parameters (1 and 0)."""

    gamma: np.ndarray | None
    beta: np.ndarray | None
    mean: np.ndarray
    variance: np.ndarray
    epsilon: float = BN_EPSILON


def bn_scale(bn: BatchNorm) -> np.ndarray:
    """t = gamma / sqrt(variance + epsilon), per channel, float64."""
    variance = np.asarray(bn.variance, np.float64)
    gamma = np.ones_like(variance) if bn.gamma is None else np.asarray(bn.gamma, np.float64)
    return gamma / np.sqrt(variance + bn.epsilon)


def fold_bn(kernel: np.ndarray, bn: BatchNorm, bias: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """conv(x, K) + b followed by BN  ==  conv(x, K * t) + beta + (b - mean) * t."""
    t = bn_scale(bn)
    # a float32 kernel times a float64 scale is computed in float64 without a separate copy
    folded_kernel = np.asarray(kernel) * t.reshape(-1, 1, 1, 1)
    beta = np.zeros_like(t) if bn.beta is None else np.asarray(bn.beta, np.float64)
    pre_bias = np.zeros_like(t) if bias is None else np.asarray(bias, np.float64)
    folded_bias = beta + (pre_bias - np.asarray(bn.mean, np.float64)) * t
    return folded_kernel, folded_bias


def identity_kernel(channels: int, in_per_group: int) -> np.ndarray:
    """The [channels, in_per_group, 1, 1] kernel of a grouped conv that copies its input: output
    channel c reads input channel c, which is position c mod in_per_group within its group."""
    kernel = np.zeros((channels, in_per_group, 1, 1), np.float64)
    kernel[np.arange(channels), np.arange(channels) % in_per_group, 0, 0] = 1.0
    return kernel


def sum_branches(
    branches: Sequence[tuple[np.ndarray, np.ndarray, tuple[int, int]]], size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """sum_i conv(x, K_i at offset_i) + b_i  ==  conv(x, sum_i embedded K_i) + sum_i b_i, for
    (kernel, bias, offset) branches that share input, stride, dilation and groups.

    Takes ownership of the float64 kernels and biases (fresh arrays, as `fold_bn` returns):
    the first full-size kernel at offset (0, 0) is summed into, not copied (the largest
    allocation of a fusion pass)."""
    out_in = branches[0][0].shape[:2]
    for k, _b, (dy, dx) in branches:
        k_h, k_w = k.shape[2:]
        if k.shape[:2] != out_in or dy < 0 or dx < 0 or dy + k_h > size[0] or dx + k_w > size[1]:
            raise ValueError(f"a {list(k.shape)} kernel at offset ({dy}, {dx}) does not fit {list(out_in) + list(size)}")
    base = next((i for i, (k, _b, o) in enumerate(branches)
                 if k.shape[2:] == tuple(size) and tuple(o) == (0, 0) and k.dtype == np.float64), None)
    if base is None:
        kernel = np.zeros(tuple(out_in) + tuple(size), np.float64)
        bias = np.zeros(out_in[0], np.float64)
    else:
        kernel, bias = branches[base][0], np.array(branches[base][1], np.float64)
    for i, (k, b, (dy, dx)) in enumerate(branches):
        if i == base:
            continue
        k_h, k_w = k.shape[2:]
        kernel[:, :, dy : dy + k_h, dx : dx + k_w] += k
        bias += b
    return kernel, bias


def fuse_acb(
    square: tuple[np.ndarray, BatchNorm],
    vertical: tuple[np.ndarray, BatchNorm],
    horizontal: tuple[np.ndarray, BatchNorm],
    square_bias: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """KxK conv+BN + Kx1 conv+BN + 1xK conv+BN  ==  one KxK conv + bias: the Kx1 kernel lands
    on the centre column, the 1xK on the centre row (the train graph pads the asymmetric
    branches to stay centred). `square_bias` is a pre-BN conv bias."""
    k_h, k_w = square[0].shape[2:]
    if vertical[0].shape[2:] != (k_h, 1) or horizontal[0].shape[2:] != (1, k_w):
        raise ValueError(f"asymmetric kernels {vertical[0].shape} and {horizontal[0].shape} do not fit square {square[0].shape}")
    kernel, bias = fold_bn(*square, bias=square_bias)
    k_ver, b_ver = fold_bn(*vertical)
    k_hor, b_hor = fold_bn(*horizontal)
    return sum_branches([(kernel, bias, (0, 0)), (k_ver, b_ver, (0, k_w // 2)), (k_hor, b_hor, (k_h // 2, 0))], (k_h, k_w))
