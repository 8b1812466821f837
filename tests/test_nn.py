"""ACBlock / ConvBN and reparameterize: the fused layers compute what the train layers compute."""
from __future__ import annotations

import numpy as np
import paddle
import pytest
from paddle import nn

from acnet_convert.models import resnet18_acnet
from acnet_convert.nn import ACBlock, ConvBN, reparameterize


def _randomize_bn(layer: nn.Layer, rng: np.random.Generator) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    for bn in (m for m in layer.sublayers() if isinstance(m, nn.BatchNorm)):
        c = bn.weight.shape[0]
        bn.weight.set_value(rng.uniform(0.2, 0.6, c).astype("float32"))  # keeps deep nets O(1)
        bn.bias.set_value(rng.normal(0, 0.3, c).astype("float32"))
        bn._mean.set_value(rng.normal(0, 0.3, c).astype("float32"))
        bn._variance.set_value(rng.uniform(0.3, 2.0, c).astype("float32"))


@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("padding_less", [0, 1])
def test_acblock_fuse_matches_eval_block(k: int, stride: int, groups: int, padding_less: int) -> None:
    rng = np.random.default_rng(k + 10 * stride + 100 * groups + 1000 * padding_less)
    paddle.seed(int(rng.integers(1 << 30)))
    padding = k // 2 - padding_less
    block = ACBlock(4, 6, k, stride=stride, padding=padding, groups=groups)
    _randomize_bn(block, rng)
    block.eval()
    x = paddle.to_tensor(rng.normal(size=(2, 4, 15, 13)).astype("float32"))
    expected = block(x).numpy()
    fused = block.fuse()
    got = fused(x).numpy()
    assert isinstance(fused, nn.Conv2D) and fused.bias is not None
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-5


def test_convbn_fuse_matches() -> None:
    rng = np.random.default_rng(1)
    layer = ConvBN(8, 16, 1, stride=2)
    _randomize_bn(layer, rng)
    layer.eval()
    x = paddle.to_tensor(rng.normal(size=(2, 8, 9, 9)).astype("float32"))
    assert np.abs(layer.fuse()(x).numpy() - layer(x).numpy()).max() < 1e-5


def test_reparameterize_resnet18_removes_every_acblock_and_bn() -> None:
    rng = np.random.default_rng(2)
    model = resnet18_acnet(num_classes=10)
    _randomize_bn(model, rng)
    model.eval()
    x = paddle.to_tensor(rng.normal(size=(2, 3, 64, 64)).astype("float32"))
    expected = model(x).numpy()
    assert any(isinstance(m, ACBlock) for m in model.sublayers())
    reparameterize(model)
    kinds = {type(m) for m in model.sublayers()}
    assert not kinds & {ACBlock, ConvBN, nn.BatchNorm, nn.BatchNorm2D}
    assert np.abs(model(x).numpy() - expected).max() < 1e-4
    assert np.ptp(expected) > 1e-3


def test_reparameterize_walks_any_layer_tree() -> None:
    """A user's own network: ACBlocks nested in Sequential get replaced too."""
    rng = np.random.default_rng(3)
    net = nn.Sequential(ACBlock(3, 8, 3), nn.ReLU(), nn.Sequential(ACBlock(8, 8, 5, stride=2), nn.ReLU()))
    _randomize_bn(net, rng)
    net.eval()
    x = paddle.to_tensor(rng.normal(size=(1, 3, 16, 16)).astype("float32"))
    expected = net(x).numpy()
    reparameterize(net)
    assert not any(isinstance(m, ACBlock) for m in net.sublayers())
    assert np.abs(net(x).numpy() - expected).max() < 1e-5
