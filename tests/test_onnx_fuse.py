"""fuse of train-form ONNX models exported from PyTorch (issue 22): the upstream blocks of
fixtures/torch_blocks.py, every exporter variant users meet. The oracle is the source model
itself, run in ONNX Runtime (and the upstream's own deployed model for the Conv count):

- the fused model computes what the source computes, within 1e-4 of each image's largest
  |logit|, at the exported size and, for a dynamic-size model, at another one;
- every source node outside a fused group is in the fused model unchanged (NodeProto equality),
  and the only new nodes are one Conv per fused group; IR version, opsets, producer and the
  external-data layout are the source's;
- the fused model has the upstream deployed model's Conv count and no BatchNormalization
  (DBB: from ~3,000 nodes of index arithmetic to 11 nodes, the deployed model's).
"""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from acnet_convert.commands.fuse_onnx import fuse_onnx  # noqa: E402
from fixtures import export_onnx as E  # noqa: E402
from fixtures import torch_blocks as tb  # noqa: E402
from tests.torch_onnx import onnx_export  # noqa: E402,F401 - a session fixture

# (net, variant, opset, dynamic, external data): what the exporters write. All but two are the
# exports test_torch_onnx_fixtures.py makes anyway (one session fixture for both).
CASES = [
    ("repvgg", "legacy_unfolded", None, None, None),
    ("yolov6", "legacy_unfolded", None, None, None),
    ("acnet", "legacy_unfolded", None, None, None),
    ("mobileone", "legacy_unfolded", None, None, None),
    ("dbb", "legacy_unfolded", None, None, None),
    ("repvgg", "legacy_unfolded", 13, None, None),
    ("repvgg", "legacy_folded", 21, None, None),
    ("mobileone", "legacy_unfolded", None, "batch_hw", None),
    ("repvgg", "legacy_unfolded", None, "batch", True),
    ("repvgg", "legacy_folded", None, None, None),
    ("acnet", "legacy_folded", None, None, None),
    ("yolov6", "legacy_folded", None, None, None),
    ("dbb", "legacy_folded", None, None, None),
    ("yolov6", "dynamo", None, "batch_hw", None),
    ("dbb", "dynamo", None, None, None),
]
IDS = ["-".join(str(p) for p in case if p is not None) for case in CASES]


def tolerance(ref: np.ndarray) -> np.ndarray:
    """1e-4 of each image's largest |logit| (at least 1e-4)."""
    return 1e-4 * np.maximum(1.0, np.abs(ref).max(axis=1, keepdims=True))


@pytest.fixture(scope="session")
def fused_onnx(onnx_export, tmp_path_factory):
    """fused_onnx(*case) -> (source path, OUT, result), fused once per session."""
    root = tmp_path_factory.mktemp("fused_onnx")
    made = {}

    def make(name, variant, opset=None, dynamic=None, external=None):
        key = (name, variant, opset, dynamic, external)
        if key not in made:
            source = onnx_export(name, variant, opset, dynamic, external)
            out = root / source.stem
            made[key] = (source, out, fuse_onnx(source, out))
        return made[key]

    return make


def node_changes(source, fused) -> list[str]:
    """What breaks "every node outside a fused region is kept as it was": a fused-model node
    that has a source node's outputs but differs from it; a new node that is not a Conv (or the
    Add of a partial sum) writing what removed nodes wrote or what only new nodes read; a
    removed source node read by a node that was kept."""
    before = {tuple(n.output): n for n in source.graph.node}
    after = {tuple(n.output): n for n in fused.graph.node}
    # a new Conv (or Add) may write what a removed node wrote; it does not take that node's name
    replaced = {key for key, n in after.items() if key in before and before[key] != n
                and n.op_type in ("Conv", "Add") and n.name != before[key].name}
    problems = [f"changed {n.name or n.output[0]}" for key, n in after.items()
                if key in before and before[key] != n and key not in replaced]
    removed_outputs = {o for key, n in before.items() if key not in after or key in replaced for o in n.output}
    new = [n for key, n in after.items() if key not in before or key in replaced]
    read_by_new = {t for n in new for t in n.input}
    for n in new:  # each writes what a removed node wrote, or a partial sum only new nodes read
        if n.op_type not in ("Conv", "Add", "Sum") or not all(o in removed_outputs or o in read_by_new for o in n.output):
            problems.append(f"new {n.op_type} {n.name or n.output[0]}")
    new_outputs = {o for n in new for o in n.output}
    for key, n in after.items():
        if key in before and key not in replaced:
            problems += [f"{n.name or key[0]} reads removed {t}" for t in n.input
                         if t in removed_outputs and t not in new_outputs]
    return problems


def sample(dynamic) -> list[np.ndarray]:
    if dynamic == "batch_hw":
        return [tb.images(2), tb.images(3, (3, 40, 28), seed=2)]
    return [tb.images(3 if dynamic else 1)]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fused_model_computes_the_source_and_keeps_every_other_node(fused_onnx, case):
    source_path, out, result = fused_onnx(*case)
    for x in sample(case[3]):
        ref = E.run_onnx(source_path, x)
        got = E.run_onnx(out / "model.onnx", x)
        assert got.shape == ref.shape
        assert (np.abs(got - ref) <= tolerance(ref)).all(), np.abs(got - ref).max()
    source = onnx.load(str(source_path), load_external_data=False)
    fused = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert node_changes(source, fused) == []
    assert fused.ir_version == source.ir_version
    assert list(fused.opset_import) == list(source.opset_import)
    assert (fused.producer_name, fused.producer_version) == (source.producer_name, source.producer_version)
    assert [o.name for o in fused.graph.output] == [o.name for o in source.graph.output]
    assert [i.name for i in fused.graph.input] == [i.name for i in source.graph.input]
    external = E.model_info(source_path)["external_files"]
    assert E.model_info(out / "model.onnx")["external_files"] == (["model.onnx.data"] if external else [])


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fused_model_has_the_upstream_deploy_conv_count_and_no_batch_norm(fused_onnx, onnx_export, case):
    name = case[0]
    _source, out, _result = fused_onnx(*case)
    ops = E.op_histogram(out / "model.onnx")
    ideal = E.op_histogram(onnx_export(name, "legacy_folded", deployed=True))["Conv"]
    assert (ops["Conv"], ops["BatchNormalization"]) == (ideal, 0)


def test_the_node_check_sees_a_changed_and_an_added_node(fused_onnx):
    source_path, out, _result = fused_onnx("repvgg", "legacy_unfolded")
    source = onnx.load(str(source_path))
    fused = onnx.load(str(out / "model.onnx"))
    assert node_changes(source, fused) == []
    relu = next(n for n in fused.graph.node if n.op_type == "Relu")
    relu.name += "_renamed"
    fused.graph.node.append(onnx.helper.make_node("Identity", [relu.output[0]], ["spare"]))
    assert node_changes(source, fused) == [f"changed {relu.name}", "new Identity spare"]


def test_a_fused_group_replaces_exactly_its_nodes(fused_onnx):
    """RepVGG: each block's 3x3+BN, 1x1+BN, identity BN and Adds become one Conv that writes the
    sum's output; nothing else goes."""
    source_path, out, result = fused_onnx("repvgg", "legacy_unfolded")
    source = onnx.load(str(source_path), load_external_data=False)
    fused = onnx.load(str(out / "model.onnx"), load_external_data=False)
    kept = [n for n in fused.graph.node if n in list(source.graph.node)]
    removed = sorted(n.op_type for n in source.graph.node if n not in kept)
    assert removed == ["Add"] * 8 + ["BatchNormalization"] * 13 + ["Conv"] * 10
    new = [n for n in fused.graph.node if n not in kept]
    assert [n.op_type for n in new] == ["Conv"] * 5
    assert [n.output[0] for n in new] == [row["output"] for row in result.manifest.fused]


def test_external_data_stays_external_and_the_source_is_untouched(fused_onnx, tmp_path):
    source_path, out, _result = fused_onnx("repvgg", "legacy_unfolded", None, "batch", True)
    data = out / "model.onnx.data"
    assert data.is_file() and data.stat().st_size > 10_000
    fused = onnx.load(str(out / "model.onnx"), load_external_data=False)
    big = [t for t in fused.graph.initializer if np.prod(t.dims) * 4 >= 1024]
    assert big and all(t.data_location == onnx.TensorProto.EXTERNAL for t in big)
    assert (out / "model.onnx").stat().st_size < 20_000
    files = [source_path, source_path.with_name(source_path.name + ".data")]
    before = [f.read_bytes() for f in files]
    fuse_onnx(source_path, tmp_path / "again")
    assert [f.read_bytes() for f in files] == before
