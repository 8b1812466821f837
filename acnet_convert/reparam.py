"""Walk a plan and ask the fusion for each conv's deploy kernel and bias (the timm pattern:
one walker, one fuse function per kind of layer)."""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import numpy as np

from acnet_convert.fusion import BatchNorm, fold_bn, fuse_acb
from acnet_convert.plan import BRANCHES, Conv, Plan


def _bn(tensors: Mapping[str, np.ndarray], prefix: str) -> BatchNorm:
    return BatchNorm(
        gamma=tensors[f"{prefix}_scale"],
        beta=tensors[f"{prefix}_offset"],
        mean=tensors[f"{prefix}_mean"],
        variance=tensors[f"{prefix}_variance"],
    )


def fuse_conv(conv: Conv, tensors: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The float64 deploy (kernel, bias) of one plan conv from its train-form tensors."""
    if not conv.is_acb:
        return fold_bn(tensors[f"{conv.name}_weights"], _bn(tensors, conv.bn))
    square, vertical, horizontal = ((tensors[f"{conv.name}_{b}_weights"], _bn(tensors, f"{conv.bn}_{b}")) for b in BRANCHES)
    return fuse_acb(square, vertical, horizontal, tensors.get(conv.legacy_bias))


def deploy_weights(
    plan: Plan,
    tensors: Mapping[str, np.ndarray],
    track: Callable[[list[Conv], str], Iterable[Conv]] | None = None,
) -> dict[str, np.ndarray]:
    """Every deploy tensor of `plan` (names from `Plan.deploy_tensors`), cast once to the
    checkpoint's dtype. `track` wraps the list of convs, e.g. in a progress bar."""
    dtype = np.asarray(tensors[plan.stem.deploy_weight]).dtype
    out: dict[str, np.ndarray] = {}
    convs = list(plan.convs())
    for conv in track(convs, "fusing") if track else convs:
        kernel, bias = fuse_conv(conv, tensors)
        out[conv.deploy_weight] = kernel.astype(dtype)
        out[conv.deploy_bias] = bias.astype(dtype)
    for name in plan.fc_tensors():
        out[name] = np.asarray(tensors[name]).astype(dtype)
    return out
