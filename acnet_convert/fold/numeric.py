"""Direct float64 evaluation of the ops a region is made of, with Paddle's semantics at the
borders: convolution (any stride, dilation, padding, groups), average pooling (exclusive or
not, floor or ceil), padding with a value. What proves a fold: the region as written, run
here, against the one conv it collapsed into, run here too.

Pure numpy: no Paddle, no ONNX.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided


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
    out = np.empty((n, c, out_h, out_w), np.float64)
    out[...] = np.asarray(value, np.float64).reshape(-1, 1, 1) if np.ndim(value) else value
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
        folded = _folded(kernel, x.channels, groups)
        return conv2d(x.image, folded, bias, stride, dilation, padding, 1)
    x = pad(np.asarray(x, np.float64), *padding)
    n, c, h, w = x.shape
    out_c, per_group, kh, kw = kernel.shape
    if per_group * groups != c:
        raise ValueError(f"a conv of {per_group * groups} input channels on a {c}-channel tensor")
    dh, dw = dilation
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if h < span_h or w < span_w:
        raise ValueError("the input is smaller than the kernel")
    oh, ow = (h - span_h) // stride[0] + 1, (w - span_w) // stride[1] + 1
    # the windows as a view (sliding_window_view's own checks cost more than a probe's conv)
    sn, sc, sh, sw = x.strides
    windows = as_strided(x, (n, c, oh, ow, kh, kw), (sn, sc, sh * stride[0], sw * stride[1], sh * dh, sw * dw),
                         writeable=False)
    # one batched matmul per call (im2col): [g, n*oh*ow, c/g*kh*kw] @ [g, c/g*kh*kw, o/g]; an
    # einsum that plans its contraction on every call costs more than the arithmetic on probes
    columns = windows.reshape(n, groups, per_group, oh, ow, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6)
    columns = columns.reshape(groups, n * oh * ow, per_group * kh * kw)
    k = np.asarray(kernel, np.float64).reshape(groups, out_c // groups, per_group * kh * kw).transpose(0, 2, 1)
    out = np.matmul(columns, k).reshape(groups, n, oh, ow, out_c // groups)
    out = out.transpose(1, 0, 4, 2, 3).reshape(n, out_c, oh, ow)
    if bias is not None:
        out += np.asarray(bias, np.float64).reshape(1, -1, 1, 1)
    return out


# (id(kernel), id(channels), groups) -> (kernel, channels, K u): the probes of one proof share
# their channel vector, so each kernel is read once per proof, not once per probe (the entries
# hold what they were computed from: an id is only trusted while its object is that one)
_FOLDED: OrderedDict[tuple[int, int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
_FOLDED_SIZE = 16  # more than the convs of one region


def _folded(kernel: np.ndarray, channels: np.ndarray, groups: int) -> np.ndarray:
    """K u: the [O, 1, kh, kw] kernel a conv applies to a rank-one input's image."""
    key = (id(kernel), id(channels), groups)
    hit = _FOLDED.get(key)
    if hit is not None and hit[0] is kernel and hit[1] is channels:
        _FOLDED.move_to_end(key)
        return hit[2]
    out_c, per_group, kh, kw = kernel.shape
    weights = np.asarray(kernel).reshape(groups, out_c // groups, per_group, kh * kw)
    folded = np.einsum("gock,gc->gok", weights, channels.reshape(groups, per_group))  # no float64 copy of K
    folded = folded.reshape(out_c, 1, kh, kw)
    _FOLDED[key] = (kernel, channels, folded)
    if len(_FOLDED) > _FOLDED_SIZE:
        _FOLDED.popitem(last=False)
    return folded


def forget_folded() -> None:
    """Drop the kernels `_folded` holds (a proof calls this when it is done: they may be large)."""
    _FOLDED.clear()


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
