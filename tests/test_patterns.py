"""Pattern finding and group fusion on hand-built graphs, against a direct numpy convolution of
the branches as written (crops, pads, BN with literal epsilons): the oracle never calls the
package's geometry or fusion code."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from acnet_convert.graph.ir import Graph, Node, TensorInfo
from acnet_convert.graph.patterns import find_groups
from acnet_convert.graph.reparam import deploy_graph, fuse_graph
from tests.numpy_conv import batch_norm, conv2d

H = W = 12
rng = np.random.default_rng(0)


@dataclass
class Spec:
    """One branch as a user writes it: a conv (kernel, padding top/bottom/left/right) on the
    input cropped by `crop` (top/bottom/left/right), then BN; or an identity BN."""

    kernel: tuple[int, int] | None  # None: identity BN
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)
    stride: int = 1
    dilation: int = 1
    eps: float = 1e-5
    conv_bias: bool = False


class Builder:
    def __init__(self, channels: int, groups: int) -> None:
        self.c, self.groups = channels, groups
        self.nodes: list[Node] = []
        self.tensors = {"x": TensorInfo((-1, channels, H, W), "float32")}
        self.weights: dict[str, np.ndarray] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def param(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.weights[name] = array.astype(np.float32)
        return name

    def const(self, values: list[int]) -> str:
        name = self.name("const")
        self.nodes.append(Node("full_int_array", (), (name,), {"value": values}))
        self.constants[name] = np.asarray(values, np.int64)
        return name

    def branch(self, spec: Spec, x: str = "x", is_test: bool = True) -> tuple[str, dict]:
        c, g = self.c, self.groups
        facts: dict = {"spec": spec}
        bn_in = x
        if spec.kernel is not None:
            t, b, l, r = spec.crop
            source = x
            if any(spec.crop):
                out = self.name("slice")
                ends = [-b if b else 1 << 31, -r if r else 1 << 31]
                self.nodes.append(Node("slice", (x, self.const([t, l]), self.const(ends)), (out,), {"axes": [2, 3], "decrease_axis": []}))
                source = out
            weight = rng.normal(size=(c, c // g, *spec.kernel)) * 0.3
            w = self.param("w", weight)
            facts["w"] = self.weights[w]
            inputs = [source, w]
            if spec.conv_bias:
                bias = self.param("b", rng.normal(size=c))
                inputs.append(bias)
                facts["b"] = self.weights[bias]
            out = self.name("conv")
            self.nodes.append(Node("conv2d", tuple(inputs), (out,), {
                "strides": [spec.stride] * 2, "paddings": list(spec.pad), "padding_algorithm": "EXPLICIT",
                "dilations": [spec.dilation] * 2, "groups": g, "data_format": "NCHW"}))
            bn_in = out
        stats = [rng.uniform(0.5, 1.5, c), rng.uniform(-0.5, 0.5, c), rng.normal(0, 0.5, c), rng.uniform(0.5, 2, c)]
        scale, offset, mean, var = (self.param(n, a) for n, a in zip(("scale", "offset", "mean", "var"), stats))
        facts["bn"] = [self.weights[n] for n in (scale, offset, mean, var)]
        out = self.name("bn")
        self.nodes.append(Node("batch_norm", (bn_in, mean, var, scale, offset), (out, *(self.name("stat") for _ in range(5))),
                               {"is_test": is_test, "epsilon": spec.eps, "data_format": "NCHW"}))
        return out, facts

    def add(self, a: str, b: str) -> str:
        out = self.name("add")
        self.nodes.append(Node("add", (a, b), (out,)))
        return out

    def graph(self, outputs: list[str]) -> Graph:
        return Graph(self.nodes, ["x"], outputs, self.tensors, self.weights, self.constants)


def reference(x: np.ndarray, facts: dict, groups: int) -> np.ndarray:
    """The branch exactly as written, in float64 numpy."""
    spec: Spec = facts["spec"]
    gamma, beta, mean, var = (a.astype(np.float64) for a in facts["bn"])
    if spec.kernel is None:
        return batch_norm(x, gamma, beta, mean, var, spec.eps)
    t, b, l, r = spec.crop
    xc = x[:, :, t : x.shape[2] - b, l : x.shape[3] - r]
    pt, pb, pl, pr = spec.pad
    xp = np.pad(xc, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    w = facts["w"].astype(np.float64)
    if spec.dilation > 1:  # a dilated kernel is the kernel with zeros between its taps
        d = spec.dilation
        big = np.zeros(w.shape[:2] + ((w.shape[2] - 1) * d + 1, (w.shape[3] - 1) * d + 1))
        big[:, :, ::d, ::d] = w
        w = big
    y = conv2d(xp, w, spec.stride, (0, 0), groups)
    if "b" in facts:
        y = y + facts["b"].astype(np.float64).reshape(1, -1, 1, 1)
    return batch_norm(y, gamma, beta, mean, var, spec.eps)


def fused_output(x: np.ndarray, graph: Graph, channels: int) -> tuple[np.ndarray, list]:
    groups, declined = find_groups(graph)
    fused = fuse_graph(graph, groups)
    outs = []
    for f in fused:
        top, bottom, left, right = f.group.padding
        xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
        w = f.kernel.astype(np.float64)
        d = f.group.dilation[0]
        if d > 1:
            big = np.zeros(w.shape[:2] + ((w.shape[2] - 1) * d + 1, (w.shape[3] - 1) * d + 1))
            big[:, :, ::d, ::d] = w
            w = big
        outs.append(conv2d(xp, w, f.group.stride[0], (0, 0), f.group.groups) + f.bias_value.reshape(1, -1, 1, 1))
    return (outs[0] if outs else None), [groups, declined, fused]


def sum_case(specs: list[Spec], channels: int = 4, groups: int = 1) -> tuple[Graph, list[dict], Builder]:
    builder = Builder(channels, groups)
    outs, facts = zip(*(builder.branch(s) for s in specs))
    total = outs[0]
    for out in outs[1:]:
        total = builder.add(total, out)
    return builder.graph([total]), list(facts), builder


ACB3 = [Spec((3, 3), (1, 1, 1, 1)), Spec((3, 1), (1, 1, 0, 0)), Spec((1, 3), (0, 0, 1, 1))]


def _acb(k: int, stride: int = 1) -> list[Spec]:
    p = k // 2
    return [Spec((k, k), (p,) * 4, stride=stride), Spec((k, 1), (p, p, 0, 0), stride=stride),
            Spec((1, k), (0, 0, p, p), stride=stride, eps=1e-3)]


CASES = {
    "acb3": (ACB3, 1),
    "acb3_stride2": ([Spec(s.kernel, s.pad, stride=2) for s in ACB3], 1),
    "acb3_depthwise": (ACB3, 4),
    "acb5_stride2": (_acb(5, 2), 1),
    "acb7": (_acb(7), 1),
    "repvgg": ([Spec((3, 3), (1,) * 4), Spec((1, 1)), Spec(None)], 1),
    "repvgg_grouped": ([Spec((3, 3), (1,) * 4), Spec((1, 1)), Spec(None, eps=1e-3)], 2),
    "pre_bn_bias": ([Spec((3, 3), (1,) * 4, conv_bias=True), Spec((3, 1), (1, 1, 0, 0)), Spec((1, 3), (0, 0, 1, 1))], 1),
    # the official ACBlock with padding below K//2: the asymmetric branches crop their input
    "cropped": ([Spec((3, 3)), Spec((3, 1), crop=(0, 0, 1, 1)), Spec((1, 3), crop=(1, 1, 0, 0))], 1),
    "cropped5_pad1": ([Spec((5, 5), (1,) * 4), Spec((5, 1), (1, 1, 0, 0), crop=(0, 0, 1, 1)), Spec((1, 5), (0, 0, 1, 1), crop=(1, 1, 0, 0))], 1),
    "dilated": ([Spec((3, 3), (2,) * 4, dilation=2), Spec((3, 1), (2, 2, 0, 0), dilation=2), Spec((1, 1))], 1),
    "mobileone": ([Spec((3, 3), (1,) * 4), Spec((3, 3), (1,) * 4), Spec((3, 3), (1,) * 4), Spec((1, 1)), Spec(None)], 4),
    "lcnet_5_3_1": ([Spec((5, 5), (2,) * 4), Spec((3, 3), (1,) * 4), Spec((1, 1))], 4),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_sum_becomes_one_conv_equal_to_the_branches(case: str) -> None:
    specs, groups = CASES[case]
    graph, facts, _ = sum_case(specs, channels=4, groups=groups)
    x = rng.normal(size=(2, 4, H, W))
    expected = sum(reference(x, f, groups) for f in facts)
    got, (found, declined, fused) = fused_output(x, graph, 4)
    assert declined == [] and len(found) == 1 and found[0].kind == "sum"
    assert len(found[0].branches) == len(specs)
    largest = max((s.kernel for s in specs if s.kernel), key=lambda k: k[0] * k[1])
    assert found[0].kernel == largest  # one conv that costs what the largest branch costs
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-5 * max(1.0, np.abs(expected).max())

    deploy = deploy_graph(graph, fused)
    assert [n.op for n in deploy.nodes] == ["conv2d"]  # no stray add, slice, BN or constant


@pytest.mark.parametrize("case", ["acb3", "cropped", "repvgg"])
def test_wrong_geometry_or_epsilon_would_be_caught(case: str) -> None:
    """The twin: the same comparison fails when a branch's BN epsilon or offset is wrong, so
    the equality above is not trivially true."""
    specs, groups = CASES[case]
    graph, facts, builder = sum_case(specs, groups=groups)
    x = rng.normal(size=(2, 4, H, W))
    expected = sum(reference(x, f, groups) for f in facts)
    bn = next(n for n in graph.nodes if n.op == "batch_norm")
    graph.nodes[graph.nodes.index(bn)] = Node(bn.op, bn.inputs, bn.outputs, {**bn.attrs, "epsilon": 0.5})
    got, _ = fused_output(x, graph, 4)
    assert np.abs(got - expected).max() > 1e-3


@pytest.mark.parametrize(
    "specs,reason",
    [
        ([Spec((3, 3), (1,) * 4), Spec((1, 3), (7, 8, 1, 1), stride=2)], "different strides"),
        ([Spec((3, 3), (1,) * 4), Spec((3, 1), (2, 0, 0, 0))], "misaligned"),
        ([Spec((3, 3), (1,) * 4), Spec((3, 1), (1, 1, 1, 1), crop=(0, 0, 1, 1))], "crops and pads"),
        ([Spec((3, 1), (1, 1, 0, 0)), Spec((1, 3), (0, 0, 1, 1))], "misaligned"),  # a cross: no branch holds it
        ([Spec((3, 3), (1,) * 4, dilation=1), Spec((3, 3), (2,) * 4, dilation=2)], "different dilations"),
    ],
)
def test_sums_that_do_not_fold_are_declined_with_the_reason(specs: list[Spec], reason: str) -> None:
    graph, facts, _ = sum_case(specs)
    found, declined = find_groups(graph)
    assert all(g.kind == "conv_bn" for g in found)  # each conv+BN still folds alone
    assert len(declined) == 1 and reason in declined[0].reason


def test_bn_output_used_elsewhere_and_training_mode_bn_are_not_fused() -> None:
    builder = Builder(4, 1)
    a, _ = builder.branch(Spec((3, 3), (1,) * 4))
    b, _ = builder.branch(Spec((1, 1)))
    total = builder.add(a, b)
    extra = builder.add(total, b)  # b is read twice
    found, declined = find_groups(builder.graph([extra]))
    assert all(g.kind == "conv_bn" for g in found) and declined

    builder = Builder(4, 1)
    a, _ = builder.branch(Spec((3, 3), (1,) * 4), is_test=False)
    b, _ = builder.branch(Spec((1, 1)))
    found, declined = find_groups(builder.graph([builder.add(a, b)]))
    assert len(found) == 1 and found[0].kind == "conv_bn"  # only the inference-mode BN folds
    assert "inference mode" in declined[0].reason


def test_identity_needs_equal_channels_and_stride_one() -> None:
    graph, _, _ = sum_case([Spec((3, 3), (1,) * 4, stride=2), Spec(None)])
    found, declined = find_groups(graph)
    assert declined and "strides" in declined[0].reason


def test_a_long_chain_of_blocks() -> None:
    """400 ACBs in a row: every one found, none taken for a neighbour's branch."""
    builder = Builder(2, 1)
    x = "x"
    for _ in range(400):
        outs = [builder.branch(s, x)[0] for s in ACB3]
        x = builder.add(builder.add(outs[0], outs[1]), outs[2])
        builder.tensors[x] = TensorInfo((-1, 2, H, W), "float32")
    found, declined = find_groups(builder.graph([x]))
    assert len(found) == 400 and not declined  # the time it takes is measured in bench/, not here
