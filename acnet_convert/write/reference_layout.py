"""OUT/persistables/ (`fuse --reference-layout`): the fused weights in the layout that the
reference PaddleCV `resnet_acnet.py` deploy program (`ResNetACNet(deploy=True)`) loads with
`fluid.io.load_persistables` / `paddle.static.load_vars`, so users of that pipeline can replace
its `weights_aggregator.py` with `fuse` and keep their eval and infer scripts.

One file per variable, each a serialized LoDTensor named by the variable:
  - each ACB `NAME` (the 7x7 stem and every 3x3): `NAME_acsquare_weights` + `NAME_acsquare_bias`,
    the fused kernel and bias (the reference deploy program's square conv with a bias);
  - each 1x1 conv: `NAME_weights` and its BN's `BN_scale`, `BN_offset`, `BN_mean`, `BN_variance`
    unchanged, from the source: the reference deploy program keeps those convs and BNs;
  - `fc_0.w_0`, `fc_0.b_0`.
Nothing else: the reference loader reads exactly the variables its program declares.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from acnet_convert.common.errors import ConvertError, UsageError
from acnet_convert.read.lod_tensor import write_lod_tensor
from acnet_convert.nn.plan import Plan
from acnet_convert.common.text import printable


def check_reference_source(plan: Plan | None, source: str) -> Plan:
    """--reference-layout describes the ResNet-ACNet family's reference program: refuse any
    other source before anything is written."""
    if plan is None:
        raise UsageError(f"--reference-layout writes the layout of PaddleCV's resnet_acnet.py deploy program; "
                         f"{printable(source)} is not a ResNet-ACNet checkpoint (leave the option out)")
    return plan


def reference_tensors(plan: Plan, source: Mapping[str, np.ndarray], deploy: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """name -> array of every variable the reference deploy program of `plan` loads: fused ACBs
    from `deploy` (the deploy weights), 1x1 convs and their BNs from `source` (the checkpoint's
    tensors), the FC from `deploy`. Every tensor is checked against the plan's shape."""
    wanted: list[tuple[str, tuple[int, ...], Mapping[str, np.ndarray], str]] = []
    for conv in plan.convs():
        if conv.is_acb:
            for name, shape in conv.deploy_tensors().items():
                wanted.append((name, shape, deploy, "deploy weights"))
        else:
            for name, shape in conv.train_tensors().items():
                wanted.append((name, shape, source, "source"))
    for name, shape in plan.fc_tensors().items():
        wanted.append((name, shape, deploy, "deploy weights"))
    out: dict[str, np.ndarray] = {}
    for name, shape, tensors, where in wanted:
        array = tensors.get(name)
        if array is None:
            raise ConvertError(f"the {where} lack {printable(name)}, which the reference deploy program loads")
        if tuple(array.shape) != tuple(shape):
            raise ConvertError(f"{printable(name)} has shape {list(array.shape)}; the reference deploy program "
                               f"expects {list(shape)}")
        out[name] = np.asarray(array)
    return out


def write_reference_layout(folder: Path, tensors: Mapping[str, np.ndarray]) -> list[Path]:
    """One LoDTensor file per variable in `folder` (created; it must not exist yet)."""
    folder = Path(folder)
    folder.mkdir()
    paths = []
    for name, array in tensors.items():
        if "/" in name or name in ("", ".", ".."):
            raise ConvertError(f"variable {printable(name)} cannot be a file name")
        path = folder / name
        write_lod_tensor(path, array)
        paths.append(path)
    return paths
