"""The ONNX deploy graph: a straight-line translation of a plan with `onnx.helper`.

Every plan conv becomes one `Conv` node with a bias (node name = conv name, initializers =
the deploy tensor names), so the graph holds no BatchNormalization. Tensor names are
predictable for per-layer comparison: a conv writes `NAME`, its ReLU `NAME.relu`, a block's
add `BLOCK.add` and its ReLU `BLOCK`; the graph reads `image` [N,3,H,W] and writes `logits`.

Imports onnx, never Paddle.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import acnet_convert
from acnet_convert.checkpoint import load_pickle
from acnet_convert.errors import ConvertError
from acnet_convert.manifest import DEPLOY_WEIGHTS, INPUT_NAME, ONNX_MODEL, manifest_plan, read_manifest
from acnet_convert.plan import FC, FC_BIAS, FC_WEIGHT, Conv, Plan

MIN_OPSET, MAX_OPSET = 13, 21
OUTPUT = "logits"
PRODUCER = "acnet-convert"

def _initializers(plan: Plan, weights: Mapping[str, np.ndarray]) -> list[onnx.TensorProto]:
    """The deploy tensors as float32 initializers, in plan order; every name, shape and
    float dtype is checked against the plan first."""
    expected = plan.deploy_tensors()
    for name, shape in expected.items():
        if name not in weights:
            raise ConvertError(f"deploy weights lack tensor {name} (expected shape {list(shape)} for {plan.arch})")
        array = np.asarray(weights[name])
        if array.shape != shape:
            raise ConvertError(
                f"deploy tensor {name} has shape {list(array.shape)}, expected {list(shape)} for "
                f"{plan.arch} with {plan.num_classes} classes"
            )
        if not np.issubdtype(array.dtype, np.floating):
            raise ConvertError(f"deploy tensor {name} has dtype {array.dtype}, expected a float type")
    extra = sorted(set(weights) - set(expected))
    if extra:
        raise ConvertError(f"deploy tensor {extra[0]} belongs to no layer of {plan.arch} ({len(extra)} unexpected)")
    # The graph's input is float32, so every initializer is too (a no-op for float32 weights).
    return [numpy_helper.from_array(np.asarray(weights[name], np.float32), name) for name in expected]


def _conv(conv: Conv, x: str) -> list[onnx.NodeProto]:
    """Conv with bias, then ReLU when the plan says so."""
    k, p, s = conv.kernel, conv.padding, conv.stride
    nodes = [
        helper.make_node(
            "Conv",
            [x, conv.deploy_weight, conv.deploy_bias],
            [conv.name],
            name=conv.name,
            kernel_shape=[k, k],
            pads=[p, p, p, p],
            strides=[s, s],
            dilations=[1, 1],
            group=conv.groups,
        )
    ]
    if conv.relu:
        nodes.append(helper.make_node("Relu", [conv.name], [f"{conv.name}.relu"], name=f"{conv.name}.relu"))
    return nodes


def _out(nodes: list[onnx.NodeProto]) -> str:
    return nodes[-1].output[0]


def _nodes(plan: Plan) -> list[onnx.NodeProto]:
    nodes = _conv(plan.stem, INPUT_NAME)
    pool = plan.stem_pool
    nodes.append(
        helper.make_node(
            "MaxPool",
            [_out(nodes)],
            ["pool1"],
            name="pool1",
            kernel_shape=[pool.kernel] * 2,
            strides=[pool.stride] * 2,
            pads=[pool.padding] * 4,
        )
    )
    for block in plan.blocks:
        x = _out(nodes)
        y = x
        for conv in block.body:
            nodes += _conv(conv, y)
            y = _out(nodes)
        shortcut = x
        if block.shortcut is not None:
            nodes += _conv(block.shortcut, x)
            shortcut = _out(nodes)
        nodes.append(helper.make_node("Add", [y, shortcut], [f"{block.name}.add"], name=f"{block.name}.add"))
        nodes.append(helper.make_node("Relu", [f"{block.name}.add"], [block.name], name=f"{block.name}.relu"))
    nodes.append(helper.make_node("GlobalAveragePool", [_out(nodes)], ["pool5"], name="pool5"))
    nodes.append(helper.make_node("Flatten", ["pool5"], ["pool5.flat"], name="pool5.flat", axis=1))
    # Paddle's FC weight is [in, out], which is exactly Gemm's B with transB=0, so the
    # initializer stays byte-identical to deploy.pdparams under the same name (no transposed
    # copy that tools or `verify` would have to know about).
    nodes.append(helper.make_node("Gemm", ["pool5.flat", FC_WEIGHT, FC_BIAS], [OUTPUT], name=FC, transB=0))
    return nodes


def build_onnx(
    plan: Plan,
    weights: Mapping[str, np.ndarray],
    input_size: int,
    opset: int = 17,
    static_batch: bool = False,
    batch_size: int = 1,
    metadata: Mapping[str, str] = {},
) -> onnx.ModelProto:
    """The deploy graph of `plan` with `weights` (deploy names) as initializers.

    The input is `image` float32 [N, 3, input_size, input_size] with N symbolic, or
    `batch_size` when `static_batch`; the output is `logits` [N, num_classes].
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"ONNX opset {opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET}")
    if input_size < 1 or batch_size < 1:
        raise ValueError(f"input size and batch size must be positive (got {input_size}, {batch_size})")
    batch: int | str = batch_size if static_batch else "N"
    graph = helper.make_graph(
        _nodes(plan),
        plan.arch,
        inputs=[helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [batch, 3, input_size, input_size])],
        outputs=[helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [batch, plan.num_classes])],
        initializer=_initializers(plan, weights),
    )
    opset_id = helper.make_opsetid("", opset)
    model = helper.make_model(
        graph, opset_imports=[opset_id], producer_name=PRODUCER, producer_version=acnet_convert.__version__
    )
    # onnx stamps its own newest IR version, which ONNX Runtime may not read yet; the
    # oldest IR that carries this opset is what every runtime supporting the opset accepts.
    model.ir_version = helper.find_min_ir_version_for([opset_id])
    model.doc_string = f"{plan.arch}-ACNet deploy graph ({plan.num_classes} classes), made by {PRODUCER}"
    helper.set_model_props(model, {str(k): str(v) for k, v in metadata.items()})
    return model


def write_onnx(model: onnx.ModelProto, path: Path) -> None:
    """Check `model` (onnx.checker with full_check, which runs strict, type-checked shape
    inference) and write it atomically: a temporary file beside `path`, then a rename."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ConvertError(f"{path.parent}: output directory does not exist")
    data = model.SerializeToString()  # serialized once: checked and written from the same bytes
    onnx.checker.check_model(data, full_check=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        # os.open honours the umask, so the file gets the usual permissions (mkstemp's are 0600)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise ConvertError(f"cannot write {path}: {e.strerror or e}") from None
        raise


def onnx_metadata(manifest: Mapping[str, Any]) -> dict[str, str]:
    """The model's metadata_props: what it was made from and by which tool."""
    source = manifest.get("source") or {}
    return {
        "arch": str(manifest["arch"]),
        "num_classes": str(manifest["num_classes"]),
        "input_size": str(manifest["input_size"]),
        "source_path": str(source.get("path", "")),
        "source_sha256": str(source.get("sha256", "")),
        "tool_version": str(manifest.get("tool_version", "")),
    }


def export_onnx(out_dir: Path, output: Path | None = None, opset: int = 17, static_batch: bool = False) -> Path:
    """Write the ONNX model of a `fuse` output directory (default `out_dir/model.onnx`) from
    its manifest.json and deploy.pdparams; returns the path written."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    weights_path = out_dir / DEPLOY_WEIGHTS
    if not weights_path.is_file():
        raise ConvertError(f"{weights_path} is missing: {out_dir} is not a complete output of 'acnet-convert fuse'")
    plan = manifest_plan(manifest)
    weights = load_pickle(weights_path)
    try:
        model = build_onnx(
            plan, weights, int(manifest["input_size"]), opset, static_batch, metadata=onnx_metadata(manifest)
        )
    except ConvertError as e:
        raise ConvertError(f"{weights_path}: {e}") from None
    output = out_dir / ONNX_MODEL if output is None else Path(output)
    write_onnx(model, output)
    return output
