"""The numpy arithmetic of folding and proving (fold/): the affine algebra against a direct
numpy convolution of the ops as written (tests/graph_oracle.py), the proof's evaluator against
Paddle's own kernels, and the probes' rank-one shortcut against the full tensor."""
from __future__ import annotations

import numpy as np
import pytest

from acnet_convert.fold import affine as A
from acnet_convert.fold import numeric, proof
from tests.graph_oracle import avg_pool, conv

rng = np.random.default_rng(1)
C = 4


def kernel(cout: int, cin: int, k: tuple[int, int], groups: int = 1) -> np.ndarray:
    return rng.normal(size=(cout, cin // groups, *k))


def conv_of(a: A.Affine, x: np.ndarray) -> np.ndarray:
    c = A.as_conv(a)
    return conv(x, c.kernel, c.bias, c.stride, list(c.padding), c.dilation, c.groups)


def close(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape
    return float(np.abs(got - want).max() / np.abs(want).max())


I = A.identity(C)
K33, K31, K13 = kernel(6, C, (3, 3)), kernel(6, C, (3, 1)), kernel(6, C, (1, 3))
KD = kernel(C, C, (3, 3), C)
KG = kernel(C, C, (3, 3), 2)


CASES = {
    "acb stride 2": (
        lambda: A.add([A.conv(I, K33, None, (2, 2), (1, 1), (1, 1, 1, 1), 1), A.conv(I, K31, None, (2, 2), (1, 1), (1, 1, 0, 0), 1),
                       A.conv(I, K13, None, (2, 2), (1, 1), (0, 0, 1, 1), 1)]),
        lambda x: conv(x, K33, None, (2, 2), [1, 1, 1, 1], (1, 1), 1) + conv(x, K31, None, (2, 2), [1, 1, 0, 0], (1, 1), 1)
        + conv(x, K13, None, (2, 2), [0, 0, 1, 1], (1, 1), 1)),
    "stride (2, 1)": (
        lambda: A.scale_shift(A.add([A.conv(I, K33, None, (2, 1), (1, 1), (1, 1, 1, 1), 1),
                                     A.conv(I, K13, None, (2, 1), (1, 1), (0, 0, 1, 1), 1)]), 0.7, -0.2),
        lambda x: 0.7 * (conv(x, K33, None, (2, 1), [1, 1, 1, 1], (1, 1), 1) + conv(x, K13, None, (2, 1), [0, 0, 1, 1], (1, 1), 1)) - 0.2),
    "dilation 2 with a crop": (
        lambda: A.add([A.conv(I, KD, None, (1, 1), (2, 2), (1, 1, 1, 1), C), A.conv(A.pad(I, 0, 0, -1, -1), KD[:, :, :, :1], None, (1, 1), (2, 2), (1, 1, 0, 0), C)]),
        lambda x: conv(x, KD, None, (1, 1), [1, 1, 1, 1], (2, 2), C) + conv(x[:, :, :, 1:-1], KD[:, :, :, :1], None, (1, 1), [1, 1, 0, 0], (2, 2), C)),
    "depthwise then dense 1x1": (
        lambda: A.conv(A.conv(I, KD, None, (1, 1), (1, 1), (1, 1, 1, 1), C), kernel(5, C, (1, 1)) * 0 + 1, None, (1, 1), (1, 1), (0, 0, 0, 0), 1),
        lambda x: conv(conv(x, KD, None, (1, 1), [1, 1, 1, 1], (1, 1), C), np.ones((5, C, 1, 1)), None, (1, 1), [0, 0, 0, 0], (1, 1), 1)),
    "groups 2 plus identity": (
        lambda: A.add([A.conv(I, KG, None, (1, 1), (1, 1), (1, 1, 1, 1), 2), A.scale_shift(I, 2.0, 1.0)]),
        lambda x: conv(x, KG, None, (1, 1), [1, 1, 1, 1], (1, 1), 2) + 2 * x + 1),
    "average pool counting the padding": (
        lambda: A.avg_pool(I, (3, 3), (2, 2), (1, 1, 1, 1)),
        lambda x: avg_pool(x, 3, 2, 1, exclusive=False)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_composites_equal_the_ops_as_written(case: str) -> None:
    build, written = CASES[case]
    for h, w in ((9, 11), (10, 12)):
        x = rng.normal(size=(1, C, h, w))
        assert close(conv_of(build(), x), written(x)) < 1e-12


@pytest.mark.parametrize("build, written", [
    # the interior agrees, the border does not: what the proof is for
    (lambda: A.avg_pool(I, (3, 3), (1, 1), (1, 1, 1, 1)), lambda x: avg_pool(x, 3, 1, 1, exclusive=True)),
    (lambda: A.conv(A.conv(I, KD, None, (1, 1), (1, 1), (1, 1, 1, 1), C), KD, None, (1, 1), (1, 1), (1, 1, 1, 1), C),
     lambda x: conv(conv(x, KD, None, (1, 1), [1, 1, 1, 1], (1, 1), C), KD, None, (1, 1), [1, 1, 1, 1], (1, 1), C)),
])
def test_border_mismatches_are_visible_and_the_interior_is_exact(build, written) -> None:
    x = rng.normal(size=(1, C, 9, 11))
    got, want = conv_of(build(), x), written(x)
    assert close(got, want) > 1e-2
    assert np.abs(got - want)[:, :, 2:-2, 2:-2].max() < 1e-12


def test_owned_maps_are_updated_in_place_and_others_are_not() -> None:
    a = A.scale_shift(A.conv(I, K33, None, (1, 1), (1, 1), (1, 1, 1, 1), 1), 1.5)  # a kernel of the fold's own
    before = a.kernel.copy()
    A.scale_shift(a, 2.0)
    assert np.array_equal(a.kernel, before)
    A.scale_shift(a, 2.0, owned=True)
    assert np.allclose(a.kernel, 2 * before)


def test_a_weight_of_the_graph_is_never_written() -> None:
    """A conv's own weight is read, never written, even by an op that owns the map holding it:
    the first op that scales or sums it makes the float64 copy."""
    w1, w2 = K33.copy(), K33[:, :, :, ::-1].copy()
    scaled = A.scale_shift(A.conv(I, w1, None, (1, 1), (1, 1), (1, 1, 1, 1), 1), 2.0, owned=True)
    summed = A.add([A.conv(I, w1, None, (1, 1), (1, 1), (1, 1, 1, 1), 1),
                    A.conv(I, w2, None, (1, 1), (1, 1), (1, 1, 1, 1), 1)], [True, True])
    assert np.array_equal(w1, K33) and np.array_equal(w2, K33[:, :, :, ::-1])
    assert np.allclose(scaled.kernel, 2 * K33) and np.allclose(summed.kernel, w1 + w2)


def test_a_crop_the_conv_cannot_express_is_refused() -> None:
    with pytest.raises(A.NotAConv, match="crop"):
        A.as_conv(A.pad(A.conv(I, K33, None, (1, 1), (1, 1), (0, 0, 0, 0), 1), -1, 0, 0, 0))


# ----------------------------------------------------------------------------------------------
# the proof's evaluator is Paddle's semantics


@pytest.fixture(scope="module")
def F():
    import paddle

    paddle.disable_static()
    return paddle.nn.functional, paddle


@pytest.mark.parametrize("stride, dilation, padding, groups", [
    ((1, 1), (1, 1), (1, 1, 1, 1), 1), ((2, 2), (1, 1), (0, 1, 2, 1), 2), ((2, 1), (2, 3), (2, 2, 3, 3), 4),
])
def test_numeric_conv_is_paddles(F, stride, dilation, padding, groups) -> None:
    functional, paddle = F
    x = rng.normal(size=(2, 8, 9, 12)).astype(np.float32)
    w = rng.normal(size=(8, 8 // groups, 3, 2)).astype(np.float32)
    b = rng.normal(size=8).astype(np.float32)
    want = functional.conv2d(paddle.to_tensor(x), paddle.to_tensor(w), paddle.to_tensor(b), stride=list(stride),
                             padding=[padding[0], padding[1], padding[2], padding[3]], dilation=list(dilation), groups=groups).numpy()
    got = numeric.conv2d(x.astype(np.float64), w, b, stride, dilation, padding, groups)
    assert close(got, want) < 1e-5
    one = numeric.RankOne(rng.normal(size=8), rng.normal(size=(1, 1, 9, 12)))
    assert close(numeric.conv2d(one, w, b, stride, dilation, padding, groups),
                 numeric.conv2d(np.asarray(one), w, b, stride, dilation, padding, groups)) < 1e-12


@pytest.mark.parametrize("exclusive, ceil_mode, padding", [(True, False, 1), (False, False, 1), (True, True, 0), (False, True, 1)])
def test_numeric_average_pool_is_paddles(F, exclusive, ceil_mode, padding) -> None:
    functional, paddle = F
    x = rng.normal(size=(1, 3, 10, 7)).astype(np.float32)
    want = functional.avg_pool2d(paddle.to_tensor(x), 3, 2, padding, ceil_mode=ceil_mode, exclusive=exclusive).numpy()
    got = numeric.avg_pool2d(x, (3, 3), (2, 2), (padding,) * 4, exclusive, ceil_mode)
    assert close(got, want) < 1e-5


def test_probe_sizes_cover_every_stride_phase_and_both_borders() -> None:
    conv = A.as_conv(A.conv(I, K33, None, (2, 2), (1, 1), (1, 1, 1, 1), 1))
    sizes = proof.probe_sizes(conv)
    assert {h % 2 for h, _ in sizes} == {0, 1} and {w % 2 for _, w in sizes} == {0, 1}
    assert all(h >= 3 and w >= 3 for h, w in sizes)
    assert proof.residual(np.ones((1, 2)), np.ones((1, 3))) == float("inf")
