"""Paddle layers for training with asymmetric convolution blocks, and their re-parameterisation.

`ACBlock` and `ConvBN` know how to turn themselves into one `Conv2D` with a bias; the arithmetic
is the package's numpy fusion. `reparameterize` walks any layer tree and swaps them in place.
"""
from __future__ import annotations

import numpy as np
import paddle
from paddle import nn

from acnet_convert.fusion import BatchNorm, fold_bn, fuse_acb


def _attr(name: str | None) -> paddle.ParamAttr | None:
    return paddle.ParamAttr(name=name) if name else None


def _batch_norm(channels: int, prefix: str | None) -> nn.BatchNorm:
    # nn.BatchNorm (not BatchNorm2D) because only it can give the running statistics the
    # legacy names that checkpoints of resnet_acnet.py use.
    if prefix is None:
        return nn.BatchNorm(channels)
    return nn.BatchNorm(
        channels,
        param_attr=_attr(f"{prefix}_scale"),
        bias_attr=_attr(f"{prefix}_offset"),
        moving_mean_name=f"{prefix}_mean",
        moving_variance_name=f"{prefix}_variance",
    )


def _bn_arrays(bn: nn.BatchNorm) -> BatchNorm:
    return BatchNorm(
        gamma=bn.weight.numpy(),
        beta=bn.bias.numpy(),
        mean=bn._mean.numpy(),
        variance=bn._variance.numpy(),
        epsilon=bn._epsilon,
    )


def _fused_conv(
    like: nn.Conv2D, kernel: np.ndarray, bias: np.ndarray, name: str | None = None, bias_name: str | None = None
) -> nn.Conv2D:
    out_channels, in_per_group, k_h, k_w = kernel.shape
    conv = nn.Conv2D(
        in_per_group * like._groups,
        out_channels,
        (k_h, k_w),
        stride=like._stride,
        padding=like._padding,
        groups=like._groups,
        weight_attr=_attr(name),
        bias_attr=_attr(bias_name),
    )
    dtype = like.weight.numpy().dtype
    conv.weight.set_value(kernel.astype(dtype))
    conv.bias.set_value(bias.astype(dtype))
    return conv


class ConvBN(nn.Layer):
    """A bias-free conv followed by BatchNorm; `name` gives the legacy parameter names
    (`NAME_weights`, `BN_scale`, ...) so resnet_acnet.py checkpoints load as they are."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        name: str | None = None,
        bn_name: str | None = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2D(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2 if padding is None else padding,
            groups=groups,
            weight_attr=_attr(name and f"{name}_weights"),
            bias_attr=False,
        )
        self.bn = _batch_norm(out_channels, bn_name)
        self._deploy_names = (name and f"{name}_weights", name and f"{name}_bias")

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.bn(self.conv(x))

    def fuse(self) -> nn.Conv2D:
        kernel, bias = fold_bn(self.conv.weight.numpy(), _bn_arrays(self.bn))
        return _fused_conv(self.conv, kernel, bias, *self._deploy_names)


class ACBlock(nn.Layer):
    """Asymmetric Convolution Block: KxK conv+BN + Kx1 conv+BN + 1xK conv+BN, summed.

    When `padding` < K//2 the asymmetric branches crop their input so they stay centred on
    the square kernel (as the official ACBlock does); that is what makes the fusion exact.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        name: str | None = None,
        bn_name: str | None = None,
        square_bias: bool = False,
    ) -> None:
        super().__init__()
        k = kernel_size
        if k % 2 != 1 or k < 3:
            raise ValueError(f"ACBlock needs an odd kernel size >= 3, got {k}")
        p = k // 2 if padding is None else padding
        offset = p - k // 2  # < 0: crop the asymmetric branches' input instead of padding
        self._crop = max(-offset, 0)
        side = max(offset, 0)

        def conv(branch: str, size: tuple[int, int], pad: tuple[int, int], bias: bool = False) -> nn.Conv2D:
            bias_attr = _attr(name and f"{name}.{branch}.conv2d.output.1.b_0") if bias else False
            return nn.Conv2D(
                in_channels,
                out_channels,
                size,
                stride=stride,
                padding=pad,
                groups=groups,
                weight_attr=_attr(name and f"{name}_{branch}_weights"),
                bias_attr=bias_attr,
            )

        self.square = conv("acsquare", (k, k), (p, p), bias=square_bias)
        self.square_bn = _batch_norm(out_channels, bn_name and f"{bn_name}_acsquare")
        self.ver = conv("acver", (k, 1), (p, side))
        self.ver_bn = _batch_norm(out_channels, bn_name and f"{bn_name}_acver")
        self.hor = conv("achor", (1, k), (side, p))
        self.hor_bn = _batch_norm(out_channels, bn_name and f"{bn_name}_achor")
        self._deploy_names = (name and f"{name}_acsquare_weights", name and f"{name}_acsquare_bias")

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        c = self._crop
        x_ver = x[:, :, :, c:-c] if c else x
        x_hor = x[:, :, c:-c, :] if c else x
        return self.square_bn(self.square(x)) + self.ver_bn(self.ver(x_ver)) + self.hor_bn(self.hor(x_hor))

    def fuse(self) -> nn.Conv2D:
        square_bias = None if self.square.bias is None else self.square.bias.numpy()
        kernel, bias = fuse_acb(
            (self.square.weight.numpy(), _bn_arrays(self.square_bn)),
            (self.ver.weight.numpy(), _bn_arrays(self.ver_bn)),
            (self.hor.weight.numpy(), _bn_arrays(self.hor_bn)),
            square_bias,
        )
        return _fused_conv(self.square, kernel, bias, *self._deploy_names)


def reparameterize(model: nn.Layer) -> nn.Layer:
    """Replace every ACBlock and ConvBN inside `model` with its fused Conv2D, in place, and
    return `model` in eval mode (the pattern of timm's `reparameterize_model`)."""
    for parent in [model, *model.sublayers()]:
        for key, child in list(parent._sub_layers.items()):
            if isinstance(child, (ACBlock, ConvBN)):
                parent._sub_layers[key] = child.fuse()
    model.eval()
    return model
