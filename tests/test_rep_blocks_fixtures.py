"""The fixtures of fixtures/rep_blocks.py (upstream re-parameterisable blocks: PP-YOLOE+ alpha,
RepViT, DBB, PP-LCNetV3, RepVGG/MobileOne zero-init idioms, dilated ACBs, ASPP, negatives) are
right: every model builds and is calibrated off Paddle's initialisers, its PIR and legacy
exports run under the static Executor and equal the dygraph model, the exported programs hold
the ops the blocks are known for, and the ideal deploy counts are consistent. Tests of the
fixtures only: no converter here."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fixtures.export_model import FORMATS, ROOT, reference_outputs
from fixtures.make_checkpoint import _child_env
from fixtures.rep_blocks import MODELS, batch_norms, build, count_ops, scalars
from tests.rep_fixtures import SEED

NAMES = list(MODELS)

# Runs in a child (one per format: PIR or legacy API mode): every exported model under the
# static Executor on the images of ARGV[2] (an .npz, one array per model); writes
# ARGV[3].npz (outputs) and ARGV[3].json ({name: {"feeds": [...], "ops": [...]}}, the op
# names of every block, sub-blocks of pd_op.if included).
CHILD = r"""
import json, sys
import numpy as np
import paddle

root, images, out = sys.argv[1:4]
images = np.load(images)
paddle.enable_static()
exe = paddle.static.Executor(paddle.CPUPlace())


def walk(block, names):
    for op in block.ops:
        names.append(op.name())
        for sub in op.blocks():
            walk(sub, names)


outs, info = {}, {}
for name in images.files:
    program, feeds, fetches = paddle.static.load_inference_model(f"{root}/{name}/inference", exe)
    names = []
    if paddle.framework.use_pir_api():
        walk(program.global_block(), names)
    else:
        names = [op.type for block in program.blocks for op in block.ops]
    outs[name] = exe.run(program, feed={feeds[0]: images[name]}, fetch_list=fetches)[0]
    info[name] = {"feeds": [str(f) for f in feeds], "ops": names}
np.savez(out + ".npz", **outs)
with open(out + ".json", "w") as f:
    json.dump(info, f)
"""


def images_for(name, n=2, seed=3):
    return np.random.default_rng(seed).standard_normal((n, *MODELS[name].input_shape)).astype(
        np.float32)


@pytest.fixture(scope="session")
def references():
    """{name: (images, dygraph outputs)}."""
    return {n: (images_for(n), reference_outputs(n, images_for(n), seed=SEED)) for n in NAMES}


@pytest.fixture(scope="session")
def exported(tmp_path_factory, references, rep_models):
    """exported(fmt) -> {name: {"out": ndarray, "ops": [...], "feeds": [...]}}: every model
    exported in one child (the session's rep_models, shared with the writer tests), then run in
    one child, per format; cached."""
    root = tmp_path_factory.mktemp("rep_blocks")
    done = {}

    def get(fmt):
        if fmt not in done:
            models = rep_models(NAMES[0], fmt).parent.parent  # models/NAME/inference.*
            images = root / f"images_{fmt}.npz"
            np.savez(images, **{n: x for n, (x, _) in references.items()})
            result = root / f"run_{fmt}"
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, str(models), str(images), str(result)],
                env=_child_env(pir=fmt == "pir"), capture_output=True, text=True, timeout=600,
                check=False)
            assert proc.returncode == 0, proc.stderr[-3000:]
            outs = np.load(f"{result}.npz")
            info = json.loads((root / f"run_{fmt}.json").read_text())
            done[fmt] = {n: {"out": outs[n], **info[n]} for n in NAMES}
        return done[fmt]

    return get


# --------------------------------------------------------------------------------------------
# The models themselves (dygraph)


def test_registry_is_complete_and_consistent():
    assert len(NAMES) == 13 and len(set(NAMES)) == 13
    for name, e in MODELS.items():
        assert e.description and e.ideal, name
        assert e.negative == name.startswith("neg_"), name
        assert bool(e.remains) == e.negative, name
        assert {"conv2d", "depthwise_conv2d", "batch_norm"} <= set(e.ideal), name
        c, h, w = e.input_shape
        assert c == 3 and (h, w) in ((32, 32), (32, 64)), name
    assert MODELS["lcnetv3_rec"].input_shape == (3, 32, 64)


@pytest.mark.parametrize("name", NAMES)
def test_model_builds_and_runs(references, name):
    _, out = references[name]
    assert np.isfinite(out).all() and 0.1 < np.abs(out).max() < 100, name
    expected = {"aspp_acb": (2, 3, 32, 32), "lcnetv3_rec": (2, 16, 2, 8)}.get(name, (2, 10))
    assert out.shape == expected


@pytest.mark.parametrize("name", NAMES)
def test_calibration_leaves_no_parameter_at_its_initialiser(name):
    import paddle

    paddle.seed(1234)
    raw, _ = build(name, calibrated=False)
    model, _ = build(name)
    raw_p, cal_p = dict(raw.named_parameters()), dict(model.named_parameters())
    assert raw_p.keys() == cal_p.keys() and len(cal_p) == len(model.parameters())
    same = [k for k in cal_p if np.allclose(raw_p[k].numpy(), cal_p[k].numpy())]
    assert same == [], same
    for _, bn in batch_norms(model):  # the running statistics are calibrated too
        assert not np.allclose(bn._mean.numpy(), 0) and not np.allclose(bn._variance.numpy(), 1)
    again, _ = build(name)  # deterministic
    assert all(np.array_equal(p.numpy(), q.numpy())
               for p, q in zip(model.parameters(), again.parameters()))


def test_scalars_are_off_their_initial_values():
    model, _ = build("ppyoloe_repvgg_alpha")
    alphas = [float(p.numpy()[0]) for kind, p in scalars(model) if kind == "alpha"]
    assert len(alphas) == 2 and all(0.3 <= a <= 0.9 for a in alphas)  # init 1.0
    plain = [m for _, m in model.named_sublayers() if type(m).__name__ == "RepVggBlock"]
    assert sum(m.alpha is None for m in plain) == 1  # one block without alpha

    for name in ("lcnetv3", "lcnetv3_rec"):
        model, _ = build(name)
        found = scalars(model)
        labs = [m for _, m in model.named_sublayers() if type(m).__name__ == "LearnableAffineBlock"]
        assert len(found) == 2 * len(labs) > 0
        for kind, p in found:
            v = float(p.numpy()[0])
            if kind == "lab_scale":  # init 1.0
                assert 0.5 <= v <= 1.5 and v != 1.0
            else:  # lab_bias, init 0.0
                assert kind == "lab_bias" and -0.5 <= v <= 0.5 and v != 0.0


@pytest.mark.parametrize("name", ["dbb", "neg_shared_intermediate"])
def test_identity_based_conv1x1_weight_is_not_zero(name):
    model, _ = build(name)
    idconvs = [m for _, m in model.named_sublayers() if type(m).__name__ == "IdentityBasedConv1x1"]
    assert idconvs
    for m in idconvs:  # zero at init; the identity is added in forward
        assert (m.weight.numpy() != 0).all()
        assert str(m.id_tensor.dtype).endswith("float32")


def test_dygraph_if_on_a_negative_alpha_would_be_false():
    """Why alpha > 0: dygraph Tensor.__bool__ is value > 0, the exported cast(bool) is != 0."""
    import paddle

    assert not bool(paddle.to_tensor([-0.5])) and bool(paddle.to_tensor([0.5]))


def _fold(weight, bn):
    t = bn.weight.numpy().astype(np.float64) / np.sqrt(bn._variance.numpy().astype(np.float64)
                                                       + bn._epsilon)
    return (np.asarray(weight, np.float64) * t[:, None, None, None],
            bn.bias.numpy() - bn._mean.numpy() * t)


def _then(k1, b1, k2, b2):
    """1x1 (k1, b1) then KxK (k2, b2), groups 1 (PaddleClas transIII_1x1_kxk)."""
    return (np.einsum("omhw,mi->oihw", k2, k1[:, :, 0, 0]),
            np.einsum("omhw,m->o", k2, b1) + b2)


def test_dbb_is_one_conv_as_paddleclas_reparameterises_it():
    """The ideal of 'dbb' (one conv per block) holds: upstream's get_equivalent_kernel_bias,
    in numpy, gives a conv equal to each block (BNAndPad and the unpadded pool included)."""
    import paddle
    import paddle.nn.functional as F

    model, _ = build("dbb")
    x = paddle.to_tensor(images_for("dbb"))
    for block in (model.b1, model.b2, model.b3):
        k = block.kernel_size
        kernel, bias = _fold(block.dbb_origin.conv.weight.numpy(), block.dbb_origin.bn)
        k1x1, b1x1 = _fold(block.dbb_1x1.conv.weight.numpy(), block.dbb_1x1.bn)
        kernel = kernel + np.pad(k1x1, [(0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)])
        bias = bias + b1x1
        kxk = block.dbb_1x1_kxk
        first = _fold(kxk.idconv1.weight.numpy() + kxk.idconv1.id_tensor.numpy(), kxk.bn1.bn)
        k2, b2 = _then(*first, *_fold(kxk.conv2.weight.numpy(), kxk.bn2))
        avg = block.dbb_avg
        c = block.out_channels
        k_avg = np.zeros((c, c, k, k))
        k_avg[np.arange(c), np.arange(c)] = 1.0 / k ** 2
        k3, b3 = _then(*_fold(avg.conv.weight.numpy(), avg.bn.bn), *_fold(k_avg, avg.avgbn))
        kernel, bias = kernel + k2 + k3, bias + b2 + b3
        conv = block.dbb_origin.conv
        want = F.relu(F.conv2d(x.astype("float64"), paddle.to_tensor(kernel),
                               paddle.to_tensor(bias), stride=conv._stride, padding=k // 2))
        got = block(x)
        assert np.abs(got.numpy() - want.numpy()).max() < 1e-4 * np.abs(want.numpy()).max()
        x = got


def test_exclusive_padded_avg_pool_is_not_a_conv():
    """What makes a depthwise DBB's avg branch a negative: at the border the exclusive pool
    divides by the taps inside the image, the equivalent conv (transV_avg) by K*K."""
    import paddle
    import paddle.nn.functional as F

    x = paddle.to_tensor(np.random.default_rng(0).uniform(1, 2, (1, 2, 6, 6)).astype(np.float32))
    pooled = F.avg_pool2d(x, 3, 1, 1).numpy()  # exclusive=True is Paddle's default
    conv = F.conv2d(x, paddle.full([2, 1, 3, 3], 1.0 / 9), padding=1, groups=2).numpy()
    assert np.allclose(pooled[..., 1:-1, 1:-1], conv[..., 1:-1, 1:-1], atol=1e-6)
    assert np.abs(pooled[..., 0, 0] - conv[..., 0, 0]).min() > 0.1


def test_count_ops_names():
    counts = count_ops(["pd_op.conv2d", "pd_op.batch_norm_", "batch_norm", "elementwise_add",
                        "pd_op.add", "reduce_mean", "pd_op.if", "conditional_block"])
    assert counts == {"conv2d": 1, "batch_norm": 2, "add": 2, "mean": 1, "if": 1,
                      "conditional_block": 1}


def test_fixture_module_imports_neither_paddle_nor_the_package():
    code = ("import sys, fixtures.rep_blocks, fixtures.export_model; "
            "sys.exit(any(m.split('.')[0] in ('paddle', 'acnet_convert') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False).returncode == 0


# --------------------------------------------------------------------------------------------
# Exported programs (PIR .json and legacy .pdmodel)


@pytest.mark.parametrize("fmt", FORMATS)
def test_exported_programs_run_and_equal_the_dygraph_model(exported, references, fmt):
    runs = exported(fmt)
    for name in NAMES:
        _, ref = references[name]
        got = runs[name]["out"]
        assert runs[name]["feeds"] == ["image"], name
        assert got.shape == ref.shape, (name, fmt)
        assert np.abs(got - ref).max() <= 1e-5 * max(1.0, float(np.abs(ref).max())), (name, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_exported_programs_hold_the_blocks_ops(exported, fmt):
    runs = exported(fmt)
    ops = {n: runs[n]["ops"] for n in NAMES}
    counts = {n: count_ops(o) for n, o in ops.items()}
    prefix = "pd_op." if fmt == "pir" else ""
    assert all(all(o.startswith(("pd_op.", "builtin.", "cf.")) == (fmt == "pir") for o in names)
               for names in ops.values())
    # `if self.alpha:` (two RepVggBlocks with alpha): PIR pd_op.if; legacy a conditional_block
    # per branch, logical_not for the false one, select_input
    alpha = counts["ppyoloe_repvgg_alpha"]
    if fmt == "pir":
        assert alpha["if"] == 2 and alpha["cast"] == 2 and "cf.yield" in ops["ppyoloe_repvgg_alpha"]
    else:
        assert alpha["conditional_block"] == 4 and alpha["logical_not"] == 2
        assert alpha["select_input"] == 2
    assert not any(counts[n]["if"] + counts[n]["conditional_block"] for n in NAMES
                   if n != "ppyoloe_repvgg_alpha")
    # BNAndPad: its pad values from the BN's parameters, expanded and concatenated, 2 per pad
    for name, pads in (("dbb", 6), ("dbb_depthwise", 2), ("neg_shared_intermediate", 4)):
        c = counts[name]
        assert c["concat"] == c["expand"] == 2 * pads and c["sqrt"] == pads, (name, c)
        assert c["shape64"] == pads, (name, c)  # the batch size n of `n, c, h, w = output.shape`
    # depthwise DBB: exclusive avg pools with padding, depthwise 1x1 x2 then grouped 3x3
    assert counts["dbb_depthwise"]["depthwise_conv2d"] == 4
    # `out = 0; out += ...` and `id_out = 0`: `0 + t` is a scale op
    assert counts["rep_zero_init"]["scale"] == 7 and counts["lcnetv3"]["scale"] == 6
    assert counts["dilated_acb"]["slice"] == 4 and counts["neg_dynamic_scale"]["mean"] == 1
    assert counts["aspp_acb"]["bilinear_interp"] == 1
    assert prefix + "depthwise_conv2d" in ops["repvit_repvggdw"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_ideal_counts_are_reachable_from_the_train_programs(exported, fmt):
    """An ideal never asks for more of an op than the train program has (fusing only removes
    ops), and a negative keeps convs."""
    runs = exported(fmt)
    for name, e in MODELS.items():
        train = count_ops(runs[name]["ops"])
        for op, n in e.ideal.items():
            assert n <= train[op], (name, op, n, train[op])
        assert (e.ideal["conv2d"] + e.ideal["depthwise_conv2d"]
                <= train["conv2d"] + train["depthwise_conv2d"]), name
        if e.negative:  # what remains of a negative is there to remain
            assert e.ideal["conv2d"] + e.ideal["depthwise_conv2d"] > 0
