"""The verdict cannot be vacuous (issue 21): whatever the scale of the outputs (logits of 1e-5, 1
or 1e5), a model that outputs zeros, a constant, the right outputs in the wrong channels or
another model's outputs fails against a train graph whose outputs are not constant, while a
correct conversion (float32 rounding of ~1e-6 of each image's largest output) passes; and the
noise floor that widens rtol is measured per sample and capped. Pure numpy: no Paddle."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from acnet_convert.verify.verdict import (FP16_ATOL, FP16_RTOL, NOISE_CAP, NOISE_FACTOR, SPREAD_SHARE, PairStats,
                                          compare, noise_floor, tolerance_ratio, widened_rtol)

ATOL, RTOL = 1e-4, 1e-5  # verify's defaults
SCALES = [1e-5, 1.0, 1e5]


def logits(scale: float, n: int = 8, classes: int = 10, seed: int = 0) -> np.ndarray:
    """What a classifier outputs: per image, logits of `scale` around zero, no two alike."""
    return np.random.default_rng(seed).normal(size=(n, classes)) * scale


def rounded(x: np.ndarray, seed: int = 1) -> np.ndarray:
    """x as another correct float32 implementation computes it: off by ~1e-6 of each image's
    largest |output| (measured: 9.4e-7 for the README's untrained MobileNetV2, 1.1e-6 for a
    trained ResNet-18)."""
    noise = np.random.default_rng(seed).uniform(-1, 1, size=x.shape)
    return x + 1e-6 * np.abs(x).max(axis=1, keepdims=True) * noise


def wrong_models(x: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "zero": np.zeros_like(x),
        "constant": np.full_like(x, x.mean()),
        "per-image constant": np.repeat((x.max(axis=1, keepdims=True) + x.min(axis=1, keepdims=True)) / 2,
                                        x.shape[1], axis=1),  # the best constant of each image
        "channels rolled": np.roll(x, 1, axis=1),
        "channels reversed": x[:, ::-1],
        "unrelated": logits(np.abs(x).max(), len(x), x.shape[1], seed=7),
    }


@pytest.mark.parametrize("scale", SCALES, ids=lambda s: f"logits~{s:g}")
def test_correct_conversion_passes_at_every_scale(scale: float) -> None:
    x = logits(scale)
    pair = compare(x, rounded(x), ("train", "onnx"), ATOL, RTOL)
    assert pair.passed and not pair.inconclusive
    assert pair.tolerance_ratio < 0.2  # margin: rounding of 1e-6 of the scale against rtol 1e-5
    assert pair.informative == len(x)


@pytest.mark.parametrize("scale", SCALES, ids=lambda s: f"logits~{s:g}")
@pytest.mark.parametrize("wrong", sorted(wrong_models(np.ones((1, 2)))))
def test_wrong_models_fail_at_every_scale(scale: float, wrong: str) -> None:
    x = logits(scale)
    pair = compare(x, wrong_models(x)[wrong], ("train", "onnx"), ATOL, RTOL)
    assert not pair.passed and not pair.inconclusive and pair.tolerance_ratio > 10, pair
    # the old rule (atol unbounded) passed every one of them at logits of 1e-5
    old = np.abs(x - wrong_models(x)[wrong]).max(axis=1) / (ATOL + RTOL * np.abs(x).max(axis=1))
    assert (old.max() <= 1) == (scale == 1e-5)


@pytest.mark.parametrize("scale", SCALES, ids=lambda s: f"logits~{s:g}")
def test_wrong_models_fail_the_float16_tolerance_too(scale: float) -> None:
    x = logits(scale)
    for name, y in wrong_models(x).items():
        pair = compare(x, y, ("train", "onnx"), ATOL, RTOL, fp16=True)
        assert pair.atol == FP16_ATOL and pair.rtol == FP16_RTOL
        assert not pair.passed and pair.tolerance_ratio > 5, name


@pytest.mark.parametrize("scale", SCALES, ids=lambda s: f"~{s:g}")
def test_dense_outputs_with_channels_permuted_fail(scale: float) -> None:
    """A segmentation-like [N, C, H, W] output with its channels in another order."""
    x = np.random.default_rng(2).normal(size=(2, 3, 8, 8)) * scale
    assert compare(x, rounded(x.reshape(2, -1)).reshape(x.shape), ("train", "onnx"), ATOL, RTOL).passed
    for y in (x[:, [1, 2, 0]], np.zeros_like(x)):
        pair = compare(x, y, ("train", "onnx"), ATOL, RTOL)
        assert not pair.passed and pair.tolerance_ratio > 10


def test_atol_is_capped_only_where_the_outputs_are_small() -> None:
    """Logits of ~1e-5 are judged with 0.1% of their spread; logits of ~1 with atol as given."""
    small, large = logits(1e-5, n=3), logits(1.0, n=5)
    x = np.concatenate([small, large])
    pair = compare(x, rounded(x), ("train", "onnx"), ATOL, RTOL)
    assert pair.passed and pair.atol_capped == 3 and pair.samples == 8
    # a difference of 0.9 x atol on a large image still passes: atol is intact there
    y = x.copy()
    y[3:, 0] += 0.9 * ATOL
    assert compare(x, y, ("train", "onnx"), ATOL, RTOL).passed
    # the same difference on a small image is several times its spread: it fails
    y = x.copy()
    y[0, 0] += 0.9 * ATOL
    assert not compare(x, y, ("train", "onnx"), ATOL, RTOL).passed


def test_a_constant_train_graph_is_inconclusive_not_a_match() -> None:
    """When the reference is constant within the tolerance on every image, a constant model
    would pass as well: the pair does not pass, and says why."""
    x = np.full((4, 10), 3.0) + np.random.default_rng(0).normal(size=(4, 10)) * 1e-7
    pair = compare(x, x.copy(), ("train", "onnx"), ATOL, RTOL)
    assert pair.tolerance_ratio == 0 and pair.inconclusive and not pair.passed and pair.informative == 0
    assert pair.to_json()["inconclusive"] is True and pair.to_json()["pass"] is False
    # one image that is not constant makes the comparison conclusive
    x[2] = logits(1.0, n=1)[0]
    assert compare(x, x.copy(), ("train", "onnx"), ATOL, RTOL).passed


def test_one_value_per_image_is_judged_against_the_batch() -> None:
    """A regression head ([N, 1]) has no spread within an image: the batch's values stand in."""
    x = np.array([[2e-6], [-1e-6], [5e-6], [0.5e-6]])
    assert compare(x, x * (1 + 1e-7), ("train", "onnx"), ATOL, RTOL).passed
    assert not compare(x, np.zeros_like(x), ("train", "onnx"), ATOL, RTOL).passed
    assert not compare(x, np.full_like(x, x.mean()), ("train", "onnx"), ATOL, RTOL).passed
    single = compare(x[:1], x[:1].copy(), ("train", "onnx"), ATOL, RTOL)  # one image, one value: nothing to tell
    assert single.inconclusive and not single.passed


@settings(max_examples=300, deadline=None)
@given(x=arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(2, 12)),
                elements=st.floats(-1e6, 1e6, allow_nan=False)),
       c=st.floats(-1e6, 1e6, allow_nan=False),
       atol=st.floats(0, 1e6), rtol=st.floats(0, NOISE_CAP), fp16=st.booleans())
def test_no_constant_model_ever_passes(x: np.ndarray, c: float, atol: float, rtol: float, fp16: bool) -> None:
    """Whatever the outputs, tolerances and constant: a constant model fails or is inconclusive
    (the verdict's guarantee: where an image's spread exceeds its tolerance every constant
    misses it by more; where none does, the pair is inconclusive)."""
    for y in (np.full_like(x, c), np.repeat((x.max(axis=1, keepdims=True) + x.min(axis=1, keepdims=True)) / 2,
                                            x.shape[1], axis=1)):
        assert not compare(x, y, ("train", "onnx"), atol, rtol, fp16=fp16).passed


def test_streamed_counts_add_up() -> None:
    x = np.concatenate([logits(1e-5, n=2), logits(1.0, n=3)])
    stats = PairStats("train", "onnx", ATOL, RTOL)
    stats.update([x[:2]], [x[:2]])
    stats.update([x[2:]], [x[2:]])
    result = stats.result()
    assert (result.samples, result.informative, result.atol_capped) == (5, 5, 2)


def test_tolerance_ratio_uses_the_capped_atol() -> None:
    ratio = tolerance_ratio(np.array([1e-6, 1e-6, 0.0, 1.0, np.nan]), np.array([1e-5, 1.0, 0.0, 0.0, 1.0]),
                            np.array([1e-5, 1.0, 0.0, 0.0, 1.0]), ATOL, 0.0)
    assert ratio[0] == pytest.approx(1e-6 / (SPREAD_SHARE * 1e-5))  # atol capped at 0.1% of the spread
    assert ratio[1] == pytest.approx(1e-6 / ATOL)  # atol as given
    assert list(ratio[2:]) == [0.0, np.inf, np.inf]  # zero tolerance: 0 when equal, else inf; NaN inf


# ------------------------------------------------------------------------------------------
# the noise floor and its cap


def test_noise_floor_is_relative_to_each_samples_own_scale() -> None:
    """Sample 0's largest output is 1000, sample 1's is 1: a difference of 1e-3 in sample 1 is
    1e-3 of its scale (not 1e-6 of the batch's largest output)."""
    a = np.array([[1000.0, -3.0, 2.0], [1.0, 0.5, -0.25]])
    b = a.copy()
    b[1, 2] += 1e-3
    assert noise_floor([a], [b]) == pytest.approx(1e-3)
    b = a.copy()
    b[0, 1] += 1e-3  # 1e-6 of sample 0's scale
    assert noise_floor([a], [b]) == pytest.approx(1e-6)
    assert noise_floor([a], [a]) == 0.0
    nan = a.copy()
    nan[0, 0] = np.nan
    assert noise_floor([a], [nan]) == np.inf


def test_noise_floor_joins_several_outputs_per_sample() -> None:
    a = [np.array([[1.0, 2.0], [10.0, 0.0]]), np.array([[4.0], [1.0]])]
    b = [a[0], a[1] + np.array([[4e-3], [0.0]])]
    assert noise_floor(a, b) == pytest.approx(1e-3)  # sample 0's scale is 4


@pytest.mark.parametrize("noise,expected", [
    (0.0, RTOL),
    (1e-8, RTOL + NOISE_FACTOR * 1e-8),  # a well-conditioned network: rtol barely moves
    (1e-5, RTOL + NOISE_FACTOR * 1e-5),
    (3e-4, NOISE_CAP),  # 1e-5 + 1.2e-3 > 1e-3: capped
    (0.5, NOISE_CAP),  # a noisy model (or a wrong optimised pass) never widens rtol beyond the cap
    (float("inf"), NOISE_CAP),
])
def test_widened_rtol_and_its_cap(noise: float, expected: float) -> None:
    assert widened_rtol(RTOL, noise) == pytest.approx(expected)


def test_widening_never_narrows_the_users_rtol() -> None:
    assert widened_rtol(5e-3, 0.0) == 5e-3 and widened_rtol(5e-3, 1.0) == 5e-3


def test_nonfinite_outputs_agree_only_when_allowed_and_alike() -> None:
    """--allow-nonfinite: NaN (or the same Inf) at the same place in both graphs is equal; a
    NaN in one graph only, or another Inf, still fails; without the flag any NaN fails."""
    x = logits(1.0, n=3)
    x[:, 3] = np.nan
    x[0, 5] = np.inf
    assert not compare(x, x.copy(), ("train", "onnx"), ATOL, RTOL).passed
    stats = PairStats("train", "onnx", ATOL, RTOL, allow_nonfinite=True)
    stats.update([x], [x.copy()])
    assert stats.result().passed and stats.nonfinite == 4
    for i, j, value in [(1, 3, 0.5), (0, 5, -np.inf), (2, 0, np.nan)]:
        y = x.copy()
        y[i, j] = value
        stats = PairStats("train", "onnx", ATOL, RTOL, allow_nonfinite=True)
        stats.update([x], [y])
        assert not stats.result().passed, (i, j, value)
    assert noise_floor([x], [x.copy()], allow_nonfinite=True) == 0.0 and noise_floor([x], [x.copy()]) == np.inf
