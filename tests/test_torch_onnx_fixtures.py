"""The PyTorch train-form ONNX fixtures (issue 22) are right: the torch ports equal their
upstream's own deployed models; every export variant loads in onnxruntime and equals the torch
model; the folded / unfolded / dynamo variants have or lack BatchNormalization as expected;
external data lands beside the model; dynamic axes are named and run at other sizes. It pins the
graph shapes a converter must read (DBB's slice-assigned padding, MobileOne's ``+ 0``)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from fixtures import export_onnx as E  # noqa: E402
from fixtures import torch_blocks as tb  # noqa: E402
from tests.torch_onnx import onnx_export  # noqa: E402,F401 - a session fixture shared with the fuse tests

NAMES = tb.SMALL
ORT_MAX_IR = 13  # onnxruntime 1.31 refuses IR 14, which onnx 1.23's helper.make_model stamps

# BatchNormalization nodes left by the folding exporters: the BNs with no conv before them
# (identity branches, DBB's avgbn after AveragePool, and in legacy exports DBB's BN after
# idconv1, whose kernel weight + id_tensor is computed in forward so the peephole cannot fold).
FOLDED_BN = {"acnet": 0, "repvgg": 3, "mobileone": 4, "dbb": 6, "yolov6": 2}
DYNAMO_BN = {**FOLDED_BN, "dbb": 4}  # dynamo folds weight + id_tensor, then the BN after it


def tolerance(ref):
    return 1e-5 * max(1.0, float(np.abs(ref).max()))


def check_matches_torch(path, name, x):
    ref = E.reference_outputs(name, x)
    out = E.run_onnx(path, x)
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= tolerance(ref), path.name


def test_importing_the_fixtures_does_not_import_torch():
    code = ("import sys; import fixtures.torch_blocks, fixtures.export_onnx; "
            "assert 'torch' not in sys.modules and 'onnx' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=E.ROOT)


@pytest.mark.parametrize("name", NAMES)
def test_calibrated_deterministic_and_upstream_deploy_matches(name):
    model, shape = tb.build(name)
    assert shape == tb.INPUT_SHAPE and not model.training
    again, _ = tb.build(name)
    other, _ = tb.build(name, seed=1)
    state, state2, state3 = model.state_dict(), again.state_dict(), other.state_dict()
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(value, state2[key]), key
        assert not torch.equal(value, state3[key]), key
    for bn_name, bn in tb.batch_norms(model):  # nothing at torch's init
        assert not torch.all(bn.weight == 1) and not torch.all(bn.running_var == 1), bn_name
    deployed = tb.deploy(name, model)
    assert not tb.batch_norms(deployed)
    x = torch.from_numpy(tb.images(3))
    with torch.no_grad():
        ref, out = model(x), deployed(x)
    assert torch.abs(out - ref).max() <= tolerance(ref.numpy())
    assert np.array_equal(E.reference_outputs(name, x.numpy()), ref.numpy())
    assert np.array_equal(E.reference_outputs(name, x.numpy(), deployed=True), out.numpy())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("variant", ["legacy_folded", "legacy_unfolded"])
def test_legacy_export_runs_in_ort_and_matches_torch(onnx_export, name, variant):
    path = onnx_export(name, variant)
    proto = onnx.load(str(path))
    assert proto.ir_version <= ORT_MAX_IR
    assert {o.domain: o.version for o in proto.opset_import}[""] == 17
    check_matches_torch(path, name, tb.images(1))
    ops = E.op_histogram(path)
    n_bn = len(tb.batch_norms(tb.build(name)[0]))
    assert ops["BatchNormalization"] == (FOLDED_BN[name] if variant == "legacy_folded" else n_bn)
    assert ops["Conv"] > 0 and (ops["Add"] > 0 or ops["Sum"] > 0)


@pytest.mark.parametrize("name", NAMES)
def test_upstream_deployed_export_matches_train_export(onnx_export, name):
    train, deployed = onnx_export(name), onnx_export(name, deployed=True)
    ops = E.op_histogram(deployed)
    assert ops["BatchNormalization"] == 0 and ops["Add"] == 0
    x = tb.images(1)
    ref = E.run_onnx(train, x)
    assert np.abs(E.run_onnx(deployed, x) - ref).max() <= tolerance(ref)


@pytest.mark.parametrize("opset, ir", [(13, 7), (21, 10)])
def test_legacy_opsets(onnx_export, opset, ir):
    path = onnx_export("repvgg", opset=opset)
    proto = onnx.load(str(path))
    assert {o.domain: o.version for o in proto.opset_import}[""] == opset and proto.ir_version == ir
    check_matches_torch(path, "repvgg", tb.images(1))


@pytest.mark.parametrize("name, variant", [("acnet", "legacy_folded"), ("mobileone", "legacy_unfolded"),
                                           ("yolov6", "dynamo")])
def test_dynamic_batch_and_hw(onnx_export, name, variant):
    path = onnx_export(name, variant, dynamic="batch_hw")
    graph = onnx.load(str(path), load_external_data=False).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    check_matches_torch(path, name, tb.images(3, (3, 40, 28)))


def test_dynamic_batch_only(onnx_export):
    path = onnx_export("repvgg", dynamic="batch")
    graph = onnx.load(str(path)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 32, 32]
    check_matches_torch(path, "repvgg", tb.images(3))


def test_dbb_legacy_dynamic_hw_runs_only_at_the_export_size(onnx_export):
    """A torch 2.13 legacy-exporter limitation the converter meets: BNAndPad's slice assignment
    is traced with the export-time H/W baked into an Expand, so the model declares symbolic H/W
    but ORT fails at any other size (dynamo's export of the same net runs at any size)."""
    path = onnx_export("dbb", dynamic="batch_hw")
    check_matches_torch(path, "dbb", tb.images(2))
    with pytest.raises(Exception, match="Expand"):
        E.run_onnx(path, tb.images(1, (3, 40, 28)))


def test_legacy_external_data(onnx_export):
    path = onnx_export("repvgg", external_data=True)
    data = path.with_name(path.name + ".data")
    assert data.is_file() and data.stat().st_size > 10_000
    assert E.model_info(path)["external_files"] == [data.name]
    check_matches_torch(path, "repvgg", tb.images(1))


@pytest.mark.parametrize("name, dynamic", [("yolov6", "batch_hw"), ("dbb", None)])
def test_dynamo_export(onnx_export, name, dynamic):
    """Opset 18, IR 10, Conv+BN folded, weights in FILE.data by default."""
    path = onnx_export(name, "dynamo", dynamic=dynamic)
    proto = onnx.load(str(path), load_external_data=False)
    assert {o.domain: o.version for o in proto.opset_import}[""] == 18 and proto.ir_version == 10
    assert (path.parent / (path.name + ".data")).is_file()
    assert E.model_info(path)["external_files"] == [path.name + ".data"]
    assert E.op_histogram(path)["BatchNormalization"] == DYNAMO_BN[name]
    check_matches_torch(path, name, tb.images(1))


def test_graph_shapes_the_converter_must_read(onnx_export):
    """DBB's BNAndPad (pad, then four slice assignments of the BN's pad value) becomes a Pad and
    four ScatterND per layer (7 layers) in both exporters: legacy computes the indices in the
    graph (Shape/Range/Expand/Where...), dynamo writes them as initializers between Transposes.
    MobileOne's `scale_out + identity_out` with a python 0 stays an Add of a scalar 0 in legacy
    exports (5 of them: the in-place `out +=` after it keeps the tracer from dropping it)."""
    for variant in ("legacy_folded", "dynamo"):
        ops = E.op_histogram(onnx_export("dbb", variant))
        assert (ops["ScatterND"], ops["Pad"], ops["AveragePool"]) == (28, 7, 4), variant
    assert E.op_histogram(onnx_export("dbb"))["Shape"] > 100
    proto = onnx.load(str(onnx_export("mobileone")))
    consts = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t)
              for n in proto.graph.node if n.op_type == "Constant"}
    zero_adds = [n for n in proto.graph.node if n.op_type == "Add"
                 and any(i in consts and consts[i].ndim == 0 and consts[i] == 0 for i in n.input)]
    assert len(zero_adds) == 5
    acnet = E.op_histogram(onnx_export("acnet"))
    assert (acnet["Slice"], acnet["Conv"], acnet["BatchNormalization"]) == (4, 15, 0)  # crop layers
