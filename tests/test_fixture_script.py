"""The fixture script makes real ACNet checkpoints in both formats and runs them."""

import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fixtures.make_checkpoint import _run_child, make_checkpoint, reference_logits

ROOT = Path(__file__).resolve().parents[1]

DEPTH, CLASSES = 18, 10
# ResNet-18-ACNet train program: 17 ACBs (51 convs) + 4 projections = 55 conv weights, 55 BNs
# x 4, fc w/b; a Momentum velocity per trainable (55 + 110 + 2); learning_rate_0, step counter.
N_PERSISTABLES = 55 + 55 * 4 + 2 + 167 + 2


def read_lod_tensor(path):
    """Minimal independent reader of one save_vars file (float32 / int64 only)."""
    b = Path(path).read_bytes()
    (lod_level,) = struct.unpack_from("<Q", b, 4)
    assert lod_level == 0
    (desc_size,) = struct.unpack_from("<i", b, 16)
    desc, data = b[20 : 20 + desc_size], b[20 + desc_size :]
    assert desc[0] == 0x08  # field 1, varint: data type
    dtype = {5: np.float32, 3: np.int64}[desc[1]]
    dims, i = [], 2
    while i < len(desc):  # field 2 (tag 0x10), varint dims; unpacked, as Paddle writes them
        assert desc[i] == 0x10
        i, v, shift = i + 1, 0, 0
        while True:
            byte = desc[i]
            i += 1
            v |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        dims.append(v)
    return np.frombuffer(data, dtype=dtype).reshape(dims)


def load_all(ckpt):
    ckpt = Path(ckpt)
    if (ckpt / "model.pdparams").exists():
        out = {}
        for suffix in ("pdparams", "pdopt"):
            with open(ckpt / f"model.{suffix}", "rb") as f:
                out.update(pickle.load(f))  # our own freshly written file
        return out
    return {p.name: read_lod_tensor(p) for p in ckpt.iterdir()}


@pytest.fixture(scope="module")
def r18(checkpoints):
    """The session's ResNet-18 checkpoints (conftest), made by this script with its defaults."""
    return {fmt: checkpoints(DEPTH, fmt) for fmt in ("vars", "pdparams")}


def test_import_does_not_import_paddle():
    code = "import sys, fixtures.make_checkpoint; sys.exit('paddle' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_vars_format_files(r18):
    names = {p.name for p in r18["vars"].iterdir()}
    for name in ("conv1_acsquare_weights", "bn_conv1_acver_variance", "res2a_branch1_weights",
                 "fc_0.w_0", "fc_0.b_0", "conv1_acsquare_weights_velocity_0",
                 "bn_conv1_acsquare_scale_velocity_0", "learning_rate_0", "@LR_DECAY_COUNTER@"):
        assert name in names
    assert len(names) == N_PERSISTABLES
    assert sum(n.endswith("_velocity_0") for n in names) == 167
    assert not any(".b_0" in n and not n.startswith("fc_0") for n in names)  # no legacy bias


def test_pdparams_format_files(r18):
    d = r18["pdparams"]
    assert {p.name for p in d.iterdir()} == {"model.pdparams", "model.pdopt", "model.pdmodel"}
    with open(d / "model.pdparams", "rb") as f:
        params = pickle.load(f)
    with open(d / "model.pdopt", "rb") as f:
        opt = pickle.load(f)
    assert "conv1_acsquare_weights" in params and "bn_conv1_acver_variance" in params
    assert "res2a_branch1_weights" in params and "fc_0.w_0" in params
    assert "conv1_acsquare_weights_velocity_0" in opt and "learning_rate_0" in opt
    assert not any(k.endswith("_velocity_0") for k in params)
    assert len(params) + len(opt) == N_PERSISTABLES
    assert all(type(v) is np.ndarray for v in {**params, **opt}.values())


def test_tensors_trained_and_same_in_both_formats(r18):
    v, p = load_all(r18["vars"]), load_all(r18["pdparams"])
    assert v.keys() == p.keys()
    for k in v:
        np.testing.assert_array_equal(v[k], p[k], err_msg=k)
    assert v["conv1_acsquare_weights"].shape == (64, 3, 7, 7)
    assert v["conv1_acver_weights"].shape == (64, 3, 7, 1)
    assert v["conv1_achor_weights"].shape == (64, 3, 1, 7)
    assert v["res5b_branch2b_acsquare_weights"].shape == (512, 512, 3, 3)
    assert v["fc_0.w_0"].shape == (512, CLASSES) and v["fc_0.b_0"].shape == (CLASSES,)
    assert v["learning_rate_0"].shape == () and int(v["@LR_DECAY_COUNTER@"][0]) == 3
    for bn in ("bn_conv1_acsquare", "bn_conv1_achor", "bn2a_branch1", "bn5b_branch2b_acver"):
        assert not np.allclose(v[bn + "_variance"], 1.0), bn
        assert not np.allclose(v[bn + "_mean"], 0.0), bn
        assert not np.allclose(v[bn + "_scale"], 1.0), bn
        assert not np.allclose(v[bn + "_offset"], 0.0), bn
        assert np.all(v[bn + "_variance"] > 0), bn
    assert np.any(v["conv1_acsquare_weights_velocity_0"] != 0)
    for k, a in v.items():
        assert np.all(np.isfinite(a)), k


def test_reference_logits_agree_between_formats(r18):
    images = np.random.default_rng(7).standard_normal((2, 3, 64, 64)).astype(np.float32)
    a = reference_logits(r18["vars"], DEPTH, CLASSES, images)
    b = reference_logits(r18["pdparams"], DEPTH, CLASSES, images)
    assert a.shape == (2, CLASSES) and a.dtype == np.float32
    assert np.all(np.isfinite(a))
    assert 1e-3 < np.abs(a).max() < 1e3  # sane scale, so float32 tolerances mean something
    np.testing.assert_array_equal(a, b)


def test_legacy_bias(checkpoints):
    d = checkpoints(DEPTH, "vars", legacy_bias=True)
    params = load_all(d)
    b0 = params["conv1.acsquare.conv2d.output.1.b_0"]
    assert b0.shape == (64,) and np.any(b0 != 0)
    assert params["res5b_branch2b.acsquare.conv2d.output.1.b_0"].shape == (512,)
    assert sum(k.endswith(".acsquare.conv2d.output.1.b_0") for k in params) == 17


def test_bad_arguments_and_child_failure(tmp_path):
    with pytest.raises(ValueError):
        reference_logits(tmp_path, DEPTH, CLASSES, np.zeros((3, 32, 32), np.float32))
    with pytest.raises(ValueError):
        make_checkpoint(tmp_path / "x", 19)
    with pytest.raises(ValueError):
        make_checkpoint(tmp_path / "x", 18, fmt="onnx")
    with pytest.raises(RuntimeError, match="invalid choice"):  # child's stderr is surfaced
        _run_child(["make", tmp_path, "--depth", "19"], timeout=60)
