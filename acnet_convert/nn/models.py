"""Paddle realisations of a plan: the train graph (ACB branches with BN) and the deploy graph
(one Conv2D with bias per plan conv). Parameters carry the legacy / deploy tensor names, so
`set_state_dict(tensors)` loads a checkpoint (train form) or `fuse`'s deploy.pdparams
(`deploy=True`) as they are:

    model = resnet50_acnet(num_classes=1000, deploy=True)
    model.set_state_dict(paddle.load("OUT/deploy.pdparams"))
    model.eval()
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from acnet_convert.nn.blocks import ACBlock, ConvBN
from acnet_convert.nn.plan import FC_BIAS, FC_WEIGHT, Conv, Plan, resnet


def _train_layer(conv: Conv, legacy_bias: bool) -> nn.Layer:
    args = (conv.in_channels, conv.out_channels, conv.kernel, conv.stride, conv.padding, conv.groups)
    if conv.is_acb:
        return ACBlock(*args, name=conv.name, bn_name=conv.bn, square_bias=legacy_bias)
    return ConvBN(*args, name=conv.name, bn_name=conv.bn)


def _deploy_layer(conv: Conv) -> nn.Conv2D:
    # zero-initialised: the fused weights overwrite them, and random init costs ~1 s on ResNet-50
    zero = paddle.nn.initializer.Constant(0.0)
    return nn.Conv2D(
        conv.in_channels,
        conv.out_channels,
        conv.kernel,
        stride=conv.stride,
        padding=conv.padding,
        groups=conv.groups,
        weight_attr=paddle.ParamAttr(name=conv.deploy_weight, initializer=zero),
        bias_attr=paddle.ParamAttr(name=conv.deploy_bias, initializer=zero),
    )


class ResNetACNet(nn.Layer):
    """A ResNet-ACNet built from its plan; `deploy=True` gives the fused form."""

    def __init__(self, plan: Plan, deploy: bool = False, legacy_bias: bool = False) -> None:
        super().__init__()
        self.plan = plan
        self.deploy = deploy
        # Dygraph refuses a parameter name used before in the process; each model gets its own
        # namespace so a train and a deploy model (same legacy names) can live side by side.
        with paddle.utils.unique_name.guard():
            self.convs = nn.LayerDict(
                {c.name: _deploy_layer(c) if deploy else _train_layer(c, legacy_bias) for c in plan.convs()}
            )
            self.fc = nn.Linear(
                plan.features,
                plan.num_classes,
                weight_attr=paddle.ParamAttr(name=FC_WEIGHT),
                bias_attr=paddle.ParamAttr(name=FC_BIAS),
            )

    def set_state_dict(self, state_dict: Mapping[str, object], use_structured_name: bool | None = None):  # noqa: ANN201
        """Paddle's `set_state_dict`, which also takes tensors keyed by parameter name (what
        `fuse` writes to deploy.pdparams, and what resnet_acnet.py checkpoints hold). With
        `use_structured_name` None the keys decide: all parameter names of this model, or
        structured names (`paddle.save(model.state_dict())`). Keyed by parameter name, every
        parameter must get a tensor (Paddle itself would only warn and keep the initial values)."""
        keys = set(state_dict) - {"StructuredToParameterName@@"}
        names = {p.name for p in self.parameters()}
        if use_structured_name is None:
            if keys and keys <= names:
                use_structured_name = False
            elif keys & set(self.state_dict()):
                use_structured_name = True
            else:
                form = "deploy" if self.deploy else "train"
                raise KeyError(f"the tensors ({sorted(keys)[:2]}, ...) are not parameters of this {form}-form "
                               f"{self.plan.arch}" + ("; deploy.pdparams loads into deploy=True" if not self.deploy else ""))
        if not use_structured_name:
            missing = sorted(names - keys)
            if missing:
                raise KeyError(f"no tensor for parameter {missing[0]!r} ({len(missing)} missing)")
        return super().set_state_dict(state_dict, use_structured_name=use_structured_name)

    def _conv(self, conv: Conv, x: paddle.Tensor) -> paddle.Tensor:
        y = self.convs[conv.name](x)
        return F.relu(y) if conv.relu else y

    def forward(self, image: paddle.Tensor) -> paddle.Tensor:
        pool = self.plan.stem_pool
        x = F.max_pool2d(self._conv(self.plan.stem, image), pool.kernel, pool.stride, pool.padding)
        for block in self.plan.blocks:
            y = x
            for conv in block.body:
                y = self._conv(conv, y)
            shortcut = x if block.shortcut is None else self._conv(block.shortcut, x)
            x = F.relu(y + shortcut)
        x = paddle.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def load_weights(model: nn.Layer, tensors: Mapping[str, np.ndarray]) -> nn.Layer:
    """Load tensors keyed by parameter name; every parameter of `model` must be present."""
    # BN running statistics are parameters of nn.BatchNorm, so this covers them too
    missing = [p.name for p in model.parameters() if p.name not in tensors]
    if missing:
        raise KeyError(f"no tensor for parameter {missing[0]!r}")
    model.set_state_dict(dict(tensors), use_structured_name=False)
    model.eval()
    return model


def train_model(plan: Plan, tensors: Mapping[str, np.ndarray]) -> ResNetACNet:
    legacy_bias = plan.stem.legacy_bias in tensors
    return load_weights(ResNetACNet(plan, legacy_bias=legacy_bias), tensors)




def resnet18_acnet(num_classes: int = 1000, deploy: bool = False) -> ResNetACNet:
    """ResNet-18 with every 7x7/3x3 conv an ACBlock, ready to train in dygraph; `deploy=True`
    gives the fused form, which loads `fuse`'s OUT/deploy.pdparams."""
    return ResNetACNet(resnet(18, num_classes), deploy=deploy)


def resnet34_acnet(num_classes: int = 1000, deploy: bool = False) -> ResNetACNet:
    return ResNetACNet(resnet(34, num_classes), deploy=deploy)


def resnet50_acnet(num_classes: int = 1000, deploy: bool = False) -> ResNetACNet:
    return ResNetACNet(resnet(50, num_classes), deploy=deploy)


def resnet101_acnet(num_classes: int = 1000, deploy: bool = False) -> ResNetACNet:
    return ResNetACNet(resnet(101, num_classes), deploy=deploy)


def resnet152_acnet(num_classes: int = 1000, deploy: bool = False) -> ResNetACNet:
    return ResNetACNet(resnet(152, num_classes), deploy=deploy)
