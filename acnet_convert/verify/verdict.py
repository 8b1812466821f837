"""The verdict `verify` gives a pair of graphs (and one fused group): the rule, its
tolerances, and the per-batch accumulators. Pure numpy.

The rule:

    a pair passes when every |a_ij - b_ij| <= atol_i + rtol * s_i,
    s_i = max_j |a_ij|, sample i's largest |value| in the reference a,
    atol_i = min(atol, SPREAD_SHARE * r_i), r_i = (max_j a_ij - min_j a_ij) / 2,

(for classifiers the image's largest |logit|; for dense outputs, or a fused group's output, the
sample's largest |value|), and the comparison is conclusive: on at least one sample the reference
lies farther than the tolerance from every constant (r_i > atol_i + rtol * s_i); else the pair
fails as inconclusive. Why the scale of the sample and not of each element: float32 rounds
every multiply-add to ~6e-8 of its own size, so two correct implementations of one network (a
sum of three BN'd branches and one fused conv; Paddle and ONNX Runtime; one GEMM blocking and
another) drift apart by ~1e-7 of the *activations* an output was computed from, whatever that
output's own size. A logit of 4 in an image whose largest logit is 1000 carries rounding of a
few 1e-4: numpy.allclose (`|d| <= atol + rtol * |a_ij|`) calls that a mismatch, although the
upstream deploy program shows the same difference against ONNX Runtime. Scaled by s_i, the
tolerance follows the error model: a correct conversion uses ~1e-3..1e-1 of it (untrained
networks with logits of 1e5 as much as ones of 1e1), and a fusion error (a bias off by 1e-3 of
itself, one kernel tap moved, BN epsilon 1e-3 for 1e-5, a pre-BN bias dropped) exceeds it many
times over (tests/test_verify_verdict.py measures both sides). The element-wise numbers stay in
the report: `max_abs_error`, and `elementwise_pass`, numpy.allclose's verdict, for reference.

Why atol is capped by the spread r_i. An absolute tolerance says nothing about outputs smaller
than itself: an untrained MobileNetV2's logits are ~1.6e-5, below the default atol of 1e-4, and
a model that outputs zeros (cosine 0, top-1 agreement 0%) passed. r_i is the distance, in the
largest element, from sample i's outputs to the nearest constant: every constant model (zero
included) misses some element of the sample by at least r_i. With atol_i <= SPREAD_SHARE * r_i,
the tolerance is a small share of what tells the sample's outputs apart, whatever their scale,
so a zero, constant, channel-permuted or unrelated model fails at logits of 1e-5 as at 1e5
(a permutation that swaps two outputs within 0.2% of the spread of each other is, honestly,
indistinguishable at this tolerance). Where the outputs are large, min() keeps the user's atol:
the rule is unchanged for them. Correct conversions keep their margin because their error is
relative: the untrained MobileNetV2 at 224 differs from its deploy models by 9.4e-7 of s_i
(measured), 0.07 of rtol alone. When a train graph's outputs are themselves constant within the
tolerance on every sample, any constant model would pass: such a pair is *inconclusive* and
fails (exit 1), saying so, rather than passing a comparison that proved nothing. A model with one
value per sample has no spread within the sample: there r_i is the half-range of the batch's
values (what a constant model must miss), so a single image of a single value is inconclusive.
The report counts the samples on which atol was capped (`atol_capped`).

The noise floor. Some correct conversions still fail that rule: a deep network whose logits are
small beside its activations (a ResNet-101 with re-estimated BN statistics and logits ~5 differs
from its own float64 twin by 7e-5 of its largest logit). So verify measures the network's float32
noise on the first batch: the train graph as written against the same train graph under
Paddle's optimised kernels (two float32 computations of one function, no fusion between them),
n = max_i max_j |t_ij - t'_ij| / s_i, and judges every pair with
rtol' = max(rtol, min(rtol + NOISE_FACTOR * n, NOISE_CAP)). A well-conditioned network's n is
~1e-7, so rtol is unchanged and fusion errors of 1e-3 of a bias still fail; an ill-conditioned
one gets the tolerance its own arithmetic needs, never more than NOISE_CAP (a Paddle pass
that is itself wrong cannot hide a fusion error beyond that). `noise_floor` in the JSON.

An ONNX model computed in float16 is held to FP16_ATOL / FP16_RTOL instead (or the user's
tolerances, if larger): float16 keeps 11 significant bits (eps 9.8e-4), and ~50 layers of
rounding accumulate to a few 1e-3 of the activations. Such a pair also reports top-1 agreement;
under the scale rule, top-1 can only differ for images whose two best logits are within twice
the tolerance.

`tolerance_ratio` is the verdict as a number: the worst |a_ij - b_ij| / (atol_i + rtol * s_i),
so a conclusive pair passes exactly when it is <= 1; 1 / ratio is the margin of a passing pair.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

REL_FLOOR = 1e-12  # denominator floor of the relative error: all-zero outputs do not divide by 0
SPREAD_SHARE = 1e-3  # atol never exceeds this share of a sample's spread r_i (as NOISE_CAP of its scale)
FP16_ATOL = 1e-2
FP16_RTOL = 1e-2
NOISE_FACTOR = 4
NOISE_CAP = 1e-3
NAMED = 10  # images named per list (top-1 differences, skipped files)


def finite(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def per_sample(outputs: Sequence[np.ndarray]) -> np.ndarray:
    """[N, ...] outputs (one or several) as one float64 [N, M] matrix, a row per sample."""
    return np.concatenate([np.asarray(o, np.float64).reshape(len(o), -1) for o in outputs], axis=1)


def noise_floor(a: Sequence[np.ndarray], b: Sequence[np.ndarray], allow_nonfinite: bool = False) -> float:
    """max over samples of max_j |a_ij - b_ij| / s_i (s_i from `a`): how far two float32
    computations of one function drift apart, relative to each sample's scale. With
    `allow_nonfinite`, NaN (or the same Inf) in both at one place counts as no difference."""
    x, y = per_sample(a), per_sample(b)
    with np.errstate(invalid="ignore"):
        if allow_nonfinite:
            same = ~np.isfinite(x) & ((x == y) | (np.isnan(x) & np.isnan(y)))
            x, y = np.where(same, 0.0, x), np.where(same, 0.0, y)
        worst = np.abs(x - y).max(axis=1) / np.maximum(np.abs(x).max(axis=1), REL_FLOOR)
    return float(worst.max()) if np.isfinite(worst).all() else float("inf")


def widened_rtol(rtol: float, noise: float) -> float:
    """The rtol pairs are judged with, given the network's noise floor (module docstring)."""
    if not np.isfinite(noise):
        return max(rtol, NOISE_CAP)
    return max(rtol, min(rtol + NOISE_FACTOR * noise, NOISE_CAP))


def spread(x: np.ndarray) -> np.ndarray:
    """Per sample of a [N, M] matrix: r_i = (max_j x_ij - min_j x_ij) / 2, how far the sample's
    outputs lie from the nearest constant. One value per sample (M == 1) has no spread of its
    own: the batch's half-range stands for every sample (what a constant model must miss)."""
    if x.shape[1] == 1:
        return np.full(len(x), (x.max() - x.min()) / 2 if len(x) else 0.0)
    return (x.max(axis=1) - x.min(axis=1)) / 2


def bound(scale: np.ndarray, spread_: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    """Per sample: the tolerance atol_i + rtol * s_i, atol_i = min(atol, SPREAD_SHARE * r_i)."""
    return np.minimum(atol, SPREAD_SHARE * spread_) + rtol * scale


def tolerance_ratio(diff_max: np.ndarray, scale: np.ndarray, spread_: np.ndarray, atol: float,
                    rtol: float) -> np.ndarray:
    """Per sample: max_j |d_ij| / (atol_i + rtol * s_i). NaN (not finite) becomes inf. A zero
    tolerance with a zero difference is 0; with any difference, inf."""
    tol = bound(scale, spread_, atol, rtol)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.where(tol > 0, diff_max / np.where(tol > 0, tol, 1.0), np.where(diff_max == 0, 0.0, np.inf))
    return np.where(np.isnan(ratio), np.inf, ratio)


def informative(scale: np.ndarray, spread_: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    """Per sample: would every constant model fail on it (r_i > the tolerance)? A comparison
    with no such sample cannot tell the reference from a constant: it is inconclusive."""
    with np.errstate(invalid="ignore"):
        return spread_ > bound(scale, spread_, atol, rtol)


@dataclass(frozen=True)
class PairResult:
    a: str
    b: str
    max_abs_error: float
    max_rel_error: float
    tolerance_ratio: float
    cosine: float
    top1_agreement: float | None
    top1_differs: int
    top1_differs_names: tuple[str, ...]
    atol: float
    rtol: float
    fp16: bool
    elementwise_pass: bool
    passed: bool
    samples: int = 0
    informative: int = 0  # samples on which every constant model fails
    atol_capped: int = 0  # samples on which atol exceeded SPREAD_SHARE of their spread

    @property
    def inconclusive(self) -> bool:
        """Within tolerance, but a constant model would have passed as well."""
        return bool(self.tolerance_ratio <= 1.0 and self.informative == 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "max_abs_error": finite(self.max_abs_error),
            "max_rel_error": finite(self.max_rel_error),
            "tolerance_ratio": finite(self.tolerance_ratio),
            "cosine": finite(self.cosine),
            "top1_agreement": self.top1_agreement,
            "top1_differs": self.top1_differs,
            "top1_differs_names": list(self.top1_differs_names),
            "atol": self.atol,
            "rtol": self.rtol,
            "fp16": self.fp16,
            "elementwise_pass": self.elementwise_pass,
            "informative": self.informative,
            "atol_capped": self.atol_capped,
            "inconclusive": self.inconclusive,
            "pass": self.passed,
        }


class PairStats:
    """The comparison of graph `b` with the reference `a`, accumulated batch by batch: memory
    does not grow with the number of images."""

    def __init__(self, a: str, b: str, atol: float, rtol: float, fp16: bool = False,
                 allow_nonfinite: bool = False) -> None:
        if fp16:
            atol, rtol = max(atol, FP16_ATOL), max(rtol, FP16_RTOL)
        self.a, self.b, self.atol, self.rtol, self.fp16 = a, b, atol, rtol, fp16
        # a model fused with --allow-nonfinite: NaN (or the same Inf) in both graphs at the same
        # place is the same function; those elements count as equal (0), and are counted
        self.allow_nonfinite = allow_nonfinite
        self.nonfinite = 0
        self.samples = 0
        self.max_abs = 0.0
        self.max_rel = 0.0
        self.ratio = 0.0
        self.cosine = 1.0
        self.elementwise = True
        self.informative = 0
        self.capped = 0
        self.classifier = True
        self.agree = 0
        self.differs = 0
        self.differ_names: list[str] = []

    def update(self, a: Sequence[np.ndarray], b: Sequence[np.ndarray], names: Sequence[str] | None = None) -> None:
        """One batch: the outputs of both graphs, each a list of [N, ...] arrays."""
        x, y = per_sample(a), per_sample(b)
        n = len(x)
        if self.allow_nonfinite:
            with np.errstate(invalid="ignore"):
                same = ~np.isfinite(x) & ((x == y) | (np.isnan(x) & np.isnan(y)))
            self.nonfinite += int(same.sum())
            x, y = np.where(same, 0.0, x), np.where(same, 0.0, y)
        with np.errstate(invalid="ignore", over="ignore"):  # NaN and Inf are judged below, not warned about
            diff = np.abs(x - y)
            worst = diff.max(axis=1)  # NaN propagates
            scale = np.abs(x).max(axis=1)
            r = spread(x)
            nan = np.isnan(diff).any(axis=1)
            worst = np.where(nan, np.inf, worst)
            ratio = tolerance_ratio(worst, scale, r, self.atol, self.rtol)
            self.informative += int(informative(scale, r, self.atol, self.rtol).sum())
            self.capped += int((SPREAD_SHARE * r < self.atol).sum())
            dots = np.sum(x * y, axis=1)
            norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
            same = worst == 0
            cosines = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(same, 1.0, 0.0))
            self.elementwise &= bool(np.all(diff <= self.atol + self.rtol * np.abs(x)))  # NaN: False
        self.max_abs = max(self.max_abs, float(worst.max()))
        with np.errstate(invalid="ignore"):
            self.max_rel = max(self.max_rel, float((worst / np.maximum(scale, REL_FLOOR)).max()))
        self.ratio = max(self.ratio, float(ratio.max()))
        self.cosine = min(self.cosine, float(np.nan_to_num(cosines, nan=-1.0).min()))
        self.classifier &= len(a) == 1 and np.asarray(a[0]).ndim == 2
        if self.classifier:
            differ = np.flatnonzero(x.argmax(axis=1) != y.argmax(axis=1))
            self.agree += n - len(differ)
            self.differs += len(differ)
            for i in differ:
                if len(self.differ_names) < NAMED:
                    self.differ_names.append(names[i] if names is not None else f"#{self.samples + i}")
        self.samples += n

    def result(self) -> PairResult:
        top1 = self.agree / self.samples if self.classifier and self.samples else None
        return PairResult(
            a=self.a, b=self.b, max_abs_error=self.max_abs, max_rel_error=self.max_rel,
            tolerance_ratio=self.ratio, cosine=self.cosine, top1_agreement=top1,
            top1_differs=self.differs if self.classifier else 0, top1_differs_names=tuple(self.differ_names),
            atol=self.atol, rtol=self.rtol, fp16=self.fp16, elementwise_pass=self.elementwise,
            passed=bool(self.ratio <= 1.0 and self.informative > 0), samples=self.samples,
            informative=self.informative, atol_capped=self.capped,
        )


def compare(a: np.ndarray, b: np.ndarray, names: tuple[str, str], atol: float, rtol: float,
            fp16: bool = False) -> PairResult:
    """Compare outputs `b` with the reference `a` (each [N, ...]) in one go."""
    stats = PairStats(names[0], names[1], atol, rtol, fp16)
    stats.update([a], [b])
    return stats.result()
