"""`fuse --paddle-format legacy|both`: the legacy inference.pdmodel, translated op by op from the
deploy graph, runs in paddle.inference and computes what the PIR model computes, reading the same
inference.pdiparams."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from acnet_convert.write.legacy import ops as legacy_ops
from acnet_convert.write.legacy import writer as legacy_writer
from acnet_convert.commands.fuse import fuse
from acnet_convert.common.errors import ConvertError
from acnet_convert.graph.ir import Graph, Node, TensorInfo
from acnet_convert.read.lod_tensor import lod_tensor_bytes
from acnet_convert.read.program import load_program, program_files
from acnet_convert.read.program_reader import read_graph
from fixtures.cnn_models import MODELS
from tests.cnn_fixtures import cnn_models  # noqa: F401 - a fixture
from tests.conftest import TEST_INPUT
from tests.predict import paddle_predict


def run_predictor(program: Path, params: Path, images: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """paddle.inference on the CPU (IR optimisation off: Paddle 3.3.1's oneDNN conv fusion pass
    crashes on some valid programs, whichever format they come in)."""
    outs, names = paddle_predict(program, params, images, ir_optim=False, onednn=False)
    return outs[0], names


@pytest.fixture(scope="module")
def resnet18_both(fused) -> Path:
    return fused(18, "vars")  # auto writes both formats for a ResNet; shared, so read-only here


def test_legacy_and_pir_models_compute_the_same_logits(resnet18_both: Path, images: np.ndarray) -> None:
    out = resnet18_both
    pir, _ = run_predictor(out / "inference.json", out / "inference.pdiparams", images)
    legacy, names = run_predictor(out / "inference.pdmodel", out / "inference.pdiparams", images)
    scale = max(1.0, float(np.abs(pir).max()))
    assert legacy.shape == (len(images), 10)
    assert np.abs(legacy - pir).max() <= 1e-5 * scale  # measured: bit-identical
    assert names == ["logits"]


def test_both_formats_share_one_params_file_in_sorted_name_order(resnet18_both: Path) -> None:
    """The sharing answer: Paddle writes a program's parameters as save_combine does, each
    tensor serialized in the order of its sorted name; both programs declare the same
    parameters, so one file serves both (byte for byte what the deploy weights serialize to)."""
    with open(resnet18_both / "deploy.pdparams", "rb") as f:
        weights = pickle.load(f)
    expected = b"".join(lod_tensor_bytes(weights[name]) for name in sorted(weights))
    assert (resnet18_both / "inference.pdiparams").read_bytes() == expected
    manifest = (resnet18_both / "manifest.json").read_text()
    assert '"legacy"' in manifest and '"pir"' in manifest


def test_legacy_program_has_the_attributes_paddles_own_export_writes(resnet18_both: Path) -> None:
    """No Python call stacks (they would carry this machine's paths) and no oneDNN/cuDNN
    switches: conv2d has the attributes a Paddle 3.3 legacy jit.save writes, no more."""
    from paddle.base.proto import framework_pb2

    data = (resnet18_both / "inference.pdmodel").read_bytes()
    desc = framework_pb2.ProgramDesc()
    desc.ParseFromString(data)
    ops = desc.blocks[0].ops
    assert b"op_callstack" not in data and str(Path(__file__).parent).encode() not in data
    conv = next(op for op in ops if op.type == "conv2d")
    assert {a.name for a in conv.attrs} == {"data_format", "dilations", "groups", "padding_algorithm", "paddings",
                                             "strides", "op_device", "op_namescope", "op_role", "op_role_var"}
    assert [op.type for op in ops][:1] == ["feed"] and [op.type for op in ops][-1:] == ["fetch"]
    assert len(desc.op_version_map.pair) > 0


def test_legacy_program_has_the_legacy_op_types() -> None:
    """The ops a Paddle 2.x reader knows: conv2d + elementwise_add (bias on axis 1), pool2d with
    ksize folded from PIR's kernel-size operand, matmul_v2, flatten_contiguous_range."""
    graph = Graph(
        nodes=[
            Node("conv2d", ("image", "w", "b"), ("c",), {"strides": [2, 2], "paddings": [1, 1, 1, 1], "dilations": [1, 1],
                                                        "groups": 1, "padding_algorithm": "EXPLICIT", "data_format": "NCHW"}),
            Node("full_int_array", (), ("k",), {"value": [3, 3], "dtype": "int64"}),
            Node("pool2d", ("c", "k"), ("p",), {"strides": [2, 2], "paddings": [1, 1], "pooling_type": "max"}),
            Node("relu", ("p",), ("r",)),
        ],
        inputs=["image"], outputs=["r"],
        tensors={"image": TensorInfo((-1, 3, 8, 8), "float32"), "c": TensorInfo((-1, 4, 4, 4), "float32")},
        weights={"w": np.zeros((4, 3, 3, 3), np.float32), "b": np.zeros(4, np.float32)},
        constants={"k": np.array([3, 3], np.int64)},
        output_names=["out"],
    )
    program = legacy_writer.translate(graph)
    assert [op.type for op in program.ops] == ["conv2d", "elementwise_add", "pool2d", "relu"]
    add, pool = program.ops[1], program.ops[2]
    assert add.attrs["axis"] == 1 and add.inputs["Y"] == ["b"]
    assert pool.attrs["ksize"] == [3, 3] and pool.inputs == {"X": ["c"]}
    assert sorted(program.parameters) == ["b", "w"]
    assert program.fetches == ["out"] and program.ops[-1].outputs == {"Out": ["out"]}


def test_an_op_without_translation_is_refused_by_name() -> None:
    graph = Graph([Node("frobnicate", ("image",), ("y",), origin=(7,))], ["image"], ["y"],
                  {"image": TensorInfo((-1, 3, 8, 8), "float32")}, {})
    with pytest.raises(ConvertError, match=r"op #7.*'frobnicate' has no translation to the legacy Paddle format; "
                                           r"use --paddle-format pir"):
        legacy_writer.translate(graph)


def test_untranslatable_op_is_refused_and_writes_nothing(checkpoints, tmp_path, monkeypatch) -> None:
    monkeypatch.delitem(legacy_ops.HANDLERS, "pool2d")
    out = tmp_path / "out"
    # asked for explicitly, a legacy model that cannot be written is an error (auto only warns: see below)
    with pytest.raises(ConvertError, match="'pool2d' has no translation to the legacy Paddle format") as caught:
        fuse(checkpoints(18, "vars"), out, input_size=TEST_INPUT, paddle_format="both")
    assert len(str(caught.value)) < 1000
    assert not out.exists() and not list(tmp_path.iterdir())
    # the PIR model alone still converts
    fuse(checkpoints(18, "vars"), out, input_size=TEST_INPUT, paddle_format="pir")
    assert not (out / "inference.pdmodel").exists()


def test_params_of_another_program_are_refused(tmp_path) -> None:
    program = legacy_writer.LegacyProgram([], {}, {"w": np.zeros((4, 3), np.float32)}, ["image"], ["y"])
    params = tmp_path / "inference.pdiparams"
    params.write_bytes(lod_tensor_bytes(np.zeros((4, 3), np.float32)))
    legacy_writer.check_shared_params(program, params)
    params.write_bytes(lod_tensor_bytes(np.zeros((4, 4), np.float32)))
    with pytest.raises(ConvertError, match="cannot share them"):
        legacy_writer.check_shared_params(program, params)


def test_paddle_format_legacy_writes_only_the_pdmodel(checkpoints, tmp_path, images) -> None:
    out = tmp_path / "legacy"
    result = fuse(checkpoints(18, "vars"), out, input_size=TEST_INPUT, paddle_format="legacy", onnx=True)
    assert result.manifest.formats == ("legacy",)
    assert (out / "inference.pdmodel").is_file() and not (out / "inference.json").exists()
    logits, _ = run_predictor(out / "inference.pdmodel", out / "inference.pdiparams", images)
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {"image": images})[0]
    assert np.abs(onnx_logits - logits).max() <= 1e-4 * max(1.0, float(np.abs(logits).max()))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_fixture_cnn_has_a_legacy_model_equal_to_its_pir_model(cnn_models, tmp_path, name: str) -> None:  # noqa: F811
    """Users' own graphs (MobileNets with depthwise convs, U-Net's concat and interpolation,
    SE multiply, hardswish, pads and slices, dropout, unfused sums and BNs, cumsum): every op
    they leave in the deploy graph has a legacy translation that computes the same thing."""
    out = tmp_path / name
    fuse(cnn_models(name, "pir"), out, paddle_format="both")
    channels, height, width = MODELS[name].input_shape
    images = np.random.default_rng(3).normal(size=(2, channels, height, width)).astype(np.float32)
    pir, pir_names = run_predictor(out / "inference.json", out / "inference.pdiparams", images)
    legacy, legacy_names = run_predictor(out / "inference.pdmodel", out / "inference.pdiparams", images)
    assert legacy.shape == pir.shape
    assert np.abs(legacy - pir).max() <= 1e-5 * max(1.0, float(np.abs(pir).max()))
    assert legacy_names == pir_names


def test_a_batch_norm_reading_another_batch_norms_running_statistics_is_written() -> None:
    """A legacy source that calls one BN layer twice: Paddle's translation to PIR makes the second
    batch_norm read the first one's in-place MeanOut/VarianceOut (its outputs 1 and 2). In the
    legacy program those are the running statistics themselves."""
    bn = {"epsilon": 1e-5, "momentum": 0.9, "data_format": "NCHW", "is_test": True}
    outs = [("y1", "y1.mean", "y1.var", "y1.sm", "y1.sv", "y1.r"), ("y2", "y2.mean", "y2.var", "y2.sm", "y2.sv", "y2.r")]
    graph = Graph(
        nodes=[
            Node("batch_norm", ("image", "m", "v", "s", "b"), outs[0], bn),
            Node("batch_norm", ("image", "y1.mean", "y1.var", "s", "b"), outs[1], bn),
            Node("add", ("y1", "y2"), ("z",)),
        ],
        inputs=["image"], outputs=["z"],
        tensors={"image": TensorInfo((-1, 4, 8, 8), "float32")},
        weights={k: np.ones(4, np.float32) for k in "mvsb"},
        output_names=["out"],
    )
    program = legacy_writer.translate(graph)
    second = program.ops[1]
    assert second.inputs["Mean"] == ["m"] and second.inputs["Variance"] == ["v"]
    legacy_writer.build_program_bytes(program, graph)  # Paddle accepts every op


def test_auto_format_writes_pir_with_a_warning_when_an_op_has_no_legacy_form() -> None:
    from acnet_convert.commands.fuse import _formats

    graph = Graph(
        nodes=[Node("argmax", ("image",), ("y",), {"axis": 1, "keepdims": False, "flatten": False, "dtype": "int64"})],
        inputs=["image"], outputs=["y"], tensors={"image": TensorInfo((-1, 4), "float32")}, weights={},
    )
    warnings: list[str] = []
    assert _formats("auto", graph, warnings.append) == ["pir"]
    assert len(warnings) == 1 and "argmax" in warnings[0]
    assert _formats("both", graph, warnings.append) == ["pir", "legacy"]  # the writer then refuses, exit 3
    assert _formats("auto", Graph([], ["image"], ["image"], {}, {}), warnings.append) == ["pir", "legacy"]


@pytest.fixture(scope="module")
def shape_ops(tmp_path_factory) -> Path:
    """tests/test_onnx_ops.py's ShapeOps model (what DBB's BNAndPad leaves: shape64, slice, stack,
    expand, concat; full_like, sqrt, shape arithmetic, logical_not), exported once."""
    import paddle

    from tests.test_onnx_ops import _calibrate, _model_classes

    paddle.seed(0)
    layer = _model_classes()["ShapeOps"]()
    _calibrate(layer, 0)
    layer.eval()
    prefix = tmp_path_factory.mktemp("shape_ops") / "inference"
    paddle.jit.save(layer, str(prefix), input_spec=[paddle.static.InputSpec([None, 3, 16, 16], "float32", "image")])
    return prefix


def _legacy_and_pir(prefix: Path, out: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    fuse(prefix, out, paddle_format="both")
    images = np.random.default_rng(4).normal(size=(3, 3, 16, 16)).astype(np.float32)
    pir = paddle_predict(out / "inference.json", out / "inference.pdiparams", images, ir_optim=False, onednn=False)[0]
    legacy = paddle_predict(out / "inference.pdmodel", out / "inference.pdiparams", images, ir_optim=False,
                            onednn=False)[0]
    return legacy, pir


def test_shape_ops_have_legacy_translations_equal_to_paddle(shape_ops: Path, tmp_path: Path) -> None:
    legacy, pir = _legacy_and_pir(shape_ops, tmp_path / "out")
    ops = {op.type for op in legacy_writer.translate(read_graph(load_program(*program_files(tmp_path / "out")))).ops}
    assert {"expand_v2", "shape", "stack", "fill_any_like", "sqrt", "logical_not", "elementwise_mul"} <= ops
    assert len(legacy) == len(pir) == 7 and pir[0].shape == (3, 3, 20, 16)
    for got, want in zip(legacy, pir):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.abs(got.astype(np.float64) - want).max() <= 1e-6 * max(1.0, float(np.abs(want).max()))


def test_a_wrong_legacy_translation_of_a_shape_op_is_caught(shape_ops: Path, tmp_path: Path, monkeypatch) -> None:
    """full_like written with fill_any_like's default value 0: output 1 differs by 0.25."""
    monkeypatch.setitem(legacy_ops.HANDLERS, "full_like", lambda b, node: b.op(
        "fill_any_like", {"X": [b.input(0)]}, {"Out": [b.output()]}, value=0.0, dtype=5))
    legacy, pir = _legacy_and_pir(shape_ops, tmp_path / "out")
    assert np.abs(legacy[1] - pir[1]).max() == pytest.approx(0.25)
    assert all(np.array_equal(a, b) for i, (a, b) in enumerate(zip(legacy, pir)) if i != 1)
