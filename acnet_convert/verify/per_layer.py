"""`verify --per-layer`: every fused group judged alone, on the train graph's own tensors.

For each row of the manifest's fusion table, the train program (the user's program, or the
one built from a checkpoint) already computes the group's input and output tensors; they are
found by name through `Program.values`. The deploy conv (its weight and bias read from the
deploy model's parameters, with the row's kernel, stride, padding, dilation and groups) is
appended to the program reading that very input, and so is the comparison: per sample, the
largest |deploy - train| and the largest |train|. One run of the static Executor fetches only
those two numbers per sample and group, so memory stays that of one forward pass however many
groups there are, and every group sees exactly the input the train graph gave it: errors do not
accumulate from group to group.

A group passes by the report's rule: max_j |d_ij| <= atol_i + rtol * s_i for every sample i, s_i
the sample's largest |train output|, atol_i capped by the spread of that output (see verdict), so
a deploy conv that outputs zeros fails however small the group's activations are. A group also fails, with the reason,
when its deploy tensors are missing or the deploy program's conv reading them has another
geometry than the manifest row says.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from acnet_convert.verify.device import Device
from acnet_convert.graph.ir import Graph
from acnet_convert.read.program import Program, static_mode
from acnet_convert.common.quiet import silenced
from acnet_convert.common.text import one_line, printable
from acnet_convert.verify.verdict import tolerance_ratio
from acnet_convert.verify.report import LayerResult

_PREFIX = "acnet_verify_per_layer"


def _padding(value: Any) -> tuple[int, ...]:
    p = [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    if len(p) == 1:
        p = p * 2
    return (p[0], p[0], p[1], p[1]) if len(p) == 2 else tuple(p)


def _pair(value: Any) -> tuple[int, int]:
    v = [int(x) for x in (value if isinstance(value, (list, tuple)) else [value])]
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def deploy_geometry(graph: Graph) -> dict[str, dict[str, Any]]:
    """Conv weight name -> the deploy program's geometry of the conv that reads it."""
    out = {}
    for node in graph.nodes:
        if node.op != "conv2d" or len(node.inputs) < 2 or not isinstance(node.inputs[1], str):
            continue
        a = node.attrs
        algorithm = str(a.get("padding_algorithm", "EXPLICIT")).upper()
        padding = (0, 0, 0, 0) if algorithm == "VALID" else _padding(a.get("paddings", [0, 0]))
        out[node.inputs[1]] = {
            "bias": node.inputs[2] if len(node.inputs) > 2 else None,
            "stride": _pair(a.get("strides", [1, 1])),
            "padding": padding if algorithm in ("EXPLICIT", "VALID") else algorithm,
            "dilation": _pair(a.get("dilations", [1, 1])),
            "groups": int(a.get("groups", 1)),
        }
    return out


def _row_geometry(row: Mapping[str, Any]) -> dict[str, Any]:
    weight, bias = row["deploy_tensors"]
    return {"bias": bias, "stride": _pair(row["stride"]), "padding": _padding(row["padding"]),
            "dilation": _pair(row["dilation"]), "groups": int(row["groups"])}


def _why_not(row: Mapping[str, Any], weights: Mapping[str, np.ndarray],
             geometry: Mapping[str, Mapping[str, Any]] | None, values: Mapping[str, Any]) -> str | None:
    """Why the group cannot be compared numerically (it fails), or None."""
    weight, bias = row["deploy_tensors"]
    for name in (weight, bias):
        if name not in weights:
            return f"deploy tensor {printable(name)} is not in the deploy model"
    for name in (row["input"], row["output"]):
        if name not in values:
            return f"the train program has no tensor {printable(name)}: the manifest is not of this source"
    if geometry is not None:
        found = geometry.get(weight)
        if found is None:
            return f"no conv of the deploy program reads {printable(weight)}"
        want = _row_geometry(row)
        diff = [k for k in want if found[k] != want[k]]
        if diff:
            k = diff[0]
            return f"the deploy conv's {k} is {found[k]}, the manifest says {want[k]}"
    return None


def compare_groups(
    program: Program,
    input_name: str,
    rows: Sequence[Mapping[str, Any]],
    weights: Mapping[str, np.ndarray],
    batch: np.ndarray,
    device: Device,
    atol: float,
    rtol: float,
    geometry: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[LayerResult]:
    """One LayerResult per row, in row order. `program` is changed (its fetch ops removed, the
    comparison appended): pass a program nothing else will run. `weights`: the deploy model's
    parameters by name; `geometry`: `deploy_geometry` of the deploy graph, to check each row
    against the conv that really runs."""
    import paddle.nn.functional as F

    from acnet_convert.write.pir import add_parameter

    results: dict[int, LayerResult] = {}
    fetch: list[tuple[int, Any, Any]] = []
    program.fill_scope()  # the graph reader moved the parameters out of the scope
    names = [str(row.get("name", row["output"])) for row in rows]
    block = program.program.global_block()
    with static_mode() as paddle, paddle.static.scope_guard(program.scope), silenced():
        for op in [op for op in block.ops if op.name() == "pd_op.fetch"]:
            block.remove_op(op)
        ops = program.ops

        def value(name: str) -> Any:
            position, index = program.values[name]
            return ops[position].result(index)

        with paddle.static.program_guard(program.program, paddle.static.Program()):
            for i, row in enumerate(rows):
                name = names[i]
                why = _why_not(row, weights, geometry, program.values)
                if why is not None:
                    results[i] = LayerResult(name, str(row.get("output")), float("inf"), float("nan"), float("inf"), False, why)
                    continue
                w_name, b_name = row["deploy_tensors"]
                w = add_parameter(paddle, program, f"{_PREFIX}.{i}.w", weights[w_name])
                b = add_parameter(paddle, program, f"{_PREFIX}.{i}.b", weights[b_name])
                paddle.pir.set_insertion_point_to_block_end(block)
                x, y = value(row["input"]), value(row["output"])
                top, bottom, left, right = _padding(row["padding"])
                z = F.conv2d(x, w, b, stride=list(_pair(row["stride"])), padding=[top, bottom, left, right],
                             dilation=list(_pair(row["dilation"])), groups=int(row["groups"]))
                zs, ys = list(z.shape), list(y.shape)
                if len(zs) != len(ys) or any(a != c for a, c in zip(zs[1:], ys[1:]) if a > 0 and c > 0):
                    results[i] = LayerResult(name, row["output"], float("inf"), float("nan"), float("inf"), False,
                                             f"the deploy conv outputs {zs[1:]}, the group {ys[1:]}")
                    continue
                axes = list(range(1, len(ys)))
                diff = paddle.max(paddle.abs(z - y), axis=axes)
                scale = paddle.max(paddle.abs(y), axis=axes)
                half_range = (paddle.max(y, axis=axes) - paddle.min(y, axis=axes)) / 2
                fetch.append((i, [diff, scale, half_range]))
        if fetch:
            values = [v for _, vs in fetch for v in vs]
            out = _run(paddle, program, {input_name: batch}, values, device)
            for k, (i, _vs) in enumerate(fetch):
                diff, scale, half_range = (np.asarray(out[3 * k + j], np.float64) for j in range(3))
                ratio = tolerance_ratio(diff, scale, half_range, atol, rtol)
                worst = float(np.where(np.isnan(diff), np.inf, diff).max())
                results[i] = LayerResult(names[i], rows[i]["output"], worst,
                                         float(scale.max()), float(ratio.max()), bool(ratio.max() <= 1.0))
    return [results[i] for i in range(len(rows))]


def _run(paddle: Any, program: Program, feed: dict[str, np.ndarray], values: list[Any], device: Device) -> list[Any]:
    """The static Executor on the device's place; on a GPU that fails, on the CPU."""
    from acnet_convert.common.errors import ConvertError

    places = ([paddle.CUDAPlace(0)] if device.paddle_gpu else []) + [paddle.CPUPlace()]
    for place in places:
        try:
            return paddle.static.Executor(place).run(program.program, feed=feed, fetch_list=values)
        except Exception as err:  # noqa: BLE001 - Paddle raises many types
            if place is places[-1]:
                raise ConvertError(f"--per-layer: Paddle could not run the train program: {one_line(err)}") from None
    raise AssertionError("unreachable")
