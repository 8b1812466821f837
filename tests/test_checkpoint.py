"""Tests for acnet_convert.read.checkpoint: finding a checkpoint and reading it in either format.

The formats' own readers are tested in test_lod_tensor.py and test_pickle_reader.py."""
from __future__ import annotations

import errno
import hashlib
import importlib.util
import os
import pickle
import socket
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from acnet_convert.read import checkpoint as checkpoint_module
from acnet_convert.read.checkpoint import is_training_state, read_checkpoint
from acnet_convert.common.errors import ConvertError
from acnet_convert.read.pickle_reader import load_pickle
from tests.lod_bytes import lod_file
from tests.test_pickle_reader import raw_unpickle
from tests.test_lod_tensor import write

ROOT = Path(__file__).resolve().parents[1]
HAVE_PADDLE = importlib.util.find_spec("paddle") is not None


W = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) - 7.25


# --------------------------------------------------------------------------------------------
# the CKPT argument


def test_missing_checkpoint(tmp_path):
    p = tmp_path / "nope"
    with pytest.raises(ConvertError, match="does not exist") as e:
        read_checkpoint(p)
    assert str(p) in str(e.value)


def test_checkpoint_is_a_file(tmp_path):
    p = write(tmp_path / "model.pdopt", pickle.dumps({"w": W}))
    with pytest.raises(ConvertError, match=r"is a file, expected a train-form inference model \(PREFIX.json or PREFIX.pdmodel.*a \.pdparams file or its prefix") as e:
        read_checkpoint(p)
    assert str(p) in str(e.value)


def test_empty_checkpoint(tmp_path):
    (tmp_path / "ck").mkdir()
    with pytest.raises(ConvertError, match="is empty") as e:
        read_checkpoint(tmp_path / "ck")
    assert str(tmp_path / "ck") in str(e.value)
    write(tmp_path / "ck" / ".DS_Store", b"junk")  # hidden files are not variables
    (tmp_path / "ck" / "subdir").mkdir()
    with pytest.raises(ConvertError, match="is empty"):
        read_checkpoint(tmp_path / "ck")


def test_two_pdparams(tmp_path):
    write(tmp_path / "a.pdparams", pickle.dumps({"w": W}))
    write(tmp_path / "b.pdparams", pickle.dumps({"w": W}))
    with pytest.raises(ConvertError, match=r"holds 2 checkpoints \(a\.pdparams, b\.pdparams\); which one\? "
                       r"Name its file, e\.g\. .*/a\.pdparams$"):
        read_checkpoint(tmp_path)


def test_mixed_formats(tmp_path):
    write(tmp_path / "model.pdparams", pickle.dumps({"w": W}))
    write(tmp_path / "fc_0.w_0", lod_file(W))
    with pytest.raises(ConvertError, match="two checkpoint formats in one directory"):
        read_checkpoint(tmp_path)


def test_pdparams_siblings_are_not_read(tmp_path):
    write(tmp_path / "model.pdparams", pickle.dumps({"w": W, "fc_0.w_0_velocity_0": W}))
    write(tmp_path / "model.pdopt", b"\x80\x04garbage that is never read")
    write(tmp_path / "model.pdmodel", b"protobuf")
    write(tmp_path / "inference.pdiparams", lod_file(W))  # an OUT/ dir read as a checkpoint
    write(tmp_path / "manifest.json", b"{}")
    ck = read_checkpoint(tmp_path)
    assert ck.format == "pdparams"
    assert ck.files == [tmp_path / "model.pdparams"]
    assert list(ck.tensors) == ["w"] and ck.ignored == ["fc_0.w_0_velocity_0"]
    np.testing.assert_array_equal(ck.tensors["w"], W)


def test_inference_model_dir_is_explained(tmp_path):
    write(tmp_path / "inference.pdiparams", lod_file(W) + lod_file(W))
    write(tmp_path / "inference.pdmodel", b"protobuf")
    with pytest.raises(ConvertError, match="inference model"):
        read_checkpoint(tmp_path)




def test_per_variable_dir_names_bad_file(tmp_path):
    write(tmp_path / "ck" / "fc_0.w_0", lod_file(W))
    write(tmp_path / "ck" / "fc_0.b_0", lod_file(np.ones(3, np.float32))[:-2])
    with pytest.raises(ConvertError) as e:
        read_checkpoint(tmp_path / "ck")
    assert str(tmp_path / "ck" / "fc_0.b_0") in str(e.value) and "truncated" in str(e.value)


def test_per_variable_dir_ignores_training_state_without_parsing(tmp_path):
    ck = tmp_path / "ck"
    write(ck / "res2a.acsquare.conv2d.output.1.b_0", lod_file(np.ones(4, np.float32)))
    write(ck / "conv1_acsquare_weights", lod_file(W))
    write(ck / "conv1_acsquare_weights_velocity_0", b"not a tensor at all")  # never parsed
    write(ck / "@LR_DECAY_COUNTER@", b"\xff")
    write(ck / "learning_rate_0", lod_file(np.array([0.1], np.float32)))
    c = read_checkpoint(ck)
    assert c.format == "per-variable"
    assert sorted(c.tensors) == ["conv1_acsquare_weights", "res2a.acsquare.conv2d.output.1.b_0"]
    assert c.ignored == ["@LR_DECAY_COUNTER@", "conv1_acsquare_weights_velocity_0",
                         "learning_rate_0"]
    assert len(c.files) == 5 and c.path == ck
    # the hash covers every file, ignored ones by name and size, and changes when they do
    h0 = c.sha256
    assert read_checkpoint(ck).sha256 == h0
    (ck / "@LR_DECAY_COUNTER@").write_bytes(b"\xfe")
    assert read_checkpoint(ck).sha256 == h0  # same name, same size
    (ck / "@LR_DECAY_COUNTER@").write_bytes(b"\xfe\xfe")
    h1 = read_checkpoint(ck).sha256
    assert h1 != h0
    (ck / "learning_rate_0").rename(ck / "learning_rate_1")
    assert read_checkpoint(ck).sha256 != h1


def test_sha256_formula(tmp_path):
    write(tmp_path / "a", lod_file(W))
    write(tmp_path / "b_velocity_0", b"xyz")
    h = hashlib.sha256()
    data = (tmp_path / "a").read_bytes()
    h.update(b"a\0" + struct.pack("<Q", len(data)) + data)
    h.update(b"b_velocity_0\0" + struct.pack("<Q", 3))  # training state: name and size only
    assert read_checkpoint(tmp_path).sha256 == h.hexdigest()
    write(tmp_path / "b_velocity_0", b"xyz")  # pickle dir: hash over the .pdparams only
    d = tmp_path / "p"
    raw = pickle.dumps({"w": W})
    write(d / "m.pdparams", raw)
    write(d / "m.pdopt", b"anything")
    h = hashlib.sha256(b"m.pdparams\0" + struct.pack("<Q", len(raw)) + raw)
    assert read_checkpoint(d).sha256 == h.hexdigest()


def _peak(fn):
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_about_one_copy(tmp_path):
    big = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)  # 4 MiB
    pv = tmp_path / "pv"
    write(pv / "fc_0.w_0", lod_file(big))
    write(pv / "fc_0.w_0_velocity_0", lod_file(big))  # hashed in chunks, not parsed
    ck, peak = _peak(lambda: read_checkpoint(pv))
    np.testing.assert_array_equal(ck.tensors["fc_0.w_0"], big)
    assert peak < big.nbytes * 1.1 + 2**20, peak
    del ck
    # pickles: arrays stay backed by the bytes read from the file (protocol 2: a transient of
    # a few times the tensor being decoded, never a second copy of everything)
    parts = {f"w{i}": big[: 320] + i for i in range(6)}  # 6 x 1.25 MiB
    total, largest = sum(a.nbytes for a in parts.values()), parts["w0"].nbytes
    for proto in (2, 3, 4, 5):
        pk = tmp_path / f"pk{proto}"
        write(pk / "m.pdparams", pickle.dumps(parts, protocol=proto))
        ck, peak = _peak(lambda: read_checkpoint(pk))
        _assert_same(ck.tensors, parts)
        limit = total * 1.05 + (5 * largest if proto == 2 else 0) + 2**20
        assert peak < limit, (proto, peak / total)
        del ck


@pytest.mark.parametrize("name, state", [
    ("fc_0.w_0", False), ("conv1_acsquare_weights", False), ("bn_conv1_acsquare_mean", False),
    ("bn_conv1_acsquare_variance", False), ("res2a.acsquare.conv2d.output.1.b_0", False),
    ("fc_0.w_0_velocity_0", True), ("x_moment1_0", True), ("x_moment2_12", True),
    ("x_beta1_pow_acc_0", True), ("x_beta2_pow_acc_3", True), ("learning_rate_0", True),
    ("@LR_DECAY_COUNTER@", True), ("fc_0.w_0@GRAD", True), ("x_mean_square_0", True),
    ("learning_rate", False), ("my_velocity", False),
])
def test_is_training_state(name, state):
    assert is_training_state(name) is state



def test_does_not_import_paddle():
    code = ("import sys, time; t = time.perf_counter(); import acnet_convert.read.checkpoint; "
            "import acnet_convert.read.lod_tensor, acnet_convert.read.pickle_reader; "
            "assert 'paddle' not in sys.modules, 'paddle imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --------------------------------------------------------------------------------------------
# a checkpoint named by its file or prefix (issue 14, item 7)


def _training_folder(root: Path) -> Path:
    """A folder as Paddle's training tools leave it: several checkpoints, each with its
    optimizer and scheduler state beside it."""
    for i, stem in enumerate(("best_model", "epoch_1", "epoch_2", "latest")):
        write(root / f"{stem}.pdparams", pickle.dumps({"w": W + i, "w_velocity_0": W}))
        write(root / f"{stem}.pdopt", b"optimizer state, never read")
        write(root / f"{stem}.pdstates", b"scheduler state, never read")
    write(root / "train.log", b"epoch 1 ...")
    return root


def test_checkpoint_named_by_its_file_or_prefix(tmp_path):
    root = _training_folder(tmp_path / "output" / "ResNet50_ACNet")
    raw = (root / "epoch_1.pdparams").read_bytes()
    want = hashlib.sha256(b"epoch_1.pdparams\0" + struct.pack("<Q", len(raw)) + raw).hexdigest()
    for named in (root / "epoch_1.pdparams", root / "epoch_1", str(root / "epoch_1")):
        ck = read_checkpoint(named)
        assert ck.format == "pdparams" and ck.path == root / "epoch_1.pdparams"
        assert ck.files == [root / "epoch_1.pdparams"] and ck.sha256 == want
        assert list(ck.tensors) == ["w"] and ck.ignored == ["w_velocity_0"]
        np.testing.assert_array_equal(ck.tensors["w"], W + 1)
    # the same file alone in a folder is the same checkpoint, by its hash too
    alone = write(tmp_path / "alone" / "epoch_1.pdparams", raw)
    assert read_checkpoint(alone.parent).sha256 == want
    # a link the user names is theirs to follow, wherever it points
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "mine.pdparams").symlink_to(root / "epoch_1.pdparams")
    assert read_checkpoint(tmp_path / "mine" / "mine").sha256 == hashlib.sha256(
        b"mine.pdparams\0" + struct.pack("<Q", len(raw)) + raw).hexdigest()


def test_folder_of_several_checkpoints_asks_which(tmp_path):
    root = _training_folder(tmp_path / "out")
    with pytest.raises(ConvertError) as e:
        read_checkpoint(root)
    assert str(e.value) == (f"{root} holds 4 checkpoints (best_model.pdparams, epoch_1.pdparams, epoch_2.pdparams, "
                            f"latest.pdparams); which one? Name its file, e.g. {root}/best_model.pdparams")
    for i in range(3, 40):  # a long list is cut; names are escaped
        write(root / f"epoch_{i}.pdparams", b"")
    write(root / "x\x1b[2J\nerror: all good.pdparams", b"")
    with pytest.raises(ConvertError) as e:
        read_checkpoint(root)
    msg = str(e.value)
    assert "holds 42 checkpoints (" in msg and ", ... (42 in all)); which one?" in msg and msg.count(".pdparams") == 9
    assert "\n" not in msg and "\x1b" not in msg


def test_optimizer_state_without_its_params_is_explained(tmp_path):
    write(tmp_path / "ck" / "best_model.pdstates", b"x")
    with pytest.raises(ConvertError, match=r"holds best_model\.pdstates but no \.pdparams file"):
        read_checkpoint(tmp_path / "ck")
    with pytest.raises(ConvertError, match="does not exist"):
        read_checkpoint(tmp_path / "ck" / "best_model")


# --------------------------------------------------------------------------------------------
# hostile folders (issue 12, rows 6, 8, 10, 11)


def _sparse(path: Path, head: bytes, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


def _read_in_child(ckpt: Path, setup: str = "", timeout: float = 60) -> str:
    """read_checkpoint(ckpt) in a child process (a regression hangs or reads a terabyte, so
    the child is killed after `timeout`); returns what it printed: the error or 'ok SHA256'."""
    code = "import sys, time\nfrom acnet_convert.read import checkpoint\n" + textwrap.dedent(setup) + textwrap.dedent("""
        from acnet_convert.common.errors import ConvertError
        t = time.perf_counter()
        try:
            ck = checkpoint.read_checkpoint(sys.argv[1])
            print("ok", ck.sha256, sorted(ck.tensors))
        except ConvertError as e:
            print(e)
        print(f"{time.perf_counter() - t:.2f}")
        """)
    r = subprocess.run([sys.executable, "-c", code, str(ckpt)], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-2000:]
    out, took = r.stdout.rstrip("\n").rsplit("\n", 1)
    assert float(took) < 2, (out, took)
    return out


def test_training_state_is_hashed_by_name_and_size(tmp_path):
    # the old reader hashed every byte of it: 400 GB took over a minute
    ck = tmp_path / "ck"
    write(ck / "fc_0.w_0", lod_file(W))
    _sparse(ck / "fc_0.w_0_velocity_0", b"", 1 << 40)
    data = (ck / "fc_0.w_0").read_bytes()
    h = hashlib.sha256(b"fc_0.w_0\0" + struct.pack("<Q", len(data)) + data)
    h.update(b"fc_0.w_0_velocity_0\0" + struct.pack("<Q", 1 << 40))
    assert _read_in_child(ck) == f"ok {h.hexdigest()} ['fc_0.w_0']"


def test_huge_tensor_file_with_a_bad_header_is_refused_before_reading(tmp_path):
    # the old reader read it whole first: 6 GB cost 30 s and 6.3 GB; 1 TB, a MemoryError
    ck = tmp_path / "ck"
    victim = _sparse(ck / "fc_0.w_0", b"\x07" + lod_file(W)[1:], 1 << 40)
    assert _read_in_child(ck) == f"{victim}: not a valid Paddle tensor file (its LoDTensor version field is not 0)"


_SWAP_FOR_FIFO = """
import os
listed = checkpoint._list_dir
def racing(folder):  # the file becomes a FIFO between listing and opening
    files = listed(folder)
    for f in files:
        if f.name == sys.argv[2]:
            os.unlink(f)
            os.mkfifo(f)
    return files
checkpoint._list_dir = racing
"""


@pytest.mark.parametrize("victim", ["fc_0.w_0", "model.pdparams"])
def test_file_swapped_for_a_fifo_is_refused_not_waited_for(tmp_path, victim):
    # the old reader opened it and waited forever for a writer
    ck = tmp_path / "ck"
    write(ck / victim, lod_file(W) if victim == "fc_0.w_0" else pickle.dumps({"w": W}))
    code = _SWAP_FOR_FIFO.replace("sys.argv[2]", repr(victim))
    assert _read_in_child(ck, code, timeout=30) == f"{ck / victim} is a FIFO, expected a regular file"


def test_special_files_are_refused_by_name(tmp_path):
    ck = tmp_path / "ck"
    write(ck / "fc_0.w_0", lod_file(W))
    os.mkfifo(ck / "fc_0.b_0")
    with pytest.raises(ConvertError, match=f"^{ck / 'fc_0.b_0'} is a FIFO, expected a regular file$"):
        read_checkpoint(ck)
    os.unlink(ck / "fc_0.b_0")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(ck / "fc_0.b_0"))
        with pytest.raises(ConvertError, match=f"^cannot read {ck / 'fc_0.b_0'}: "):
            read_checkpoint(ck)


def test_links_out_of_the_checkpoint_are_refused(tmp_path):
    secret = write(tmp_path / "secret", b"TOPSECRET\n")
    ck = tmp_path / "ck"
    write(ck / "fc_0.w_0", lod_file(W))
    (ck / "fc_0.b_0").symlink_to(secret)
    with pytest.raises(ConvertError) as e:
        read_checkpoint(ck)
    assert str(e.value) == f"{ck / 'fc_0.b_0'} is a symbolic link to a file outside {ck}; refusing to follow it"
    (ck / "fc_0.b_0").unlink()
    (ck / "fc_0.w_0_velocity_0").symlink_to(secret)  # not even its size is looked at
    with pytest.raises(ConvertError, match="fc_0.w_0_velocity_0 is a symbolic link to a file outside"):
        read_checkpoint(ck)
    (ck / "fc_0.w_0_velocity_0").unlink()
    (ck / "also_w").symlink_to(ck / "fc_0.w_0")  # inside: fine
    assert sorted(read_checkpoint(ck).tensors) == ["also_w", "fc_0.w_0"]
    pk = tmp_path / "pk"
    pk.mkdir()
    (pk / "model.pdparams").symlink_to(write(tmp_path / "elsewhere.pdparams", pickle.dumps({"w": W})))
    with pytest.raises(ConvertError, match="model.pdparams is a symbolic link to a file outside"):
        read_checkpoint(pk)


def test_stray_file_content_is_never_echoed(tmp_path):
    ck = tmp_path / "ck"
    write(ck / "fc_0.w_0", b"TOPSECRET password=hunter2\n")
    with pytest.raises(ConvertError) as e:
        read_checkpoint(ck)
    assert "TOPS" not in str(e.value) and str(struct.unpack("<I", b"TOPS")[0]) not in str(e.value)
    pk = write(tmp_path / "pk" / "model.pdparams", b"I1234TOPSECRET\n.")
    with pytest.raises(ConvertError) as e:
        read_checkpoint(pk)
    assert "TOPSECRET" not in str(e.value)


def test_file_names_are_escaped(tmp_path):
    ck = tmp_path / "ck"
    write(ck / "fc_0.w_0", lod_file(W))
    write(ck / "x\nerror: all good, exit 0\x1b[2J", b"junk")
    with pytest.raises(ConvertError) as e:
        read_checkpoint(ck)
    assert str(e.value) == (f"{ck}/x\\nerror: all good, exit 0\\x1b[2J: not a valid Paddle tensor file "
                            "(its LoDTensor version field is not 0)")


@pytest.mark.parametrize("error, why", [
    (OSError(errno.EIO, os.strerror(errno.EIO)), "cannot read {f}: Input/output error"),
    (MemoryError(), "{f}: too large to load"),
    (RecursionError("maximum recursion depth exceeded"), "{f}: cannot be read (RecursionError)"),
    (OverflowError("Python int too large to convert to C ssize_t"), "{f}: cannot be read (OverflowError)"),
])
def test_errors_from_reading_become_one_line_naming_the_file(tmp_path, monkeypatch, error, why):
    ck = tmp_path / "ck"
    write(ck / "fc_0.w_0", lod_file(W))

    def fail(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(checkpoint_module, "read_lod_tensor", fail)
    with pytest.raises(ConvertError) as e:
        read_checkpoint(ck)
    assert str(e.value) == why.format(f=ck / "fc_0.w_0")
    write(ck / "m.pdparams", pickle.dumps({"w": W}))
    monkeypatch.setattr(checkpoint_module, "read_pickle", fail)
    with pytest.raises(ConvertError) as e:
        read_checkpoint(ck / "m.pdparams")
    assert str(e.value) == why.format(f=ck / "m.pdparams")


# --------------------------------------------------------------------------------------------
# round trips against files written by Paddle itself

_GEN_STATIC = r"""
import os, sys
import numpy as np
import paddle
paddle.enable_static()
out = sys.argv[1]
main, startup = paddle.static.Program(), paddle.static.Program()
extra = {
    "fp64_1d": np.linspace(-1, 1, 7),
    "int64_2d": np.arange(-3, 3, dtype="int64").reshape(2, 3),
    "fp32_4d": (np.arange(2 * 3 * 2 * 2, dtype="float32").reshape(2, 3, 2, 2) - 5.5),
    "int32_1d": np.array([1, 2, 3], dtype="int32"),
    "fp16_1d": np.array([1.5, -2.0], dtype="float16"),
    "scalar_0d": np.array(3.25, dtype="float32"),
    "@LR_DECAY_COUNTER@": np.array([7], dtype="int64"),
}
with paddle.static.program_guard(main, startup):
    x = paddle.static.data("image", [None, 3, 8, 8], "float32")
    c = paddle.static.nn.conv2d(x, 4, 3, param_attr=paddle.ParamAttr(name="conv1_acsquare_weights"),
                                bias_attr=False)
    f = paddle.static.nn.fc(paddle.flatten(c, 1), 5)
    loss = paddle.mean(f)
    paddle.optimizer.Momentum(0.1, momentum=0.9).minimize(loss)
    for n, a in extra.items():
        paddle.static.create_global_var(shape=list(a.shape), value=0, dtype=str(a.dtype),
                                        persistable=True, name=n)
exe = paddle.static.Executor(paddle.CPUPlace())
exe.run(startup)
scope = paddle.static.global_scope()
for n, a in extra.items():
    t = scope.find_var(n).get_tensor()
    t.set(a, paddle.CPUPlace())
    if n == "fp64_1d":
        t.set_lod([[0, 3, 7]])
exe.run(main, feed={"image": np.ones((2, 3, 8, 8), "float32")}, fetch_list=[loss])  # a step
pers = [v for v in main.list_vars() if v.persistable and v.name not in ("feed", "fetch")]
paddle.static.save_vars(exe, os.path.join(out, "pervar"), main, vars=pers)
np.savez(os.path.join(out, "pervar_expected.npz"),
         **{v.name: np.array(scope.find_var(v.name).get_tensor()) for v in pers})
paddle.static.save(main, os.path.join(out, "static", "model"))
params = [v for v in pers if isinstance(v, paddle.base.framework.Parameter)]
np.savez(os.path.join(out, "static_expected.npz"),
         **{v.name: np.array(scope.find_var(v.name).get_tensor()) for v in params})
paddle.save({"n": main.state_dict()}, os.path.join(out, "nested_static.pdparams"))
"""

_GEN_DYGRAPH = r"""
import os, sys
import numpy as np
import paddle
out = sys.argv[1]
paddle.seed(0)
class M(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 4, 3, weight_attr=paddle.ParamAttr(name="conv1_weights"))
        self.bn = paddle.nn.BatchNorm2D(4)
        self.fc = paddle.nn.Linear(4, 2)
    def forward(self, x):
        return self.fc(paddle.flatten(self.bn(self.conv(x)).mean([2, 3]), 1))
m = M()
opt = paddle.optimizer.Adam(parameters=m.parameters())
m(paddle.randn([2, 3, 5, 5])).mean().backward()
opt.step()
sd = m.state_dict()
os.makedirs(os.path.join(out, "dygraph"))
paddle.save(sd, os.path.join(out, "dygraph", "model.pdparams"))
paddle.save(opt.state_dict(), os.path.join(out, "dygraph", "model.pdopt"))
os.makedirs(os.path.join(out, "dygraph_p2"))
paddle.save(sd, os.path.join(out, "dygraph_p2", "model.pdparams"), protocol=2)
merged = dict(sd)
merged.update({k: v for k, v in opt.state_dict().items() if isinstance(v, paddle.Tensor)})
os.makedirs(os.path.join(out, "merged"))
paddle.save(merged, os.path.join(out, "merged", "all.pdparams"))
np.savez(os.path.join(out, "dygraph_expected.npz"), **{v.name: v.numpy() for v in sd.values()})
np.savez(os.path.join(out, "merged_expected.npz"),
         **{(v.name if k in sd else k): v.numpy() for k, v in merged.items()})
t = paddle.to_tensor(np.arange(6, dtype="float32").reshape(2, 3))
paddle.save({"a": t, "n": {"b": t}, "l": [t]}, os.path.join(out, "nested_dygraph.pdparams"))
"""


@pytest.fixture(scope="module")
def paddle_files(tmp_path_factory):
    if not HAVE_PADDLE:
        pytest.skip("paddle is not installed")
    out = tmp_path_factory.mktemp("paddle")
    gens = []
    for name, code, extra_env in (("static", _GEN_STATIC, {"FLAGS_enable_pir_api": "0"}),
                                  ("dygraph", _GEN_DYGRAPH, {})):
        script = out / f"gen_{name}.py"
        script.write_text(textwrap.dedent(code))
        env = dict(os.environ, GLOG_minloglevel="2", **extra_env)
        gens.append(subprocess.Popen([sys.executable, str(script), str(out)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    for g in gens:
        log = g.communicate(timeout=300)[0]
        assert g.returncode == 0, log.decode(errors="replace")[-3000:]
    return out


def _expected(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _assert_same(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)
        assert got[k].flags.writeable and got[k].flags.c_contiguous


def test_paddle_save_vars_round_trip(paddle_files):
    ck = read_checkpoint(paddle_files / "pervar")
    want = _expected(paddle_files / "pervar_expected.npz")
    assert ck.format == "per-variable"
    ignored = sorted(k for k in want if is_training_state(k))
    assert ck.ignored == ignored
    assert "@LR_DECAY_COUNTER@" in ignored and "learning_rate_0" in ignored
    assert "conv1_acsquare_weights_velocity_0" in ignored and "fc_0.w_0_velocity_0" in ignored
    _assert_same(ck.tensors, {k: v for k, v in want.items() if k not in ignored})
    assert {"fp64_1d", "int64_2d", "fp32_4d", "scalar_0d", "conv1_acsquare_weights"} <= set(ck.tensors)
    assert ck.tensors["fp64_1d"].dtype == np.float64 and ck.tensors["int64_2d"].dtype == np.int64
    assert len(ck.files) == len(want)


def test_paddle_static_save_round_trip(paddle_files):
    ck = read_checkpoint(paddle_files / "static")  # model.pdparams + .pdopt + .pdmodel
    assert ck.format == "pdparams" and ck.ignored == []
    _assert_same(ck.tensors, _expected(paddle_files / "static_expected.npz"))


@pytest.mark.parametrize("sub", ["dygraph", "dygraph_p2"])
def test_paddle_save_state_dict_round_trip(paddle_files, sub):
    ck = read_checkpoint(paddle_files / sub)
    assert ck.format == "pdparams" and ck.ignored == []
    want = _expected(paddle_files / "dygraph_expected.npz")
    assert "conv1_weights" in want  # renamed from the structured name "conv.weight"
    _assert_same(ck.tensors, want)


def test_paddle_save_with_optimizer_state(paddle_files):
    ck = read_checkpoint(paddle_files / "merged")
    want = _expected(paddle_files / "merged_expected.npz")
    ignored = sorted(k for k in want if is_training_state(k))
    assert ck.ignored == ignored and any(k.endswith("_moment1_0") for k in ignored)
    assert any(k.endswith("_beta2_pow_acc_0") for k in ignored)
    _assert_same(ck.tensors, {k: v for k, v in want.items() if k not in ignored})


def _deep_equal(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return (type(b) is np.ndarray and a.dtype == b.dtype and a.shape == b.shape
                and np.array_equal(a, b))
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_deep_equal, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_deep_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def test_restricted_unpickler_matches_pickle_on_paddle_files(paddle_files):
    files = sorted(paddle_files.rglob("*.pdparams")) + sorted(paddle_files.rglob("*.pdopt"))
    assert len(files) >= 7
    for f in files:
        with open(f, "rb") as fh:
            assert _deep_equal(pickle.load(fh, encoding="latin1"), raw_unpickle(f)), f
    # nested objects are not flat checkpoints: refused with a clear message
    with pytest.raises(ConvertError, match="tensor 'n' is a dict"):
        load_pickle(paddle_files / "nested_static.pdparams")

