"""The CNN fixtures are right and able to fail: every exported train-form model (PIR and
legacy) runs under paddle.inference and equals its dygraph reference; its parameters are the
calibrated ones; the ACB geometry of the positive models fuses centred and the misaligned
negative does not. Also: the reference deploy=True program runs on a hand-folded checkpoint."""
from __future__ import annotations

import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from fixtures.cnn_models import MODELS, batch_norms, build
from fixtures.export_model import ROOT, export, program_ops, reference_outputs
from fixtures.make_checkpoint import deploy_reference_logits, reference_logits
from tests.cnn_fixtures import cnn_models, cnn_reference  # noqa: F401  (fixtures)
from tests.lod_bytes import lod_file
from tests.test_fixture_script import read_lod_tensor
from tests.predict import paddle_predict

NAMES = list(MODELS)
POSITIVE = [n for n in NAMES if not MODELS[n].negative]
FORMATS = ("pir", "legacy")


def images_for(name, n=2, seed=3):
    shape = (n, *MODELS[name].input_shape)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def tolerance(ref):
    return 1e-4 * max(1.0, float(np.abs(ref).max()))


def run_inference(prefix, images):
    """The exported model under paddle.inference, IR passes off, as a deployment loads it."""
    prog = prefix.with_suffix(".pdmodel")
    if not prog.is_file():
        prog = prefix.with_suffix(".json")
    # Paddle 3.3.1: with oneDNN (the CPU default) every PIR interpolate op fails to run,
    # "ConvertPirAttribute2RuntimeAttribute not support ArrayAttribute<DoubleAttribute>"
    # (PaddlePaddle/Paddle#79749); legacy .pdmodel runs either way.
    outs, _ = paddle_predict(prog, prefix.with_suffix(".pdiparams"), images, ir_optim=False, onednn=False)
    return outs[0] if len(outs) == 1 else outs


def _varint(b, i):
    v = shift = 0
    while True:
        v |= (b[i] & 0x7F) << shift
        shift += 7
        i += 1
        if b[i - 1] < 0x80:
            return v, i


def read_combined(path):
    """Every tensor of a save_combine file (.pdiparams): LoDTensor records back to back,
    each u32 version, u64 lod level (+ lod), u32 version, i32 desc size, TensorDesc, data."""
    b, i, out = path.read_bytes(), 0, []
    while i < len(b):
        (lod_level,) = struct.unpack_from("<Q", b, i + 4)
        i += 12
        for _ in range(lod_level):
            i += 8 + struct.unpack_from("<Q", b, i)[0]
        (size,) = struct.unpack_from("<i", b, i + 4)
        desc, i = b[i + 8 : i + 8 + size], i + 8 + size
        assert desc[0] == 0x08
        code, j = _varint(desc, 1)
        dims = []
        while j < len(desc):
            assert desc[j] == 0x10
            d, j = _varint(desc, j + 1)
            dims.append(d)
        dtype = np.dtype({5: "<f4", 3: "<i8"}[code])
        n = int(np.prod(dims)) * dtype.itemsize
        out.append(np.frombuffer(b[i : i + n], dtype).reshape(dims))
        i += n
    return out


def _key(a):
    return a.shape, np.ascontiguousarray(a, np.float32).tobytes()


# --------------------------------------------------------------------------------------------
# The models themselves


def test_registry_entries_are_small_and_described():
    for name, entry in MODELS.items():
        assert entry.description and len(entry.input_shape) == 3, name
        model, shape = build(name)
        assert shape == entry.input_shape and not model.training, name
        n_params = sum(int(np.prod(p.shape)) for p in model.parameters())
        assert n_params < 50_000, (name, n_params)
    assert {n for n in NAMES if n.startswith("neg_")} == {n for n in NAMES if MODELS[n].negative}


@pytest.mark.parametrize("name", NAMES)
def test_bn_statistics_are_calibrated_not_defaults(name):
    model, _ = build(name)
    bns = batch_norms(model)
    assert bns, name
    for bn_name, bn in bns:
        mean, var = bn._mean.numpy(), bn._variance.numpy()
        assert np.all(np.abs(mean) > 1e-6) and np.abs(mean).max() > 0.1, bn_name
        assert np.all(np.abs(var - 1) > 1e-6) and np.all(var >= 0.5), bn_name
        assert not np.allclose(bn.weight.numpy(), 1) and not np.allclose(bn.bias.numpy(), 0)
    # ... and they matter: with default statistics the model computes something else
    images = images_for(name)
    ref = _forward(model, images)
    for _, bn in bns:
        bn._mean.set_value(np.zeros(bn._mean.shape, np.float32))
        bn._variance.set_value(np.ones(bn._variance.shape, np.float32))
    assert np.abs(_forward(model, images) - ref).max() > 100 * tolerance(ref)


def _forward(model, images):
    import paddle

    with paddle.no_grad():
        return model(paddle.to_tensor(images)).numpy()


def test_same_seed_same_model_other_seed_other_model(cnn_reference):
    images = images_for("vgg_acb")
    a = cnn_reference("vgg_acb", images)
    np.testing.assert_array_equal(a, cnn_reference("vgg_acb", images))
    model, _ = build("vgg_acb", seed=1)
    assert np.abs(_forward(model, images) - a).max() > 100 * tolerance(a)


# --------------------------------------------------------------------------------------------
# The exported models


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", NAMES)
def test_exported_model_matches_reference(cnn_models, cnn_reference, name, fmt):
    images = images_for(name)
    ref = cnn_reference(name, images)
    got = run_inference(cnn_models(name, fmt), images)
    assert got.shape == ref.shape and np.all(np.isfinite(ref))
    assert 1e-2 < np.abs(ref).max() < 1e3  # sane scale: the tolerance means something
    err = np.abs(got - ref).max()
    assert err <= tolerance(ref), (name, fmt, err)


@pytest.mark.parametrize("fmt", FORMATS)
def test_exported_parameters_are_the_calibrated_ones(cnn_models, fmt):
    """The .pdiparams of each model holds exactly the dygraph model's tensors, BN statistics
    included, bit for bit: the same seed gives the same weights in both formats."""
    for name in NAMES:
        stored = read_combined(cnn_models(name, fmt).with_suffix(".pdiparams"))
        model, _ = build(name)
        own = [p.numpy() for p in model.parameters()]
        assert sorted(map(_key, stored)) == sorted(map(_key, own)), (name, fmt)
        means = [bn._mean.numpy() for _, bn in batch_norms(model)]
        assert all(any(_key(m) == _key(s) for s in stored) for m in means), name


def test_exported_model_detects_wrong_weights(cnn_models, cnn_reference):
    """The comparison can fail: another seed's reference is far outside the tolerance."""
    images = images_for("repvgg")
    other = _forward(build("repvgg", seed=5)[0], images)
    got = run_inference(cnn_models("repvgg", "pir"), images)
    assert np.abs(got - other).max() > 100 * tolerance(other)


def test_export_one_model_with_a_seed(tmp_path):
    prefix = export("repvgg", tmp_path / "r", fmt="legacy", seed=1)
    assert prefix == tmp_path / "r" / "inference" and prefix.with_suffix(".pdmodel").is_file()
    images = images_for("repvgg")
    ref = reference_outputs("repvgg", images, seed=1)
    assert np.abs(run_inference(prefix, images) - ref).max() <= tolerance(ref)
    with pytest.raises(KeyError, match="nope"):
        export("nope", tmp_path / "n")
    with pytest.raises(ValueError, match="fmt"):
        export("repvgg", tmp_path / "n", fmt="onnx")


def test_fixture_modules_do_not_import_paddle_or_the_package():
    code = ("import sys, fixtures.export_model, fixtures.cnn_models; "
            "sys.exit(any(m.split('.')[0] in ('paddle', 'acnet_convert') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_legacy_export_is_a_program_desc(cnn_models):
    prefix = cnn_models("foreign_acb", "legacy")
    files = {p.name for p in prefix.parent.iterdir()}
    assert files == {"inference.pdmodel", "inference.pdiparams", "inference.pdiparams.info"}
    assert prefix.with_suffix(".pdmodel").read_bytes()[:1] == b"\x0a"  # ProgramDesc.blocks
    legacy = program_ops(prefix)
    assert {"conv2d", "batch_norm", "elementwise_add", "sum"} <= set(legacy), legacy
    assert not any(op.startswith("pd_op.") for op in legacy)
    pir_prefix = cnn_models("foreign_acb", "pir")
    assert {p.name for p in pir_prefix.parent.iterdir()} == {"inference.json",
                                                              "inference.pdiparams"}
    pir = program_ops(pir_prefix)
    assert {"pd_op.conv2d", "pd_op.batch_norm_", "pd_op.add", "pd_op.add_n"} <= set(pir), pir


# --------------------------------------------------------------------------------------------
# Geometry: square/ver/hor blocks fuse into one centred conv, except the misaligned one


def _fold(cb):
    """A ConvBN's kernel and bias with its BN folded in (float64)."""
    bn, conv = cb.bn, cb.conv
    t = bn.weight.numpy().astype(np.float64) / np.sqrt(bn._variance.numpy() + bn._epsilon)
    b0 = 0.0 if conv.bias is None else conv.bias.numpy().astype(np.float64)
    kernel = conv.weight.numpy().astype(np.float64) * t[:, None, None, None]
    return kernel, bn.bias.numpy() + (b0 - bn._mean.numpy()) * t


def _acb_blocks(model):
    return [(n, m) for n, m in model.named_sublayers()
            if all(hasattr(m, a) for a in ("square", "ver", "hor"))]


def _centred_error(block, x):
    """max |block(x) - conv(x, sum of branches embedded centred)|, and the tolerance."""
    import paddle
    import paddle.nn.functional as F

    sq = block.square.conv
    big, bias = _fold(block.square)
    for branch in (block.ver, block.hor):
        k, b = _fold(branch)
        oh, ow = (big.shape[2] - k.shape[2]) // 2, (big.shape[3] - k.shape[3]) // 2
        big[:, :, oh : oh + k.shape[2], ow : ow + k.shape[3]] += k
        bias = bias + b
    xt = paddle.to_tensor(x)
    with paddle.no_grad():
        want = block(xt).numpy()
        got = F.conv2d(xt, paddle.to_tensor(big.astype(np.float32)),
                       paddle.to_tensor(bias.astype(np.float32)), stride=sq._stride,
                       padding=sq._padding, groups=sq._groups).numpy()
    return (np.abs(got - want).max() if got.shape == want.shape else np.inf), tolerance(want)


WITH_ACB_BLOCKS = [n for n in POSITIVE if n not in ("repvgg", "mobileone_lcnet")]


@pytest.mark.parametrize("name", WITH_ACB_BLOCKS + ["neg_misaligned"])
def test_acb_blocks_fuse_centred_unless_misaligned(name):
    model, _ = build(name)
    blocks = _acb_blocks(model)
    assert blocks, name
    rng = np.random.default_rng(0)
    for block_name, block in blocks:
        cin = block.square.conv.weight.shape[1] * block.square.conv._groups
        err, tol = _centred_error(block, rng.standard_normal((2, cin, 16, 16)).astype(np.float32))
        if name == "neg_misaligned" and block_name == "block":
            assert err > 100 * tol, (block_name, err)
        else:
            assert err <= tol, (name, block_name, err)


def test_negative_blocks_are_what_they_claim(cnn_models):
    strides = build("neg_strides")[0].block
    assert strides.hor.conv._stride != strides.square.conv._stride
    misaligned = build("neg_misaligned")[0].block
    assert misaligned.ver.conv._padding == [2, 0, 0, 0]
    assert "pd_op.cumsum" in program_ops(cnn_models("neg_unsupported_op", "pir"))


# --------------------------------------------------------------------------------------------
# The reference deploy=True program (make_checkpoint.py deploy-reference)


def _bn_name(name):
    return "bn_" + name if name == "conv1" else "bn" + name[3:]


def fold_acbs_into_deploy_folder(ckpt, out, eps=1e-5):
    """The ACNet paper's fusion, by hand: each branch's BN folded into its kernel, the Kx1 and
    1xK kernels added to the square's centre column and row, the biases summed. Every other
    variable is copied as it is (1x1 conv + BN stay, as in the reference deploy program)."""
    out.mkdir()
    acbs = sorted(p.name[: -len("_acsquare_weights")] for p in ckpt.iterdir()
                  if p.name.endswith("_acsquare_weights"))
    for p in ckpt.iterdir():
        if not any(f"_{k}_" in p.name for k in ("acsquare", "acver", "achor")):
            shutil.copy(p, out / p.name)
    for name in acbs:
        weight, bias = None, 0.0
        for kind in ("acsquare", "acver", "achor"):
            k = read_lod_tensor(ckpt / f"{name}_{kind}_weights").astype(np.float64)
            bn = f"{_bn_name(name)}_{kind}"
            gamma, beta, mean, var = (read_lod_tensor(ckpt / f"{bn}_{s}").astype(np.float64)
                                      for s in ("scale", "offset", "mean", "variance"))
            t = gamma / np.sqrt(var + eps)
            k = k * t[:, None, None, None]
            if weight is None:
                weight = k
            else:
                oh, ow = (weight.shape[2] - k.shape[2]) // 2, (weight.shape[3] - k.shape[3]) // 2
                weight[:, :, oh : oh + k.shape[2], ow : ow + k.shape[3]] += k
            bias = bias + beta - mean * t
        (out / f"{name}_acsquare_weights").write_bytes(lod_file(weight.astype(np.float32)))
        (out / f"{name}_acsquare_bias").write_bytes(lod_file(bias.astype(np.float32)))
    return acbs


def test_deploy_reference_runs_hand_folded_checkpoint(checkpoints, tmp_path):
    ckpt = checkpoints(18, "vars")
    deploy = tmp_path / "deploy"
    assert len(fold_acbs_into_deploy_folder(ckpt, deploy)) == 17
    images = np.random.default_rng(11).standard_normal((2, 3, 64, 64)).astype(np.float32)
    want = reference_logits(ckpt, 18, 10, images)
    got = deploy_reference_logits(deploy, 18, 10, images)
    assert got.shape == want.shape == (2, 10)
    assert np.abs(got - want).max() <= tolerance(want)
    assert np.array_equal(got.argmax(1), want.argmax(1))
    # every variable comes from the folder: nothing is left at a startup initialiser
    (deploy / "res2a_branch2a_acsquare_bias").unlink()
    with pytest.raises(RuntimeError, match="res2a_branch2a_acsquare_bias"):
        deploy_reference_logits(deploy, 18, 10, images)
