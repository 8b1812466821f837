"""Every legacy-format op handler against Paddle itself (the legacy writer's twin of
tests/test_onnx_ops.py's `test_every_handler_is_exercised`).

Each family is a tiny seeded paddle.nn layer exported with `paddle.jit.save` (PIR, input
`image`), read with `load_program`/`read_graph`, translated with the legacy writer
(`translate` + `build_program_bytes`, the parameters serialized beside it as save_combine does),
and run by paddle.inference beside the exported PIR program itself: every output must agree within
1e-5 x max(1, |y|). The families reach every registered handler; the ONNX families are reused
where every op they hold has a legacy form. Models are exported once per module (~1 s each).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from acnet_convert.read.lod_tensor import lod_tensor_bytes
from acnet_convert.read.program import load_program, program_files
from acnet_convert.read.program_reader import read_graph
from acnet_convert.write.legacy import ops as legacy_ops
from acnet_convert.write.legacy import writer as legacy_writer
from tests.predict import paddle_predict
from tests.test_onnx_ops import _model_classes, export_layer

TOL = 1e-5
SIZE = 16
# the ONNX test's families whose every op has a legacy form
SHARED = ["Act", "Arith", "Conv", "Cumsum", "Dropout", "Interp", "MatMul", "Net", "ShapeOps"]


def _legacy_classes() -> dict:
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    class Scaled(nn.Layer):
        def __init__(self):
            super().__init__()
            self.gain = self.create_parameter([3, 1, 1])

    class Norm(nn.Layer):
        """batch_norm that follows no conv (so it stays in the deploy graph), with and without
        affine parameters, epsilons 1e-5, 1e-3 and 3e-4: the legacy op must carry each (Paddle's
        legacy batch_norm refuses an epsilon above 1e-3)."""

        def __init__(self):
            super().__init__()
            self.bn0 = nn.BatchNorm2D(3)
            self.bn1 = nn.BatchNorm2D(3, epsilon=1e-3, weight_attr=False, bias_attr=False)
            self.bn2 = nn.BatchNorm2D(3, epsilon=3e-4)

        def forward(self, image):
            x = self.bn1(F.relu(self.bn0(image)))
            return x, self.bn2(image * 0.5)

    class Pool(Scaled):
        """pool2d: max/avg, ceil_mode, exclusive or not, 2 and 4 paddings, SAME, VALID,
        adaptive average pooling to 1, a divisor and a non-divisor."""

        def forward(self, image):
            x = image * self.gain
            return (F.max_pool2d(x, 3, 2, 1, ceil_mode=True),
                    F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, exclusive=False),
                    F.avg_pool2d(x, 3, 2, 1, ceil_mode=True),
                    F.avg_pool2d(x, 2, 2, [0, 1, 0, 1]),
                    F.max_pool2d(x, 3, 2, [1, 0, 1, 0]),
                    F.max_pool2d(x, 3, 2, "SAME"),
                    F.avg_pool2d(x, 3, 1, "VALID"),
                    F.adaptive_avg_pool2d(x, 1),
                    F.adaptive_avg_pool2d(x, 4),
                    F.adaptive_avg_pool2d(x, [3, 5]))

    class Shape(Scaled):
        """concat, split (sections with -1, num), slice (decrease_axis), pad, pad3d (constant,
        reflect, replicate), reshape, flatten, transpose, (un)squeeze, cast, reductions."""

        def forward(self, image):
            x = image * self.gain
            a, b = paddle.split(x, [1, -1], axis=1)
            c, _d, _e = paddle.split(x, 3, axis=1)
            y = paddle.concat([b, a, c], axis=1)
            u = paddle.unsqueeze(x, [-1, 1])
            return (y, y[:, 1:3, 2:-2], y[:, 0], F.pad(x, [1, 2, 0, 1]), F.pad(x, [1, 1, 2, 0], mode="reflect"),
                    F.pad(x, [1, 1, 2, 0], mode="replicate"), F.pad(x, [0, 0, 1, 0, 2, 1, 0, 1], value=0.5),
                    paddle.reshape(x, [0, -1, 8]), paddle.flatten(x, 2, 3), paddle.transpose(x, [0, 2, 3, 1]),
                    u, paddle.squeeze(u, [1, 5, 2]), paddle.cast(paddle.cast(x * 10, "int32"), "float32"),
                    x.mean(axis=1), x.max(axis=[2, 3]), x.min(axis=1), (paddle.abs(x) + 0.5).prod(axis=1),
                    x.mean())

    class Unary(Scaled):
        """The elementwise functions with a legacy op of the same or another name."""

        def forward(self, image):
            x = image * self.gain
            p = paddle.abs(x) + 0.5
            return (paddle.exp(x), paddle.sqrt(p), paddle.floor(x * 3), paddle.ceil(x * 3), paddle.log(p),
                    paddle.erf(x), paddle.reciprocal(p), paddle.sign(x), paddle.sin(x), paddle.cos(x), F.softsign(x),
                    paddle.rsqrt(p), paddle.square(x), paddle.pow(p, x), paddle.round(x * 3), F.mish(x),
                    F.selu(x), F.celu(x, 0.7), F.softplus(x, 2.0, 10.0), F.log_sigmoid(x), F.tanhshrink(x),
                    paddle.remainder(x * 3, p), paddle.floor_divide(x * 3, p), paddle.assign(x) * 2)

    class Interp1D3D(Scaled):
        """linear_interp on [N, C, L] and trilinear_interp on [N, C, D, H, W]."""

        def forward(self, image):
            x = image * self.gain
            line = x.flatten(2)  # [N, 3, 256]
            cube = x.reshape([0, 3, 4, 4, 16])
            return (F.interpolate(line, scale_factor=0.5, mode="linear", data_format="NCW"),
                    F.interpolate(line, size=[100], mode="linear", align_corners=True, data_format="NCW"),
                    F.interpolate(cube, scale_factor=2, mode="trilinear", data_format="NCDHW"),
                    F.interpolate(cube, size=[3, 5, 7], mode="trilinear", align_corners=True, data_format="NCDHW"))

    return {cls.__name__: cls for cls in (Norm, Pool, Shape, Unary, Interp1D3D)}


FAMILIES = SHARED + ["Norm", "Pool", "Shape", "Unary", "Interp1D3D"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """name -> path prefix of the exported PIR program."""
    shared, own = _model_classes(), _legacy_classes()
    classes = {**{name: shared[name] for name in SHARED}, **own}
    root = tmp_path_factory.mktemp("legacy_ops")
    out = {}
    for seed, name in enumerate(FAMILIES):
        out[name] = export_layer(classes[name], seed, root / name / "inference", SIZE)
    return out


def legacy_model(prefix: Path, folder: Path) -> tuple[Path, Path, set[str]]:
    """The legacy translation of the program at `prefix`, written into `folder` with its
    parameters serialized as save_combine writes them; the graph's op names."""
    graph = read_graph(load_program(*program_files(prefix)))
    program = legacy_writer.translate(graph)
    folder.mkdir(parents=True, exist_ok=True)
    model, params = folder / "inference.pdmodel", folder / "inference.pdiparams"
    model.write_bytes(legacy_writer.build_program_bytes(program, graph))
    params.write_bytes(b"".join(lod_tensor_bytes(program.parameters[n]) for n in sorted(program.parameters)))
    return model, params, set(graph.op_counts())


def run(program: Path, params: Path, images: np.ndarray) -> list[np.ndarray]:
    """paddle.inference as written (Paddle 3.3.1's oneDNN kernels cannot run PIR interpolation)."""
    return paddle_predict(program, params, images, ir_optim=False, onednn=False)[0]


_exercised: dict[str, set[str]] = {}


@pytest.mark.parametrize("name", FAMILIES)
def test_legacy_handlers_match_paddle(exported, tmp_path, name: str) -> None:
    prefix = exported[name]
    model, params, ops = legacy_model(prefix, tmp_path)
    x = np.random.default_rng(1).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    want = run(prefix.with_suffix(".json"), prefix.with_suffix(".pdiparams"), x)
    got = run(model, params, x)
    assert any(np.abs(w).max() > 0.1 for w in want), "degenerate oracle"
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, (i, g.shape, w.shape)
        assert np.abs(g.astype(np.float64) - w).max() <= TOL * max(1.0, float(np.abs(w).max())), i
    _exercised[name] = ops


def test_every_legacy_handler_is_exercised(exported, tmp_path) -> None:
    """The families above reach every registered handler in a numeric comparison."""
    seen: set[str] = set()
    for name in FAMILIES:
        ops = _exercised.get(name)
        if ops is None:  # run alone: compare here
            test_legacy_handlers_match_paddle(exported, tmp_path / name, name)
            ops = _exercised[name]
        seen |= ops
    # select_input is what a legacy program's `if` leaves, no Paddle 3 API makes it
    # (tests/test_paddle_writer.py runs it on PP-YOLOE+'s alpha model, with a twin that fails)
    assert set(legacy_ops.supported_ops()) - seen == {"select_input"}


def test_a_batch_norm_paddles_legacy_op_refuses_leaves_the_pir_model_alone(tmp_path) -> None:
    """Paddle's legacy batch_norm refuses an epsilon above 1e-3; a BatchNorm2D(epsilon=0.01) that
    follows no conv stays in the deploy graph. `--paddle-format auto` writes the PIR model with a
    warning (it used to fail the whole fuse, exit 3); `both` is refused, naming the op."""
    import paddle
    import paddle.nn.functional as F
    from paddle import nn

    from acnet_convert.commands.fuse import fuse
    from acnet_convert.common.errors import ConvertError

    class Late(nn.Layer):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2D(3, 4, 3, padding=1), nn.BatchNorm2D(4, epsilon=0.01)

        def forward(self, image):
            return self.bn(F.relu(self.conv(image)))

    layer = Late()
    layer.eval()
    prefix = tmp_path / "src" / "inference"
    paddle.jit.save(layer, str(prefix), input_spec=[paddle.static.InputSpec([None, 3, SIZE, SIZE], "float32", "image")])
    result = fuse(prefix, tmp_path / "auto")
    assert result.manifest.formats == ("pir",) and not (tmp_path / "auto" / "inference.pdmodel").exists()
    assert any("no legacy inference.pdmodel" in w and "'epsilon' should be less" in w for w in result.warnings)
    assert '"legacy"' not in (tmp_path / "auto" / "manifest.json").read_text()
    with pytest.raises(ConvertError, match="Paddle refused the legacy op 'batch_norm'"):
        fuse(prefix, tmp_path / "both", paddle_format="both")
    assert not (tmp_path / "both").exists()
