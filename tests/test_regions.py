"""Affine regions on hand-built graphs: what collapses into one conv, what is declined and why,
each deploy graph run by an independent interpreter (tests/graph_oracle.py: a direct numpy
convolution) against the graph as written, with literal epsilons and twins that fail."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from acnet_convert.graph.ir import Graph, Node, TensorInfo
from acnet_convert.graph.reparam import deploy_graph, fold_graph
from tests.graph_oracle import run

H, W = 11, 13  # odd, not square
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
    groups: int | None = None  # the builder's by default


class Builder:
    def __init__(self, channels: int = 4, groups: int = 1) -> None:
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
        self.weights[name] = np.asarray(array, np.float32)
        return name

    def const(self, values: list[int]) -> str:
        name = self.name("const")
        self.nodes.append(Node("full_int_array", (), (name,), {"value": values}))
        self.constants[name] = np.asarray(values, np.int64)
        return name

    def op(self, op: str, inputs: tuple, attrs: dict | None = None, outputs: int = 1) -> str:
        names = tuple(self.name(op) for _ in range(outputs))
        self.nodes.append(Node(op, inputs, names, attrs or {}))
        return names[0]

    def conv(self, x: str, kernel: tuple[int, int], pad=(0, 0, 0, 0), stride=1, dilation=1, groups=None,
             bias=False, cin=None, cout=None) -> str:
        g = groups or self.groups
        cin, cout = cin or self.c, cout or self.c
        w = self.param("w", rng.normal(size=(cout, cin // g, *kernel)) / np.sqrt(cin // g * kernel[0] * kernel[1]))
        inputs = (x, w, self.param("b", rng.normal(size=cout))) if bias else (x, w)
        return self.op("conv2d", inputs, {"strides": [stride] * 2, "paddings": list(pad), "padding_algorithm": "EXPLICIT",
                                          "dilations": [dilation] * 2, "groups": g, "data_format": "NCHW"})

    def bn(self, x: str, eps: float = 1e-5, is_test: bool = True, channels=None) -> str:
        c = channels or self.c
        stats = [rng.uniform(0.5, 1.5, c), rng.uniform(-0.5, 0.5, c), rng.normal(0, 0.5, c), rng.uniform(0.5, 2, c)]
        scale, offset, mean, var = (self.param(n, a) for n, a in zip(("scale", "offset", "mean", "var"), stats))
        return self.op("batch_norm", (x, mean, var, scale, offset), {"is_test": is_test, "epsilon": eps, "data_format": "NCHW"},
                       outputs=6)

    def branch(self, spec: Spec, x: str = "x", is_test: bool = True) -> str:
        if spec.kernel is None:
            return self.bn(x, spec.eps, is_test)
        source = x
        if any(spec.crop):
            t, b, l, r = spec.crop
            ends = [-b if b else 1 << 31, -r if r else 1 << 31]
            source = self.op("slice", (x, self.const([t, l]), self.const(ends)), {"axes": [2, 3], "decrease_axis": []})
        y = self.conv(source, spec.kernel, spec.pad, spec.stride, spec.dilation, spec.groups, spec.conv_bias)
        return self.bn(y, spec.eps, is_test)

    def add(self, a: str, b: str) -> str:
        return self.op("add", (a, b))

    def graph(self, outputs: list[str]) -> Graph:
        return Graph(self.nodes, ["x"], outputs, self.tensors, self.weights, self.constants)


def sum_case(specs: list[Spec], groups: int = 1) -> tuple[Graph, Builder]:
    b = Builder(4, groups)
    outs = [b.branch(s) for s in specs]
    total = outs[0]
    for out in outs[1:]:
        total = b.add(total, out)
    return b.graph([total]), b


def check(graph: Graph):
    """Fold `graph`; the deploy graph must compute what the graph as written computes."""
    folding = fold_graph(graph)
    deploy = deploy_graph(folding)
    x = rng.normal(size=(2, graph.tensors["x"].shape[1], H, W))
    for want, got in zip(run(graph, x), run(deploy, x)):
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    return folding, deploy


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
    "cropped5_pad1": ([Spec((5, 5), (1,) * 4), Spec((5, 1), (1, 1, 0, 0), crop=(0, 0, 1, 1)),
                       Spec((1, 5), (0, 0, 1, 1), crop=(1, 1, 0, 0))], 1),
    "dilated2": ([Spec((3, 3), (2,) * 4, dilation=2), Spec((3, 1), (2, 2, 0, 0), dilation=2), Spec((1, 1))], 1),
    "dilated4_cropped": ([Spec((3, 3), (3,) * 4, dilation=4), Spec((3, 1), (3, 3, 0, 0), dilation=4, crop=(0, 0, 1, 1)),
                          Spec((1, 3), (0, 0, 3, 3), dilation=4, crop=(1, 1, 0, 0))], 1),
    "mobileone": ([Spec((3, 3), (1,) * 4), Spec((3, 3), (1,) * 4), Spec((3, 3), (1,) * 4), Spec((1, 1)), Spec(None)], 4),
    "lcnet_5_3_1": ([Spec((5, 5), (2,) * 4), Spec((3, 3), (1,) * 4), Spec((1, 1))], 4),
    # branches of different groups fold into the coarsest: exact only if each kernel is regrouped
    "mixed_groups": ([Spec((3, 3), (1,) * 4, groups=2), Spec((3, 3), (1,) * 4, groups=1), Spec((1, 1), groups=4)], 1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_sum_of_branches_becomes_one_conv(case: str) -> None:
    specs, groups = CASES[case]
    graph, _ = sum_case(specs, groups)
    folding, deploy = check(graph)
    assert folding.declined == [] and len(folding.fused) == 1
    assert [n.op for n in deploy.nodes] == ["conv2d"]  # no stray add, slice, BN or constant
    largest = max((s.kernel for s in specs if s.kernel), key=lambda k: k[0] * k[1])
    assert tuple(folding.fused[0].kernel.shape[2:]) == largest  # costs what the largest branch costs
    assert folding.fused[0].collapse.residual < 1e-12


@pytest.mark.parametrize("case", ["acb3", "cropped", "repvgg", "mixed_groups"])
def test_a_wrong_epsilon_is_caught(case: str) -> None:
    """The twin: the graph folded with one BN's epsilon wrong differs from the graph as written."""
    specs, groups = CASES[case]
    graph, _ = sum_case(specs, groups)
    bn = next(i for i, n in enumerate(graph.nodes) if n.op == "batch_norm")
    wrong = Graph(list(graph.nodes), graph.inputs, graph.outputs, graph.tensors, graph.weights, graph.constants)
    wrong.nodes[bn] = Node("batch_norm", graph.nodes[bn].inputs, graph.nodes[bn].outputs, {**graph.nodes[bn].attrs, "epsilon": 0.5})
    x = rng.normal(size=(2, 4, H, W))
    deploy = deploy_graph(fold_graph(wrong))
    assert np.abs(run(deploy, x)[0] - run(graph, x)[0]).max() > 1e-3


@pytest.mark.parametrize("specs, reason", [
    ([Spec((3, 3), (1,) * 4, stride=2), Spec((1, 3), (3, 3, 4, 4), stride=3)], "different strides"),  # same shape
    ([Spec((3, 3), (1,) * 4), Spec((3, 1), (2, 0, 0, 0))], "larger than the largest kernel"),  # off-centre
    ([Spec((3, 3), (1,) * 4), Spec((3, 1), (1, 1, 1, 1), crop=(0, 0, 1, 1))], "not a convolution at the border"),
    ([Spec((3, 1), (1, 1, 0, 0)), Spec((1, 3), (0, 0, 1, 1))], "cost more"),  # a cross: 3x3 from 3x1 + 1x3
    ([Spec((3, 3), (1,) * 4), Spec((3, 3), (2,) * 4, dilation=2)], "larger than the largest kernel"),
    ([Spec((3, 3), (1,) * 4, groups=4), Spec((1, 1), groups=1)], "cost more"),  # depthwise + dense
])
def test_sums_that_do_not_fold_stay_correct_with_the_reason(specs: list[Spec], reason: str) -> None:
    graph, _ = sum_case(specs)
    folding, deploy = check(graph)
    assert any(reason in d.reason for d in folding.declined), [d.reason for d in folding.declined]
    assert not any(n.op == "batch_norm" for n in deploy.nodes)  # each conv+BN still folds alone


def test_a_conv_read_elsewhere_is_not_folded_into_its_bn() -> None:
    b = Builder()
    y = b.conv("x", (3, 3), (1,) * 4)
    out = b.add(b.bn(y), y)  # the conv's output is read by the BN and by the add
    folding, deploy = check(b.graph([out]))
    assert sum(n.op == "conv2d" for n in deploy.nodes) == 1


def test_an_inner_sum_read_elsewhere_is_not_absorbed() -> None:
    b = Builder()
    inner = b.add(b.branch(Spec((3, 3), (1,) * 4)), b.branch(Spec((1, 1))))
    outer = b.add(inner, b.branch(Spec((3, 1), (1, 1, 0, 0))))
    out = b.op("relu", (inner,))  # the inner sum is also an output's input
    folding, deploy = check(b.graph([outer, out]))
    assert sum(n.op == "add" for n in deploy.nodes) == 1  # outer = fused(inner) + fused(3x1)


def test_bn_output_used_twice_and_training_mode_bn() -> None:
    b = Builder()
    a, c = b.branch(Spec((3, 3), (1,) * 4)), b.branch(Spec((1, 1)))
    total = b.add(b.add(a, c), c)  # c is read twice: one region still, c counted twice
    check(b.graph([total]))

    b = Builder()
    a, c = b.branch(Spec((3, 3), (1,) * 4), is_test=False), b.branch(Spec((1, 1)))
    folding, deploy = check(b.graph([b.add(a, c)]))
    assert sum(n.op == "batch_norm" for n in deploy.nodes) == 1  # only the inference BN folds


def test_alpha_scaled_branch_and_learnable_affine_after_the_sum() -> None:
    """PP-YOLOE+'s y = conv_bn3(x) + alpha * conv_bn1(x), then PP-LCNetV3's scale * y + bias."""
    b = Builder()
    alpha, scale, bias = (b.param(n, [v]) for n, v in (("alpha", 0.37), ("lab_scale", 1.3), ("lab_bias", -0.2)))
    y = b.add(b.branch(Spec((3, 3), (1,) * 4)), b.op("multiply", (alpha, b.branch(Spec((1, 1))))))
    y = b.add(b.op("multiply", (scale, y)), bias)
    folding, deploy = check(b.graph([y]))
    assert [n.op for n in deploy.nodes] == ["conv2d"]


def test_repvit_bn_after_a_sum_with_the_identity() -> None:
    """RepViT's RepVGGDW: BN(conv_bn(x) + conv1x1_with_bias(x) + x), depthwise."""
    b = Builder(4, 4)
    dw = b.branch(Spec((3, 3), (1,) * 4))
    pw = b.conv("x", (1, 1), bias=True)
    y = b.bn(b.add(b.add(dw, pw), "x"))
    folding, deploy = check(b.graph([y]))
    assert [n.op for n in deploy.nodes] == ["conv2d"] and folding.fused[0].collapse.conv.groups == 4


def _bn_and_pad(b: Builder, x: str, pad: int, value_from_bn: bool) -> str:
    """DBB's BNAndPad as PaddleClas writes it: BN, then pad values concatenated around it."""
    y = b.bn(x)
    bn = b.nodes[-1]
    gamma, beta, mean, var = (b.weights[bn.inputs[i]].astype(np.float64) for i in (3, 4, 1, 2))
    values = beta - mean * gamma / np.sqrt(var + 1e-5) if value_from_bn else np.zeros(b.c)
    field = b.param("pad_values", values.reshape(1, -1, 1, 1))
    # n, c, h, w = output.shape: the batch read from the tensor, the rest fixed at export
    batch = b.op("slice", (b.op("shape64", (y,)), b.const([0]), b.const([1])), {"axes": [0], "decrease_axis": [0]})

    def expanded(rows: int, cols: int) -> str:
        dims = tuple(b.op("full", (), {"shape": [], "value": d, "dtype": "int64"}) for d in (-1, rows, cols))
        out = b.op("expand", (field, b.op("stack", ((batch, *dims),), {"axis": 0})))
        b.tensors[out] = TensorInfo((-1, b.c, rows, cols), "float32")
        return out

    rows = expanded(pad, W)
    y = b.op("concat", ((rows, y, rows),), {"axis": 2})
    cols = expanded(H + 2 * pad, pad)
    return b.op("concat", ((cols, y, cols),), {"axis": 3})


@pytest.mark.parametrize("value_from_bn, folds", [(True, True), (False, False)])
def test_dbb_1x1_then_kxk_through_bn_and_pad(value_from_bn: bool, folds: bool) -> None:
    """1x1 -> BNAndPad -> 3x3 (no padding) -> BN is one 3x3 conv when the pad value is what the
    BN makes of zeros; padding with zeros instead is not a convolution at the border."""
    b = Builder()
    y = b.bn(b.conv(_bn_and_pad(b, b.conv("x", (1, 1)), 1, value_from_bn), (3, 3)))
    folding, deploy = check(b.graph([y]))
    if folds:
        assert [n.op for n in deploy.nodes] == ["conv2d"]
    else:
        assert any("border" in d.reason for d in folding.declined)


@pytest.mark.parametrize("exclusive", [False, True])
def test_average_pool_branch_folds_unless_it_excludes_the_padding(exclusive: bool) -> None:
    b = Builder()
    pool = b.op("pool2d", ("x",), {"pooling_type": "avg", "kernel_size": [3, 3], "ksize": 3, "strides": [1, 1],
                                   "paddings": [1, 1], "exclusive": exclusive, "ceil_mode": False})
    y = b.add(b.branch(Spec((3, 3), (1,) * 4)), b.bn(pool))
    folding, deploy = check(b.graph([y]))
    if exclusive:
        assert any("excludes the padding" in d.reason for d in folding.declined)
        assert sum(n.op == "conv2d" for n in deploy.nodes) == 1  # the conv+BN branch still folds
    else:
        assert [n.op for n in deploy.nodes] == ["conv2d"]


def test_kxk_after_kxk_is_declined_and_each_folds() -> None:
    b = Builder()
    y = b.branch(Spec((3, 3), (1,) * 4), b.branch(Spec((3, 3), (1,) * 4)))
    folding, deploy = check(b.graph([y]))
    assert [n.op for n in deploy.nodes] == ["conv2d", "conv2d"]
    assert any("larger than the largest kernel" in d.reason for d in folding.declined)


def test_a_scale_computed_from_the_input_is_declined() -> None:
    b = Builder()
    s = b.op("mean", ("x",))
    y = b.add(b.branch(Spec((3, 3), (1,) * 4)), b.op("multiply", (s, b.branch(Spec((1, 1))))))
    folding, deploy = check(b.graph([y]))
    assert any("computed from the input" in d.reason for d in folding.declined)
    assert sum(n.op == "conv2d" for n in deploy.nodes) == 2


def test_a_long_chain_of_blocks() -> None:
    """200 ACBs in a row: every one found, none taken for a neighbour's branch."""
    b = Builder(2, 1)
    x = "x"
    for _ in range(200):
        outs = [b.branch(s, x) for s in ACB3]
        x = b.op("relu", (b.add(b.add(outs[0], outs[1]), outs[2]),))
        b.tensors[x] = TensorInfo((-1, 2, H, W), "float32")
    folding = fold_graph(b.graph([x]))
    assert len(folding.fused) == 200 and not folding.declined  # the time it takes is measured in bench/


def test_train_weights_are_released_as_their_regions_fold_and_only_those() -> None:
    """A weight is released once no op left reads it: the ACB's, not the kernel a conv left as
    written shares with it; the folded graph keeps a stand-in (shape only, NaN, read-only) that
    no deploy node reads, and the deploy graph still computes the graph as written."""
    b = Builder()
    outs = [b.branch(s) for s in ACB3]
    acb = b.add(b.add(outs[0], outs[1]), outs[2])
    read_by_acb = set(b.weights)
    square = b.nodes[0].inputs[1]  # the 3x3 conv's kernel, shared with a conv that stays as written
    lone = b.op("relu", (b.op("conv2d", ("x", square), {"strides": [1, 1], "paddings": [1, 1], "dilations": [1, 1],
                                                          "groups": 1, "padding_algorithm": "EXPLICIT"}),))
    graph = b.graph([acb, lone])
    released: list[str] = []
    folding = fold_graph(graph, release=released.append)
    assert set(released) == read_by_acb - {square} and len(released) == len(read_by_acb) - 1
    stand_in = folding.graph.weights[released[0]]
    assert stand_in.shape == graph.weights[released[0]].shape and np.isnan(stand_in).all()
    assert not stand_in.flags.writeable
    deploy = deploy_graph(folding)
    assert not set(released) & set(deploy.weights)
    x = rng.normal(size=(2, 4, H, W))
    for want, got in zip(run(graph, x), run(deploy, x)):
        assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
