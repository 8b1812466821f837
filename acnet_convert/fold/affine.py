"""Affine maps of an NCHW tensor that are convolutions in the interior, and how ops compose them.

An `Affine` says, for output channel o at position (i, j) away from the borders,

    y[o, i, j] = sum_{c, u, v} kernel[o, c, u, v] * x[c', S_h*i + F_h + D_h*u, S_w*j + F_w + D_w*v] + bias[o]

with c' the c-th input channel of o's group, and output size (n + E - 1) // S + 1 per axis for an
input of size n. Composing ops (a conv after another, a per-channel scale, a pad, a sum of
two maps of the same input) gives another `Affine`, exactly, in the interior. At the borders
the composite is a convolution only when every zero pad, pad value and pool window agrees with
what one conv would read: that is not decided here but proven by evaluating both (`proof`).

Pure numpy, float64: no Paddle, no ONNX, no graph.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from math import gcd
from typing import Sequence

import numpy as np


class NotAConv(Exception):
    """Why a composite is not one convolution (said to the user as the reason a region stays)."""


@dataclass(frozen=True)
class Axis:
    """Where output position i reads along one axis: input rows stride*i + first + dilation*u."""

    stride: int = 1
    first: int = 0
    dilation: int = 1
    extent: int = 0  # output size = (n + extent - 1) // stride + 1


@dataclass(frozen=True)
class Affine:
    # [C_out, C_in // groups, kh, kw], float64; or a conv's own weight, read-only and of its
    # dtype, until an op scales it (the first op to write a kernel makes its float64 copy)
    kernel: np.ndarray
    groups: int
    bias: np.ndarray  # [C_out], float64
    h: Axis
    w: Axis

    @property
    def out_channels(self) -> int:
        return int(self.kernel.shape[0])

    @property
    def in_channels(self) -> int:
        return int(self.kernel.shape[1]) * self.groups

    @property
    def size(self) -> tuple[int, int]:
        return int(self.kernel.shape[2]), int(self.kernel.shape[3])

    @property
    def taps(self) -> int:
        return self.size[0] * self.size[1]

    def is_pointwise(self) -> bool:
        """A per-channel scale and shift (depthwise 1x1, unit geometry): what BNs and scalars
        make of the identity; composing a conv after it costs only a rescale."""
        return (self.groups == self.out_channels == self.in_channels and self.size == (1, 1)
                and self.h == Axis() and self.w == Axis())


def identity(channels: int) -> Affine:
    return Affine(np.ones((channels, 1, 1, 1)), channels, np.zeros(channels), Axis(), Axis())


def regroup(kernel: np.ndarray, groups: int, target: int) -> np.ndarray:
    """The same grouped conv written with `target` groups (a divisor of `groups`): each new
    group holds groups/target old ones, block-diagonally, zeros elsewhere."""
    if target == groups:
        return kernel
    if groups % target:
        raise NotAConv(f"groups {groups} and {target} do not nest")
    out, per_in = kernel.shape[:2]
    ratio = groups // target
    out_per_group = out // groups
    wide = np.zeros((out, per_in * ratio) + kernel.shape[2:], np.float64)
    for g in range(groups):
        slot = g % ratio
        rows = slice(g * out_per_group, (g + 1) * out_per_group)
        wide[rows, slot * per_in:(slot + 1) * per_in] = kernel[rows]
    return wide


def _common_groups(a: int, b: int, channels: int) -> int:
    g = gcd(a, b)
    if channels % g:
        raise NotAConv("group counts that do not divide the channels")
    return g


# ----------------------------------------------------------------------------------------------
# per-channel ops


def _per_channel(value: np.ndarray | float, channels: int) -> np.ndarray:
    """`value` as a [channels] or [1] float64 vector (np.broadcast_to's checks, for less)."""
    v = np.asarray(value, np.float64).reshape(-1)
    if v.size not in (1, channels):
        raise ValueError(f"{v.size} values for {channels} channels")
    return v


def scale_shift(a: Affine, scale: np.ndarray | float, shift: np.ndarray | float = 0.0, owned: bool = False) -> Affine:
    """y = a(x) * scale + shift, scale and shift per output channel (or scalars). With `owned`
    (nothing else holds `a`), its kernel is scaled in place: the largest arrays of a fold are
    kernels, and a copy per BN would double what folding a network reads and writes."""
    s, t = _per_channel(scale, a.out_channels), _per_channel(shift, a.out_channels)
    if owned and (s == 1.0).all():  # a shift only (the constant of a sum): no pass over the kernel
        return replace(a, bias=a.bias * s + t)
    if owned and _writable(a.kernel):
        np.multiply(a.kernel, s.reshape(-1, 1, 1, 1), out=a.kernel)
        return replace(a, bias=a.bias * s + t)
    return replace(a, kernel=a.kernel * s.reshape(-1, 1, 1, 1), bias=a.bias * s + t)


def _writable(kernel: np.ndarray) -> bool:
    """A float64 kernel of the fold's own (not a weight of the graph, which is read-only here)."""
    return kernel.dtype == np.float64 and kernel.flags.writeable


def _read_only(weight: np.ndarray) -> np.ndarray:
    view = np.asarray(weight).view()
    view.flags.writeable = False
    return view


def batch_norm(a: Affine, gamma: np.ndarray | None, beta: np.ndarray | None, mean: np.ndarray,
               variance: np.ndarray, epsilon: float, owned: bool = False) -> Affine:
    """Inference-mode BN after `a`: (y - mean) / sqrt(variance + epsilon) * gamma + beta."""
    t = 1.0 / np.sqrt(np.asarray(variance, np.float64) + epsilon)
    if gamma is not None:
        t = t * np.asarray(gamma, np.float64)
    shift = -np.asarray(mean, np.float64) * t
    if beta is not None:
        shift = shift + np.asarray(beta, np.float64)
    return scale_shift(a, t, shift, owned)


# ----------------------------------------------------------------------------------------------
# geometry only


def _padded(axis: Axis, before: int, after: int) -> Axis:
    return replace(axis, first=axis.first - axis.stride * before, extent=axis.extent + axis.stride * (before + after))


def pad(a: Affine, top: int, bottom: int, left: int, right: int) -> Affine:
    """A pad (any value: the values only matter at the border) or, with negative sizes, a crop."""
    return replace(a, h=_padded(a.h, top, bottom), w=_padded(a.w, left, right))


# ----------------------------------------------------------------------------------------------
# convolutions


def _composed_axis(a: Axis, taps_a: int, stride: int, dilation: int, before: int, after: int, taps: int) -> tuple[Axis, int, int, int]:
    """The axis of conv(stride, dilation, pad before/after, `taps`) after `a` (whose kernel has
    `taps_a` taps): (axis, composite taps, step of `a`'s taps, step of the conv's taps), steps
    counted on the composite's grid."""
    outer = a.stride * dilation  # distance, in input rows, between the conv's taps
    spans = [d for d, n in ((a.dilation, taps_a), (outer, taps)) if n > 1]
    grid = spans[0] if len(spans) == 1 else (gcd(*spans) if spans else 1)
    size = (outer * (taps - 1) + a.dilation * (taps_a - 1)) // grid + 1
    axis = Axis(a.stride * stride, a.first - a.stride * before, grid,
                a.extent + a.stride * (before + after - dilation * (taps - 1)))
    return axis, size, a.dilation // grid if taps_a > 1 else 0, outer // grid if taps > 1 else 0


def conv(a: Affine, weight: np.ndarray, bias: np.ndarray | None, stride: Sequence[int], dilation: Sequence[int],
         padding: Sequence[int], groups: int) -> Affine:
    """y = conv2d(a(x), weight, bias; stride, dilation, padding (top, bottom, left, right), groups)."""
    w = np.asarray(weight)
    out, per_group, mh, mw = w.shape
    if per_group * groups != a.out_channels:
        raise NotAConv(f"a conv reading {per_group * groups} channels of a {a.out_channels}-channel tensor")
    b = np.zeros(out) if bias is None else np.asarray(bias, np.float64)
    kh, kw = a.size
    h, size_h, step_ah, step_wh = _composed_axis(a.h, kh, stride[0], dilation[0], padding[0], padding[1], mh)
    wa, size_w, step_aw, step_ww = _composed_axis(a.w, kw, stride[1], dilation[1], padding[2], padding[3], mw)
    if a.is_pointwise():  # a conv reading a per-channel affine map of x: rescale its input channels
        if not a.bias.any() and (a.kernel == 1).all():  # x itself: the conv's own kernel
            # not copied to float64 here: the BN after it (or a sum) writes the one copy
            return Affine(_read_only(w), groups, b.copy(), h, wa)
        scale = a.kernel.reshape(groups, per_group)
        kernel = (w.reshape(groups, out // groups, per_group, mh, mw) * scale[:, None, :, None, None]).reshape(w.shape)
        shift = a.bias.reshape(groups, per_group)
        bias_out = b + np.einsum("gocij,gc->go", w.reshape(groups, out // groups, per_group, mh, mw), shift).reshape(out)
        return Affine(np.asarray(kernel, np.float64), groups, bias_out, h, wa)
    g = _common_groups(a.groups, groups, a.out_channels)
    inner = regroup(a.kernel, a.groups, g)  # [C_mid, C_in/g, kh, kw]
    outer = regroup(np.asarray(w, np.float64), groups, g)  # [C_out, C_mid/g, mh, mw]
    mid_per, in_per = a.out_channels // g, inner.shape[1]
    inner_g = inner.reshape(g, mid_per, in_per, kh, kw)
    outer_g = outer.reshape(g, out // g, mid_per, mh, mw)
    kernel = np.zeros((g, out // g, in_per, size_h, size_w))
    for vh in range(mh):
        for vw in range(mw):
            part = np.einsum("gom,gmiab->goiab", outer_g[:, :, :, vh, vw], inner_g)
            rows = slice(vh * step_wh, vh * step_wh + (kh - 1) * step_ah + 1, step_ah or 1)
            cols = slice(vw * step_ww, vw * step_ww + (kw - 1) * step_aw + 1, step_aw or 1)
            kernel[:, :, :, rows, cols] += part
    # the bias of `a` seen through the conv: every tap reads it (the interior)
    bias_out = b + np.einsum("gomhw,gm->go", outer_g, a.bias.reshape(g, mid_per)).reshape(out)
    return Affine(kernel.reshape(out, in_per, size_h, size_w), g, bias_out, h, wa)


def avg_pool(a: Affine, size: Sequence[int], stride: Sequence[int], padding: Sequence[int]) -> Affine:
    """A window average (the interior of any average pool): a depthwise conv of 1 / window."""
    channels = a.out_channels
    kernel = np.full((channels, 1, size[0], size[1]), 1.0 / (size[0] * size[1]))
    return conv(a, kernel, None, stride, (1, 1), padding, channels)


# ----------------------------------------------------------------------------------------------
# sums


def _sum_axis(axes: Sequence[Axis], taps: Sequence[int]) -> tuple[Axis, int, list[tuple[int, int]]]:
    if len({a.stride for a in axes}) > 1:
        raise NotAConv(f"terms with different strides {sorted({a.stride for a in axes})}")
    if len({a.extent for a in axes}) > 1:
        raise NotAConv("terms whose output sizes differ for some input sizes")
    firsts = [a.first for a in axes]
    grid = 0
    for a, n in zip(axes, taps):
        if n > 1:
            grid = gcd(grid, a.dilation)
    for f in firsts:
        grid = gcd(grid, f - firsts[0])
    grid = grid or 1
    lo = min(firsts)
    hi = max(a.first + a.dilation * (n - 1) for a, n in zip(axes, taps))
    places = [((a.first - lo) // grid, a.dilation // grid if n > 1 else 1) for a, n in zip(axes, taps)]
    return Axis(axes[0].stride, lo, grid, axes[0].extent), (hi - lo) // grid + 1, places


def add(terms: Sequence[Affine], owned: Sequence[bool] = ()) -> Affine:
    """The sum of affine maps of one input: each kernel placed where its taps fall. A term
    `owned` (nothing else holds it) that already has the sum's size, grid and groups is summed
    into rather than copied."""
    if len({(t.out_channels, t.in_channels) for t in terms}) > 1:
        raise NotAConv("terms with different channel counts")
    h, size_h, places_h = _sum_axis([t.h for t in terms], [t.size[0] for t in terms])
    w, size_w, places_w = _sum_axis([t.w for t in terms], [t.size[1] for t in terms])
    g = terms[0].groups
    for t in terms[1:]:
        g = _common_groups(g, t.groups, t.in_channels)
    out, in_per = terms[0].out_channels, terms[0].in_channels // g
    owned = list(owned) + [False] * (len(terms) - len(owned))
    base = next((i for i, t in enumerate(terms) if owned[i] and t.groups == g and t.size == (size_h, size_w)
                 and places_h[i][0] == places_w[i][0] == 0
                 and (size_h == 1 or places_h[i][1] == 1) and (size_w == 1 or places_w[i][1] == 1)), None)
    if base is None:
        kernel = np.zeros((out, in_per, size_h, size_w))
    else:  # summed into; a conv's own weight is copied first (same terms, same order)
        kernel = terms[base].kernel if _writable(terms[base].kernel) else np.array(terms[base].kernel, np.float64)
    bias = np.zeros(out)
    for i, (t, (oh, sh), (ow, sw)) in enumerate(zip(terms, places_h, places_w)):
        bias += t.bias
        if i == base:
            continue
        kh, kw = t.size
        kernel[:, :, oh:oh + (kh - 1) * sh + 1:sh, ow:ow + (kw - 1) * sw + 1:sw] += regroup(t.kernel, t.groups, g)
    return Affine(kernel, g, bias, h, w)


# ----------------------------------------------------------------------------------------------
# the conv it is


@dataclass(frozen=True)
class Conv:
    """One conv2d with bias: what a collapsed region becomes."""

    kernel: np.ndarray  # float64 [C_out, C_in // groups, kh, kw]
    bias: np.ndarray  # float64 [C_out]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, bottom, left, right
    groups: int


def _padding(axis: Axis, taps: int) -> tuple[int, int]:
    before = -axis.first
    after = axis.extent + axis.dilation * (taps - 1) - before
    if before < 0 or after < 0:
        raise NotAConv("the composite would need a crop of its input, not a padding")
    return before, after


def as_conv(a: Affine) -> Conv:
    """The conv2d whose interior is `a` (zero padding at the borders)."""
    kh, kw = a.size
    top, bottom = _padding(a.h, kh)
    left, right = _padding(a.w, kw)
    dilation = (a.h.dilation if kh > 1 else 1, a.w.dilation if kw > 1 else 1)
    kernel = np.asarray(a.kernel, np.float64)  # a conv's own weight, unscaled, is float64 from here
    return Conv(kernel, a.bias, (a.h.stride, a.w.stride), dilation, (top, bottom, left, right), a.groups)
