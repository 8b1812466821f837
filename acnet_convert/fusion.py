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


def fuse_acb(
    square: tuple[np.ndarray, BatchNorm],
    vertical: tuple[np.ndarray, BatchNorm],
    horizontal: tuple[np.ndarray, BatchNorm],
    square_bias: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """KxK conv+BN + Kx1 conv+BN + 1xK conv+BN  ==  one KxK conv + bias: fold each BN, then add
    the Kx1 kernel to the centre column and the 1xK to the centre row. Exact because the train
    graph pads the asymmetric branches to stay centred. `square_bias` is a pre-BN conv bias."""
    kernel, bias = fold_bn(*square, bias=square_bias)  # a fresh float64 array: summed into in place
    k_h, k_w = kernel.shape[2:]
    if vertical[0].shape[2:] != (k_h, 1) or horizontal[0].shape[2:] != (1, k_w):
        raise ValueError(
            f"asymmetric kernels {vertical[0].shape} and {horizontal[0].shape} do not fit square {kernel.shape}"
        )
    k_ver, b_ver = fold_bn(*vertical)
    k_hor, b_hor = fold_bn(*horizontal)
    kernel[:, :, :, k_w // 2 : k_w // 2 + 1] += k_ver
    kernel[:, :, k_h // 2 : k_h // 2 + 1, :] += k_hor
    return kernel, bias + b_ver + b_hor
