"""ACBlock / ConvBN and `reparameterize`: the fused layers compute what the train layers compute.

The oracle is independent of the fusion code: a direct numpy convolution (tests/numpy_conv.py)
and batch norm written out with a literal epsilon, applied to each branch as the train block
defines it (pre-BN bias, cropped asymmetric branches), then summed."""
from __future__ import annotations

import numpy as np
import paddle
import pytest
from paddle import nn

from acnet_convert.nn.models import resnet18_acnet, resnet50_acnet
from acnet_convert.nn import ACBlock, ConvBN, reparameterize
from tests.numpy_conv import batch_norm, conv2d


def _set_bn(bn: nn.BatchNorm, rng: np.random.Generator, tiny_variance: bool = False) -> None:
    """Non-trivial statistics; with `tiny_variance` some channels' running variance is ~1e-3,
    where epsilon 1e-5 and 1e-3 give very different results."""
    c = bn.weight.shape[0]
    variance = rng.uniform(0.3, 2.0, c)
    if tiny_variance:
        variance[::2] = rng.uniform(5e-4, 2e-3, len(variance[::2]))
    state = bn.state_dict()
    state["weight"].set_value(rng.uniform(0.2, 0.6, c).astype("float32"))
    state["bias"].set_value(rng.normal(0, 0.3, c).astype("float32"))
    state["_mean"].set_value(rng.normal(0, 0.3, c).astype("float32"))
    state["_variance"].set_value(variance.astype("float32"))


def _randomize(layer: nn.Layer, rng: np.random.Generator, tiny_variance: bool = False) -> None:
    for bn in (m for m in layer.sublayers() if isinstance(m, nn.BatchNorm)):
        _set_bn(bn, rng, tiny_variance)


def _bn_oracle(y: np.ndarray, bn: nn.BatchNorm, eps: float) -> np.ndarray:
    s = {k: v.numpy().astype(np.float64) for k, v in bn.state_dict().items()}
    return batch_norm(y, s["weight"], s["bias"], s["_mean"], s["_variance"], eps)


def _acb_oracle(block: ACBlock, x: np.ndarray, k: int, stride: int, padding: int, groups: int, eps: float) -> np.ndarray:
    """The train-form ACB computed in numpy, branch by branch (float64)."""
    x = x.astype(np.float64)
    crop = max(k // 2 - padding, 0)
    side = max(padding - k // 2, 0)
    x_ver = x[:, :, :, crop:-crop] if crop else x
    x_hor = x[:, :, crop:-crop, :] if crop else x
    w = {name: getattr(block, name).weight.numpy().astype(np.float64) for name in ("square", "ver", "hor")}
    square = conv2d(x, w["square"], stride, (padding, padding), groups)
    if block.square.bias is not None:
        square = square + block.square.bias.numpy().astype(np.float64).reshape(1, -1, 1, 1)
    ver = conv2d(x_ver, w["ver"], stride, (padding, side), groups)
    hor = conv2d(x_hor, w["hor"], stride, (side, padding), groups)
    return (_bn_oracle(square, block.square_bn, eps) + _bn_oracle(ver, block.ver_bn, eps)
            + _bn_oracle(hor, block.hor_bn, eps))


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("padding_less", [0, 1])
@pytest.mark.parametrize(("eps", "square_bias"), [(1e-5, False), (1e-3, True)])
def test_acblock_fuse_matches_numpy_branches(k: int, stride: int, groups: int, padding_less: int, eps: float,
                                             square_bias: bool) -> None:
    rng = np.random.default_rng(k + 10 * stride + 100 * groups + 1000 * padding_less + int(square_bias))
    paddle.seed(int(rng.integers(1 << 30)))
    padding = k // 2 - padding_less
    block = ACBlock(4, 6, k, stride=stride, padding=padding, groups=groups, square_bias=square_bias, epsilon=eps)
    _randomize(block, rng, tiny_variance=True)
    if square_bias:
        block.square.bias.set_value(rng.normal(0, 0.5, 6).astype("float32"))
    block.eval()
    x = rng.normal(size=(2, 4, 15, 13)).astype("float32")
    expected = _acb_oracle(block, x, k, stride, padding, groups, eps)
    fused = block.fuse()
    got = fused(paddle.to_tensor(x)).numpy()
    assert isinstance(fused, nn.Conv2D) and fused.bias is not None
    assert got.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max()))
    assert np.abs(got - expected).max() < 2e-5 * scale
    assert np.abs(block(paddle.to_tensor(x)).numpy() - expected).max() < 2e-5 * scale  # the block itself


@pytest.mark.parametrize("eps", [1e-5, 1e-3])
def test_convbn_fuse_matches_numpy(eps: float) -> None:
    rng = np.random.default_rng(1)
    layer = ConvBN(8, 16, 1, stride=2, epsilon=eps)
    _randomize(layer, rng, tiny_variance=True)
    layer.eval()
    x = rng.normal(size=(2, 8, 9, 9)).astype("float32")
    expected = _bn_oracle(conv2d(x.astype(np.float64), layer.conv.weight.numpy().astype(np.float64), 2, (0, 0)), layer.bn, eps)
    got = layer.fuse()(paddle.to_tensor(x)).numpy()
    assert np.abs(got - expected).max() < 2e-5 * max(1.0, float(np.abs(expected).max()))


def test_reparameterize_works_on_a_copy_by_default() -> None:
    rng = np.random.default_rng(2)
    model = resnet18_acnet(num_classes=10)
    _randomize(model, rng)
    model.eval()
    x = paddle.to_tensor(rng.normal(size=(2, 3, 64, 64)).astype("float32"))
    expected = model(x).numpy()
    deploy = reparameterize(model)
    assert deploy is not model
    kinds = {type(m) for m in deploy.sublayers()}
    assert not kinds & {ACBlock, ConvBN, nn.BatchNorm, nn.BatchNorm2D}
    assert np.abs(deploy(x).numpy() - expected).max() < 1e-4 * max(1.0, float(np.abs(expected).max()))
    assert np.ptp(expected) > 1e-3
    # the train model is untouched and still trains
    assert sum(isinstance(m, ACBlock) for m in model.sublayers()) == 17
    assert np.array_equal(model(x).numpy(), expected)


def test_reparameterize_inplace_replaces_the_layers_of_the_model_itself() -> None:
    net = nn.Sequential(ACBlock(3, 8, 3), nn.ReLU(), nn.LayerList([ConvBN(8, 8, 1), ACBlock(8, 8, 5, stride=2)]))
    _randomize(net, np.random.default_rng(3))
    assert reparameterize(net, inplace=True) is net
    assert isinstance(net[0], nn.Conv2D) and isinstance(net[2][0], nn.Conv2D) and isinstance(net[2][1], nn.Conv2D)


class _UserRepBlock(nn.Layer):
    """Someone else's re-parameterisable block: a 3x3 conv plus a 1x1 conv (RepVGG-like, no BN),
    with its own fuse() (the duck type reparameterize looks for)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.big = nn.Conv2D(channels, channels, 3, padding=1)
        self.small = nn.Conv2D(channels, channels, 1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.big(x) + self.small(x)

    def fuse(self) -> nn.Conv2D:
        kernel = self.big.weight.numpy().copy()
        kernel[:, :, 1:2, 1:2] += self.small.weight.numpy()
        conv = nn.Conv2D(kernel.shape[1], kernel.shape[0], 3, padding=1)
        conv.weight.set_value(kernel)
        conv.bias.set_value(self.big.bias.numpy() + self.small.bias.numpy())
        return conv


class _FusesItself(nn.Layer):
    """A block that fuses in place (timm's style): fuse() returns None."""

    def __init__(self) -> None:
        super().__init__()
        self.fused = False

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return x

    def fuse(self) -> None:
        self.fused = True


def test_reparameterize_duck_types_any_block_with_a_fuse_method() -> None:
    rng = np.random.default_rng(4)
    net = nn.Sequential(_UserRepBlock(4), nn.ReLU(), nn.Sequential(_FusesItself(), ACBlock(4, 4, 3)))
    _randomize(net, rng)
    net.eval()
    x = paddle.to_tensor(rng.normal(size=(1, 4, 12, 12)).astype("float32"))
    expected = net(x).numpy()
    deploy = reparameterize(net)
    assert isinstance(deploy[0], nn.Conv2D) and isinstance(deploy[2][1], nn.Conv2D)
    assert isinstance(deploy[2][0], _FusesItself) and deploy[2][0].fused
    assert not net[2][0].fused  # the original was copied, not touched
    assert np.abs(deploy(x).numpy() - expected).max() < 1e-5 * max(1.0, float(np.abs(expected).max()))


def test_deploy_model_has_the_reference_resnet_geometry() -> None:
    """Facts from resnet_acnet.py, not from the plan: the 7x7/2 stem, stride 2 on the 3x3 of
    the first bottleneck of stages 3-5 (not on its 1x1), a 1x1/2 projection, 3x3 padding 1."""
    model = resnet50_acnet(num_classes=7, deploy=True)
    convs = model.convs
    expected = {
        "conv1": (7, 2, 3), "res2a_branch2b": (3, 1, 1), "res3a_branch2a": (1, 1, 0), "res3a_branch2b": (3, 2, 1),
        "res3a_branch2c": (1, 1, 0), "res3a_branch1": (1, 2, 0), "res4f_branch2b": (3, 1, 1), "res5a_branch2b": (3, 2, 1),
    }
    for name, (kernel, stride, padding) in expected.items():
        conv = convs[name]
        assert list(conv.weight.shape[2:]) == [kernel, kernel], name
        out = conv(paddle.zeros([1, conv.weight.shape[1], 16, 16]))
        assert out.shape[2] == (16 + 2 * padding - kernel) // stride + 1, name
        assert conv.bias is not None and conv.bias.name == conv.weight.name.replace("_weights", "_bias")
    assert model.fc.weight.shape == [2048, 7]
