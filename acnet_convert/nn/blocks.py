"""Paddle layers for training with asymmetric convolution blocks, and their re-parameterisation.

`ACBlock` and `ConvBN` know how to turn themselves into one `Conv2D` with a bias (`fuse()`); the
arithmetic is the package's numpy fusion. `reparameterize` is timm's `reparameterize_model` for
Paddle: it walks any layer tree and replaces every sublayer that has a `fuse()` method (ours, or
a user's own block) with what that method returns, on a deep copy unless `inplace=True`.
"""
from __future__ import annotations

import copy

import numpy as np
import paddle
from paddle import nn

from acnet_convert.fold.fusion import BN_EPSILON, BatchNorm, fold_bn, fuse_acb


def _attr(name: str | None) -> paddle.ParamAttr | None:
    return paddle.ParamAttr(name=name) if name else None


def _batch_norm(channels: int, prefix: str | None, epsilon: float) -> nn.BatchNorm:
    # nn.BatchNorm (not BatchNorm2D) because only it can give the running statistics the
    # legacy names that checkpoints of resnet_acnet.py use.
    if prefix is None:
        return nn.BatchNorm(channels, epsilon=epsilon)
    return nn.BatchNorm(
        channels,
        epsilon=epsilon,
        param_attr=_attr(f"{prefix}_scale"),
        bias_attr=_attr(f"{prefix}_offset"),
        moving_mean_name=f"{prefix}_mean",
        moving_variance_name=f"{prefix}_variance",
    )


def _bn_arrays(bn: nn.BatchNorm, epsilon: float) -> BatchNorm:
    # the running statistics through the public state_dict ('_mean', '_variance' are the
    # structured names every Paddle BN checkpoint uses), not the layer's private attributes
    state = bn.state_dict()
    return BatchNorm(
        gamma=state["weight"].numpy(),
        beta=state["bias"].numpy(),
        mean=state["_mean"].numpy(),
        variance=state["_variance"].numpy(),
        epsilon=epsilon,
    )


def _fused_conv(
    kernel: np.ndarray,
    bias: np.ndarray,
    stride: int,
    padding: int,
    groups: int,
    dtype: str,
    name: str | None = None,
    bias_name: str | None = None,
) -> nn.Conv2D:
    out_channels, in_per_group, k_h, k_w = kernel.shape
    conv = nn.Conv2D(
        in_per_group * groups,
        out_channels,
        (k_h, k_w),
        stride=stride,
        padding=padding,
        groups=groups,
        weight_attr=_attr(name),
        bias_attr=_attr(bias_name),
    )
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
        epsilon: float = BN_EPSILON,
    ) -> None:
        super().__init__()
        padding = kernel_size // 2 if padding is None else padding
        self.conv = nn.Conv2D(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            groups=groups,
            weight_attr=_attr(name and f"{name}_weights"),
            bias_attr=False,
        )
        self.bn = _batch_norm(out_channels, bn_name, epsilon)
        # what fuse() needs, kept as given rather than read back from the layers' internals
        self._geometry = (stride, padding, groups)
        self._epsilon = epsilon
        self._deploy_names = (name and f"{name}_weights", name and f"{name}_bias")

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.bn(self.conv(x))

    def fuse(self) -> nn.Conv2D:
        """The equivalent Conv2D with a bias (BN folded, in float64)."""
        weight = self.conv.weight.numpy()
        kernel, bias = fold_bn(weight, _bn_arrays(self.bn, self._epsilon))
        return _fused_conv(kernel, bias, *self._geometry, str(weight.dtype), *self._deploy_names)


class ACBlock(nn.Layer):
    """Asymmetric Convolution Block: KxK conv+BN + Kx1 conv+BN + 1xK conv+BN, summed.

    When `padding` < K//2 the asymmetric branches crop their input so they stay centred on
    the square kernel (as the official ACBlock does); that is what makes the fusion exact.
    `square_bias` gives the square conv a bias before its BN (older resnet_acnet.py revisions).
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
        epsilon: float = BN_EPSILON,
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
        self.square_bn = _batch_norm(out_channels, bn_name and f"{bn_name}_acsquare", epsilon)
        self.ver = conv("acver", (k, 1), (p, side))
        self.ver_bn = _batch_norm(out_channels, bn_name and f"{bn_name}_acver", epsilon)
        self.hor = conv("achor", (1, k), (side, p))
        self.hor_bn = _batch_norm(out_channels, bn_name and f"{bn_name}_achor", epsilon)
        self._geometry = (stride, p, groups)
        self._epsilon = epsilon
        self._deploy_names = (name and f"{name}_acsquare_weights", name and f"{name}_acsquare_bias")

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        c = self._crop
        x_ver = x[:, :, :, c:-c] if c else x
        x_hor = x[:, :, c:-c, :] if c else x
        return self.square_bn(self.square(x)) + self.ver_bn(self.ver(x_ver)) + self.hor_bn(self.hor(x_hor))

    def fuse(self) -> nn.Conv2D:
        """The equivalent KxK Conv2D with a bias: each branch's BN folded into its kernel, the
        Kx1 and 1xK kernels added to the centre column and row (float64, cast once)."""
        square = self.square.weight.numpy()
        square_bias = None if self.square.bias is None else self.square.bias.numpy()
        kernel, bias = fuse_acb(
            (square, _bn_arrays(self.square_bn, self._epsilon)),
            (self.ver.weight.numpy(), _bn_arrays(self.ver_bn, self._epsilon)),
            (self.hor.weight.numpy(), _bn_arrays(self.hor_bn, self._epsilon)),
            square_bias,
        )
        return _fused_conv(kernel, bias, *self._geometry, str(square.dtype), *self._deploy_names)


def reparameterize(model: nn.Layer, inplace: bool = False) -> nn.Layer:
    """The deploy form of `model`, in eval mode: every sublayer that has a `fuse()` method is
    replaced by what the method returns (a layer computing the same function; a `fuse()` that
    returns None has changed its layer in place, which stays). Duck-typed like timm's
    `reparameterize_model`, so a user's own re-parameterisable block works as ours do. Works on
    a deep copy and leaves `model` as it was, unless `inplace` (as timm and RepVGG do)."""
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()  # fuse() reads BN's running statistics: inference mode throughout
    _replace_fusable(model)
    return model


def _replace_fusable(parent: nn.Layer) -> None:
    for name, child in list(parent.named_children()):
        fuse = getattr(child, "fuse", None)
        if callable(fuse):
            replacement = fuse()
            if replacement is not None:
                replacement.eval()
                setattr(parent, name, replacement)
        else:
            _replace_fusable(child)
