"""What proving a fold means: the probe inputs, and how far apart two outputs may be.

A region and the conv it collapses into are run in float64 on random inputs of sizes chosen so
that outputs touch each border and the interior, at every phase of the strides (sizes n, n+1,
..., n+stride-1 per axis, n the kernel's extent, height and width different). They must agree
to `TOLERANCE` of the output's scale. Folding in float64 gives ~1e-15; a constant the framework
stored in float32 (a pad value written as an initializer) differs from its float64 derivation
by float32's rounding, ~1e-8; the fused weights are cast to float32 anyway (6e-8). A wrong tap,
border, epsilon or bias is 1e-3 or more: 1e-6 lies between.

A probe is one random image times one random vector of channel weights (`numeric.RankOne`): a
conv reads it for the cost of one channel, so proving a region costs about one pass over its
weights, not one per output pixel. It proves as much: both sides are affine in the input, so
they differ by a linear map L plus a constant, and L(u z) = sum_c u_c L(e_c z) vanishes for a
random u only where every L(e_c z) does (the other u lie on a hyperplane: probability 0).

Pure numpy.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterator

import numpy as np

from acnet_convert.fold.affine import Conv
from acnet_convert.fold.numeric import RankOne

TOLERANCE = 1e-6
SEED = 20191027  # ACNet's ICCV: any fixed seed makes the proof repeatable


def probe_sizes(conv: Conv) -> list[tuple[int, int]]:
    """(height, width) pairs covering every stride phase, each as big as the kernel's extent
    (and more at the bottom and right than its padding): every output near one border sees what
    it sees at any larger size, and one sees no border."""
    axes = []
    for axis in (0, 1):
        k, d, s = conv.kernel.shape[2 + axis], conv.dilation[axis], conv.stride[axis]
        before, after = conv.padding[2 * axis], conv.padding[2 * axis + 1]
        base = max(d * (k - 1) + 1, before + after + 1) + s - 1 + axis  # width differs from height
        axes.append([base + phase for phase in range(s)])
    return [(h, w) for h in axes[0] for w in axes[1]]


def probes(channels: int, sizes: list[tuple[int, int]]) -> Iterator[RankOne]:
    return iter(_probes(channels, tuple(sizes)))


@lru_cache(maxsize=256)
def _probes(channels: int, sizes: tuple[tuple[int, int], ...]) -> tuple[RankOne, ...]:
    """The probes are a function of (channels, sizes): a network's thousands of regions share a
    few, made once (read-only: a probe is an input, never written)."""
    rng = np.random.default_rng(SEED)
    u = rng.standard_normal(channels)
    u.flags.writeable = False
    out = []
    for h, w in sizes:
        image = rng.standard_normal((1, 1, h, w))
        image.flags.writeable = False
        out.append(RankOne(u, image))
    return tuple(out)


def residual(written: np.ndarray, fused: np.ndarray) -> float:
    """max |fused - written| relative to the largest |written| (absolute where that is 0)."""
    if written.shape != fused.shape:
        return float("inf")
    scale = float(np.abs(written).max()) if written.size else 0.0
    diff = float(np.abs(fused - written).max()) if written.size else 0.0
    return diff / scale if scale > 0 else diff
