"""Direct float64 evaluation of the ops a region is made of, with Paddle's semantics at the
borders: convolution (any stride, dilation, padding, groups), average pooling (exclusive or
not, floor or ceil), padding with a value. What proves a fold: the region as written, run
here, against the one conv it collapsed into, run here too.

Pure numpy: no Paddle, no ONNX.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


@dataclass(frozen=True)
class RankOne:
    """An NCHW tensor whose channels are one image scaled: x[n, c, h, w] = channels[c] *
    image[n, 0, h, w]. A conv reads it for the cost of one channel (see `conv2d`); every other
    op sees the full tensor (`np.asarray`)."""

    channels: np.ndarray  # [C]
    image: np.ndarray  # [N, 1, H, W]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        n, _, h, w = self.image.shape
        return n, int(self.channels.size), h, w

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        full = self.channels.reshape(1, -1, 1, 1) * self.image
        return full if dtype is None else full.astype(dtype)

    def cropped(self, index: tuple[slice, slice]) -> "RankOne":
        return RankOne(self.channels, self.image[:, :, index[0], index[1]])


def pad(x: np.ndarray, top: int, bottom: int, left: int, right: int, value: float | np.ndarray = 0.0) -> np.ndarray:
    """NCHW `x` padded on H and W with `value` (a scalar, or one value per channel); negative
    sizes crop."""
    n, c, h, w = x.shape
    out_h, out_w = h + top + bottom, w + left + right
    if out_h < 0 or out_w < 0:
        raise ValueError("a pad or crop leaves a negative size")
    fill = np.broadcast_to(np.asarray(value, np.float64).reshape(-1, 1, 1) if np.ndim(value) else value, (c, 1, 1))
    out = np.empty((n, c, out_h, out_w), np.float64)
    out[...] = fill
    src_h = slice(max(-top, 0), h - max(-bottom, 0))
    src_w = slice(max(-left, 0), w - max(-right, 0))
    dst_h = slice(max(top, 0), max(top, 0) + (src_h.stop - src_h.start))
    dst_w = slice(max(left, 0), max(left, 0) + (src_w.stop - src_w.start))
    if src_h.stop > src_h.start and src_w.stop > src_w.start:
        out[:, :, dst_h, dst_w] = x[:, :, src_h, src_w]
    return out


def conv2d(x: np.ndarray | RankOne, kernel: np.ndarray, bias: np.ndarray | None, stride: Sequence[int],
           dilation: Sequence[int], padding: Sequence[int], groups: int) -> np.ndarray:
    """conv2d of NCHW `x` with an [O, C/groups, kh, kw] kernel, zero padding (top, bottom, left,
    right), in float64."""
    if isinstance(x, RankOne):  # sum_c K[o, c] u[c] z = (K u)[o] z: one input channel
        out_c, per_group, kh, kw = kernel.shape
        weights = np.asarray(kernel).reshape(groups, out_c // groups, per_group, kh * kw)
        folded = np.einsum("gock,gc->gok", weights, x.channels.reshape(groups, per_group))  # no float64 copy of K
        return conv2d(x.image, folded.reshape(out_c, 1, kh, kw), bias, stride, dilation, padding, 1)
    x = pad(np.asarray(x, np.float64), *padding)
    n, c, h, w = x.shape
    out_c, per_group, kh, kw = kernel.shape
    if per_group * groups != c:
        raise ValueError(f"a conv of {per_group * groups} input channels on a {c}-channel tensor")
    dh, dw = dilation
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if h < span_h or w < span_w:
        raise ValueError("the input is smaller than the kernel")
    windows = sliding_window_view(x, (span_h, span_w), axis=(2, 3))[:, :, ::stride[0], ::stride[1], ::dh, ::dw]
    oh, ow = windows.shape[2:4]
    windows = windows.reshape(n, groups, per_group, oh, ow, kh, kw)
    k = np.asarray(kernel, np.float64).reshape(groups, out_c // groups, per_group, kh, kw)
    out = np.einsum("ngchwij,gocij->ngohw", windows, k, optimize=True).reshape(n, out_c, oh, ow)
    if bias is not None:
        out += np.asarray(bias, np.float64).reshape(1, -1, 1, 1)
    return out


def pool_size(n: int, k: int, stride: int, before: int, after: int, ceil_mode: bool) -> int:
    span = n + before + after - k
    return (span + stride - 1) // stride + 1 if ceil_mode else span // stride + 1


def avg_pool2d(x: np.ndarray, size: Sequence[int], stride: Sequence[int], padding: Sequence[int], exclusive: bool,
               ceil_mode: bool) -> np.ndarray:
    """Paddle's pool2d(avg): window [i*s - before, i*s - before + k); the sum over its part inside
    the input, divided by that part's area when `exclusive`, else by the window's area inside the
    padded input (padding counts as zeros; a ceil-mode window hanging past it does not)."""
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    top, bottom, left, right = padding
    oh = pool_size(h, size[0], stride[0], top, bottom, ceil_mode)
    ow = pool_size(w, size[1], stride[1], left, right, ceil_mode)
    if oh < 1 or ow < 1:
        raise ValueError("the pool window is larger than the input")
    sums = np.zeros((n, c, h + 1, w + 1))  # summed-area table: any window's sum in four reads
    sums[:, :, 1:, 1:] = x.cumsum(2).cumsum(3)
    out = np.empty((n, c, oh, ow))
    for i in range(oh):
        start_h = i * stride[0] - top
        padded_h = min(start_h + size[0], h + bottom) - start_h
        h0, h1 = max(start_h, 0), min(start_h + size[0], h)
        for j in range(ow):
            start_w = j * stride[1] - left
            padded_w = min(start_w + size[1], w + right) - start_w
            w0, w1 = max(start_w, 0), min(start_w + size[1], w)
            total = sums[:, :, h1, w1] - sums[:, :, h0, w1] - sums[:, :, h1, w0] + sums[:, :, h0, w0]
            area = (h1 - h0) * (w1 - w0) if exclusive else padded_h * padded_w
            out[:, :, i, j] = total / area if area > 0 else 0.0
    return out
