"""A direct numpy convolution and batch norm: the independent oracle for the fusion tests."""
from __future__ import annotations

import numpy as np


def conv2d(x: np.ndarray, w: np.ndarray, stride: int, padding: tuple[int, int], groups: int = 1) -> np.ndarray:
    """Cross-correlation as Paddle/ONNX define it: x [N,C,H,W], w [O,C/groups,kh,kw]."""
    n, c, h, wd = x.shape
    o, c_g, kh, kw = w.shape
    ph, pw = padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh = (h + 2 * ph - kh) // stride + 1
    ow = (wd + 2 * pw - kw) // stride + 1
    out = np.zeros((n, o, oh, ow), dtype=np.float64)
    o_g = o // groups
    for g in range(groups):
        xg = xp[:, g * c_g : (g + 1) * c_g]
        wg = w[g * o_g : (g + 1) * o_g]
        for i in range(kh):
            for j in range(kw):
                patch = xg[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
                out[:, g * o_g : (g + 1) * o_g] += np.einsum("nchw,oc->nohw", patch, wg[:, :, i, j])
    return out


def batch_norm(y: np.ndarray, gamma, beta, mean, var, eps: float = 1e-5) -> np.ndarray:
    shape = (1, -1, 1, 1)
    return (y - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * gamma.reshape(shape) + beta.reshape(shape)
