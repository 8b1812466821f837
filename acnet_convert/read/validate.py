"""Check a checkpoint against a plan: architecture detection, then strict names, shapes,
dtypes and values. Every error names the tensor (the reference loader kept random weights)."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from acnet_convert.common.errors import ConvertError
from acnet_convert.nn.plan import DEPTHS, FC_BIAS, Plan, arch_depth, resnet
from acnet_convert.common.text import printable

# the deploy model runs float32 images; mixed-precision training keeps float32 master weights
_DTYPE = np.dtype(np.float32)


def detect_plan(
    tensors: Mapping[str, np.ndarray], source: str, arch: str = "auto", num_classes: int | None = None
) -> Plan:
    """The plan whose tensor names best match the checkpoint (or `arch`), with the class count
    read from the FC bias unless given."""
    if num_classes is None:
        if FC_BIAS not in tensors:
            raise ConvertError(f"{source}: missing tensor {FC_BIAS!r}: cannot tell the class count (pass --num-classes)")
        shape = np.asarray(tensors[FC_BIAS]).shape
        if len(shape) != 1 or shape[0] < 1:
            raise ConvertError(f"{source}: tensor {FC_BIAS!r} has shape {list(shape)}, expected [classes] (or pass --num-classes)")
        num_classes = int(shape[0])
    if arch != "auto":
        try:
            return resnet(arch_depth(arch), num_classes)
        except ValueError as err:
            raise ConvertError(str(err)) from None
    present = set(tensors)

    def score(depth: int) -> int:
        expected = set(resnet(depth, num_classes).train_tensors())
        return len(expected & present) - len(expected - present)

    best = max(DEPTHS, key=score)
    if score(best) <= 0:
        raise ConvertError(f"{source}: no ResNet-ACNet tensors found (expected names like 'conv1_acsquare_weights')")
    return resnet(best, num_classes)


def _describe(plan: Plan, name: str) -> str:
    return f"tensor '{printable(name)}' of {plan.arch}"


def check_tensors(plan: Plan, tensors: Mapping[str, np.ndarray], source: str, allow_nonfinite: bool = False) -> list[str]:
    """Raise ConvertError on the first missing, unknown, mis-shaped, non-float or non-finite
    tensor; return warnings (non-finite values when `allow_nonfinite`)."""
    expected = plan.train_tensors()
    optional = {conv.legacy_bias: (conv.out_channels,) for conv in plan.convs() if conv.is_acb}
    for name, shape in expected.items():
        if name not in tensors:
            raise ConvertError(f"{source}: missing {_describe(plan, name)} (expected shape {list(shape)})")
    for name in sorted(set(tensors) - set(expected) - set(optional)):
        raise ConvertError(f"{source}: unknown tensor '{printable(name)}': it belongs to no layer of {plan.arch} (use --arch to choose another)")
    legacy = [name for name in optional if name in tensors]
    if legacy and len(legacy) != len(optional):
        missing = next(name for name in optional if name not in tensors)
        raise ConvertError(f"{source}: missing {_describe(plan, missing)}: the checkpoint has pre-BN square biases for some blocks but not this one")
    warnings = []
    for name, shape in {**expected, **{n: optional[n] for n in legacy}}.items():
        array = np.asarray(tensors[name])
        if tuple(array.shape) != tuple(shape):
            raise ConvertError(f"{source}: {_describe(plan, name)} has shape {list(array.shape)}, expected {list(shape)}")
        if array.dtype != _DTYPE:
            raise ConvertError(f"{source}: {_describe(plan, name)} has dtype {array.dtype}, expected float32 "
                               "(convert the checkpoint's weights to float32 first)")
        if not np.isfinite(array).all():
            message = f"{source}: {_describe(plan, name)} holds NaN or Inf"
            if not allow_nonfinite:
                raise ConvertError(message + " (pass --allow-nonfinite to convert anyway)")
            warnings.append(message)
        if name.endswith("_variance") and (array < 0).any():
            raise ConvertError(f"{source}: {_describe(plan, name)} holds a negative running variance")
    return warnings
