"""The numpy kernel fusion. Pure arrays: no Paddle, no ONNX.

All arithmetic is float64; callers cast once, at the end, to the checkpoint's dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BN_EPSILON = 1e-5  # Paddle's batch_norm default, used by resnet_acnet.py


@dataclass(frozen=True)
class BatchNorm:
    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    variance: np.ndarray
    epsilon: float = BN_EPSILON


def fold_bn(kernel: np.ndarray, bn: BatchNorm, bias: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """conv(x, K) + b followed by BN  ==  conv(x, K * t) + beta + (b - mean) * t,
    with t = gamma / sqrt(var + eps) per output channel."""
    t = np.asarray(bn.gamma, np.float64) / np.sqrt(np.asarray(bn.variance, np.float64) + bn.epsilon)
    # a float32 kernel times a float64 scale is computed in float64 without a separate copy
    folded_kernel = np.asarray(kernel) * t.reshape(-1, 1, 1, 1)
    pre_bias = np.zeros_like(t) if bias is None else np.asarray(bias, np.float64)
    folded_bias = np.asarray(bn.beta, np.float64) + (pre_bias - np.asarray(bn.mean, np.float64)) * t
    return folded_kernel, folded_bias


def add_asymmetric(
    square: tuple[np.ndarray, np.ndarray],
    vertical: tuple[np.ndarray, np.ndarray],
    horizontal: tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Sum a KxK, a Kx1 and a 1xK (kernel, bias): the Kx1 lands on the centre column and the
    1xK on the centre row, which is exact because the train graph pads them to stay centred."""
    kernel = np.array(square[0], np.float64)
    k_h, k_w = kernel.shape[2:]
    if vertical[0].shape[2:] != (k_h, 1) or horizontal[0].shape[2:] != (1, k_w):
        raise ValueError(
            f"asymmetric kernels {vertical[0].shape} and {horizontal[0].shape} do not fit square {kernel.shape}"
        )
    kernel[:, :, :, k_w // 2 : k_w // 2 + 1] += vertical[0]
    kernel[:, :, k_h // 2 : k_h // 2 + 1, :] += horizontal[0]
    return kernel, np.asarray(square[1], np.float64) + vertical[1] + horizontal[1]
