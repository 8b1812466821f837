"""`verify --per-layer` for an ONNX source: every fused group judged alone, on the source model's
own tensors, in ONNX Runtime.

For each row of the manifest's fusion table the source model already computes the group's
input and output tensors (they keep their ONNX names). The fused conv (the weight and bias
read from the fused model.onnx, with the geometry of the Conv there that reads them, which must
be the row's) is appended to the source graph reading that very input, and so is the
comparison: per sample, the largest |fused - source|, the largest |source| and the source's
largest and smallest value (its spread). One run, with ONNX Runtime's graph optimisations off
(the source as written), fetches only those four numbers per sample and group: memory stays
that of one forward pass, and every group sees exactly the input the source gave it. The rule
is the report's (see verdict).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from acnet_convert.common.errors import ConvertError
from acnet_convert.common.text import one_line, printable
from acnet_convert.verify.device import Device
from acnet_convert.verify.report import LayerResult
from acnet_convert.verify.verdict import tolerance_ratio

_PREFIX = "acnet_verify_per_layer"


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def fused_convs(fused: Any) -> dict[str, dict[str, Any]]:
    """Conv weight name -> the fused model's geometry of the Conv reading it (the row's keys)."""
    out = {}
    for node in fused.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        pads = list(_attr(node, "pads", [0, 0, 0, 0]))
        auto = _attr(node, "auto_pad", b"NOTSET")
        out[node.input[1]] = {
            "bias": node.input[2] if len(node.input) > 2 else None,
            "stride": tuple(_attr(node, "strides", [1, 1])),
            "padding": (pads[0], pads[2], pads[1], pads[3]) if len(pads) == 4 and auto in (b"NOTSET", "NOTSET") else auto,
            "dilation": tuple(_attr(node, "dilations", [1, 1])),
            "groups": int(_attr(node, "group", 1)),
        }
    return out


def _why_not(row: Mapping[str, Any], weights: Mapping[str, np.ndarray], convs: Mapping[str, Mapping[str, Any]],
             tensors: set[str]) -> str | None:
    weight, bias = row["deploy_tensors"]
    for name in (weight, bias):
        if name not in weights:
            return f"fused tensor {printable(name)} is not in the fused model"
    for name in (row["input"], row["output"]):
        if name not in tensors:
            return f"the source model has no tensor {printable(name)}: the manifest is not of this source"
    found = convs.get(weight)
    if found is None:
        return f"no Conv of the fused model reads {printable(weight)}"
    want = {"bias": bias, "stride": tuple(row["stride"]), "padding": tuple(row["padding"]),
            "dilation": tuple(row["dilation"]), "groups": int(row["groups"])}
    diff = [k for k in want if found[k] != want[k]]
    return None if not diff else f"the fused Conv's {diff[0]} is {found[diff[0]]}, the manifest says {want[diff[0]]}"


def _per_sample(helper: Any, nodes: list, inits: list, x: str, out: str, opset: int, reduce: str = "ReduceMax",
                absolute: bool = False) -> None:
    """out[i] = the max (or min) of x[i, ...] (of |x[i, ...]| when `absolute`) over everything but
    the batch axis (ReduceMax's axes became an input in opset 18)."""
    if absolute:
        nodes.append(helper.make_node("Abs", [x], [f"{out}.abs"]))
        x = f"{out}.abs"
    nodes.append(helper.make_node("Flatten", [x], [f"{out}.flat"], axis=1))
    if opset >= 18:
        axes = f"{out}.axes"
        inits.append(helper.make_tensor(axes, 7, [1], [1]))
        nodes.append(helper.make_node(reduce, [f"{out}.flat", axes], [out], keepdims=0))
    else:
        nodes.append(helper.make_node(reduce, [f"{out}.flat"], [out], axes=[1], keepdims=0))


def compare_groups(source: Any, fused: Any, rows: Sequence[Mapping[str, Any]], batch: np.ndarray, device: Device,
                   atol: float, rtol: float, opset: int) -> list[LayerResult]:
    """One LayerResult per row, in row order. `source` and `fused` are ModelProtos (external data
    loaded); `source` is extended with the checks (pass a copy nothing else will use)."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    weights = {t.name: numpy_helper.to_array(t) for t in fused.graph.initializer
               if any(t.name in row["deploy_tensors"] for row in rows)}
    convs = fused_convs(fused)
    g = source.graph
    tensors = {o for n in g.node for o in n.output} | {i.name for i in g.input}
    results: dict[int, LayerResult] = {}
    nodes: list = []
    inits: list = []
    fetched: list[tuple[int, list[str]]] = []
    for i, row in enumerate(rows):
        name = str(row.get("name", row["output"]))
        why = _why_not(row, weights, convs, tensors)
        if why is not None:
            results[i] = LayerResult(name, str(row["output"]), float("inf"), float("nan"), float("inf"), False, why)
            continue
        w_name, b_name = f"{_PREFIX}.{i}.w", f"{_PREFIX}.{i}.b"
        inits += [numpy_helper.from_array(weights[row["deploy_tensors"][0]], w_name),
                  numpy_helper.from_array(weights[row["deploy_tensors"][1]], b_name)]
        top, bottom, left, right = row["padding"]
        z, d = f"{_PREFIX}.{i}.z", f"{_PREFIX}.{i}.d"
        nodes.append(helper.make_node("Conv", [row["input"], w_name, b_name], [z], strides=list(row["stride"]),
                                      pads=[top, left, bottom, right], dilations=list(row["dilation"]),
                                      group=int(row["groups"])))
        nodes.append(helper.make_node("Sub", [z, row["output"]], [d]))
        names = [f"{_PREFIX}.{i}.{what}" for what in ("diff", "scale", "max", "min")]
        _per_sample(helper, nodes, inits, d, names[0], opset, absolute=True)
        _per_sample(helper, nodes, inits, row["output"], names[1], opset, absolute=True)
        _per_sample(helper, nodes, inits, row["output"], names[2], opset)
        _per_sample(helper, nodes, inits, row["output"], names[3], opset, reduce="ReduceMin")
        fetched.append((i, names))
    if fetched:
        g.node.extend(nodes)
        g.initializer.extend(inits)
        del g.output[:]
        g.output.extend(helper.make_empty_tensor_value_info(t) for _, names in fetched for t in names)
        options = ort.SessionOptions()
        options.log_severity_level = 4  # a failing node is the ConvertError below, not ORT's log
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            session = ort.InferenceSession(source.SerializeToString(), options, providers=list(device.ort_providers))
            image = session.get_inputs()[0]
            fixed = image.shape[0] if image.shape and isinstance(image.shape[0], int) and image.shape[0] > 0 else len(batch)
            parts = [session.run(None, {image.name: batch[k:k + fixed]}) for k in range(0, len(batch), fixed)]
            out = [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]
        except Exception as err:  # noqa: BLE001 - ORT raises its own types
            raise ConvertError(f"--per-layer: ONNX Runtime could not run the source model with the checks: {one_line(err)}") from None
        for k, (i, _names) in enumerate(fetched):
            diff, scale, high, low = (np.asarray(out[4 * k + j], np.float64) for j in range(4))
            ratio = tolerance_ratio(diff, scale, (high - low) / 2, atol, rtol)
            worst = float(np.where(np.isnan(diff), np.inf, diff).max())
            row = rows[i]
            results[i] = LayerResult(str(row.get("name", row["output"])), row["output"], worst, float(scale.max()),
                                     float(ratio.max()), bool(ratio.max() <= 1.0))
    return [results[i] for i in range(len(rows))]
