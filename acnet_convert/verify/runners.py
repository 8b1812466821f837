"""The runtimes `verify` runs a model in, each as a `Runner`: batch [N, C, H, W] float32 -> the
model's outputs, a list of numpy arrays.

* `paddle_predictor`: a Paddle inference model through `paddle.inference` (`Config` +
  `create_predictor`), as users deploy it; `as_written=True` runs the program as written,
  which is how the train-form model runs: graph passes off, and also the BatchNorm-folding
  passes that Paddle 3.3 applies with oneDNN or CUDA even when graph passes are off (measured:
  without deleting them, all 87 BatchNorms of ResNet-50-ACNet's train graph are folded).
* `train_runner`: the train-form model of a `Source`: the user's own program file untouched,
  or, for a checkpoint, the program `open_source` built from it, saved to a temporary folder.
* `onnx_session`: an ONNX file under ONNX Runtime; a static batch dimension is fed in steps, a
  float16 input is fed float16, and an input whose fixed size differs from the images is refused.

Thread counts follow the CPUs this process may use (at most MAX_THREADS); ONNX Runtime's
threads do not spin between runs, so they leave the cores to Paddle.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from acnet_convert.verify.device import Device
from acnet_convert.common.errors import ConvertError
from acnet_convert.common.phase import ORT, PADDLE, phase
from acnet_convert.common.quiet import import_paddle, is_verbose, silenced
from acnet_convert.common.protobuf_fields import fields
from acnet_convert.common.regular_file import open_regular
from acnet_convert.common.text import one_line, printable

MAX_THREADS = 8
# A runtime is fed at most this many pixels per call (2 images at 224, 32 at 64), whatever the
# batch: activations, oneDNN scratchpads and ONNX Runtime's arena then stay small, and on a 2-core
# machine it is also faster (measured on ResNet-50-ACNet's train graph, 16 images at 224: batch 8
# 9.6 s and +560 MB, batch 2 7.9 s and +390 MB).
CHUNK_PIXELS = 1 << 17


def cpu_threads() -> int:
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        available = os.cpu_count() or 1
    return max(1, min(available, MAX_THREADS))


class SizeRefused(ConvertError):
    """A model fixed at a size that none of verify's inputs has."""


@dataclass
class Runner:
    name: str  # the graph's name in the report: "train", "paddle-deploy", "paddle-legacy", "onnx"
    path: Path
    run: Callable[[np.ndarray], list[np.ndarray]]
    fp16: bool = False
    notes: list[str] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)  # ONNX Runtime's, in order
    close: Callable[[], None] = lambda: None
    runtime: str = PADDLE  # the native library that runs it (`common.phase`)
    accepts: Callable[[tuple[int, ...]], bool] = lambda _shape: True  # can it run a batch of [C, H, W]?

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        step = max(1, CHUNK_PIXELS // max(1, int(np.prod(batch.shape[2:]))))
        return self._chunk(batch) if len(batch) <= step else in_steps(self._chunk, batch, step)

    def _chunk(self, chunk: np.ndarray) -> list[np.ndarray]:
        # each chunk is a step of its own: a run that goes silent longer than one chunk takes is hung
        with phase("running", self.path, self.runtime):
            return self.run(chunk)


def in_steps(run: Callable[[np.ndarray], list[np.ndarray]], batch: np.ndarray, step: int) -> list[np.ndarray]:
    """`run` over `batch` in slices of `step` samples, its outputs joined again."""
    parts = [run(batch[i : i + step]) for i in range(0, len(batch), step)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


# Paddle 3.3 applies these passes whenever oneDNN (or CUDA) is on, even with
# switch_ir_optim(False): they fold every BatchNorm into the conv before it, so the "train
# graph" would silently become Paddle's own fused model. Deleted for a program run as written.
BN_FOLDING_PASSES = (
    "conv2d_bn_onednn_fuse_pass", "conv2d_bias_bn_onednn_fuse_pass", "conv2d_bn_fuse_pass",
    "conv2d_bias_bn_fuse_pass", "conv2d_transpose_bn_fuse_pass", "conv2d_transpose_bias_bn_fuse_pass",
    "conv_bn_fuse_pass", "conv_eltwiseadd_bn_fuse_pass", "depthwise_conv_bn_fuse_pass",
    "conv_transpose_bn_fuse_pass", "conv_transpose_eltwiseadd_bn_fuse_pass",
)


# Passes that crash Paddle 3.3.1 (SIGSEGV: no Python exception to catch) on programs holding an
# op: conv_activation_mkldnn_fuse_pass dies in FusedConv2dOp::Build on conv + leaky_relu, for
# the user's own model as much as for its deploy model. Deleted, with a note, when the op is there
# (the log calls it conv_activation_mkldnn_fuse_pass; delete_pass knows it by its onednn name).
CRASHING_PASSES = {"leaky_relu": ("conv_activation_onednn_fuse_pass",)}


# oneDNN's batch_norm kernel (Paddle 3.3.1) dereferences an absent scale or bias
# (`BatchNorm2D(C, weight_attr=False, bias_attr=False)`): SIGSEGV. `op_names` adds this marker for
# such a program, which then runs with Paddle's plain CPU kernels.
BN_WITHOUT_AFFINE = "batch_norm without scale or bias"


def op_names(ops: Any) -> frozenset[str]:
    """The names of a loaded PIR program's ops, and BN_WITHOUT_AFFINE when a batch_norm lacks its
    scale or bias operand."""
    names = set()
    for op in ops:
        name = op.name()
        names.add(name)
        if name.split(".", 1)[-1].rstrip("_") == "batch_norm" and any(
                not op.operand_source(i).initialized() for i in (3, 4) if i < op.num_operands()):
            names.add(BN_WITHOUT_AFFINE)
    return frozenset(names)


def passes_to_avoid(ops: Any) -> tuple[str, ...]:
    """The CRASHING_PASSES for a program with these op names (`pd_op.leaky_relu_` or `leaky_relu`)."""
    short = {str(op).split(".", 1)[-1].rstrip("_") for op in ops}
    return tuple(p for op, passes in CRASHING_PASSES.items() if op in short for p in passes)


def predictor_config(program: Path, params: Path, device: Device, *, as_written: bool, onednn: bool = True,
                     avoid: tuple[str, ...] = ()) -> Any:
    """The paddle.inference Config for `program`: as users deploy it (graph passes on), or
    `as_written` (graph passes off and no BatchNorm folding: every op computed as the program
    says). The passes in `avoid` are deleted."""
    from paddle import inference

    config = inference.Config(str(program), str(params))
    config.disable_glog_info()
    config.switch_ir_optim(not as_written)
    for name in (BN_FOLDING_PASSES if as_written else ()) + tuple(avoid):
        config.delete_pass(name)
    if device.paddle_gpu:
        config.enable_use_gpu(256, 0)
    else:
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(cpu_threads())
        if onednn:
            config.enable_onednn()
        else:
            config.disable_onednn()
    return config


def _predictor(program: Path, params: Path, device: Device, as_written: bool, onednn: bool,
               avoid: tuple[str, ...] = ()) -> Any:
    from paddle import inference

    config = predictor_config(program, params, device, as_written=as_written, onednn=onednn, avoid=avoid)
    with silenced():
        return inference.create_predictor(config)


def paddle_predictor(name: str, program: Path, params: Path, device: Device, *, as_written: bool = False,
                     ops: Any = ()) -> Runner:
    """`program` + `params` under paddle.inference (`predictor_config`). On the CPU it runs with oneDNN, Paddle's
    default; when oneDNN cannot run the program (Paddle 3.3's PIR interpolate ops,
    PaddlePaddle/Paddle#79749) the first batch fails, and the model is run without it, with a note."""
    import_paddle()
    avoid = passes_to_avoid(ops)
    onednn = BN_WITHOUT_AFFINE not in set(ops)
    try:
        with phase("loading into paddle.inference", program, PADDLE):
            predictor = _predictor(program, params, device, as_written, onednn=onednn, avoid=avoid)
    except Exception as err:  # noqa: BLE001 - Paddle raises many types for a bad model
        raise ConvertError(f"{printable(program)} cannot be loaded by paddle.inference: {one_line(err)}") from None
    inputs = predictor.get_input_names()
    if len(inputs) != 1:
        raise ConvertError(f"{printable(program)} has {len(inputs)} inputs; verify feeds models with one input")
    state = {"predictor": predictor, "proven": device.paddle_gpu or not onednn}
    runner = Runner(name, Path(program), lambda batch: [])
    if not onednn and not device.paddle_gpu:
        runner.notes.append(f"{name}: oneDNN crashes on a {BN_WITHOUT_AFFINE} (Paddle 3.3): ran it with Paddle's "
                            "plain CPU kernels; deploy it with oneDNN off")
    if avoid:
        runner.notes.append(f"{name}: Paddle's {', '.join(avoid)} crashes on this model's ops (also on the "
                            "source model, in Paddle 3.3): ran without it; deploy with it deleted or oneDNN off")

    def forward(p: Any, batch: np.ndarray) -> list[np.ndarray]:
        image = p.get_input_handle(p.get_input_names()[0])
        with silenced():
            image.reshape(list(batch.shape))
            image.copy_from_cpu(np.ascontiguousarray(batch))
            p.run()
            return [p.get_output_handle(n).copy_to_cpu() for n in p.get_output_names()]

    def run(batch: np.ndarray) -> list[np.ndarray]:
        if state["proven"]:
            return forward(state["predictor"], batch)
        try:
            out = forward(state["predictor"], batch)
        except Exception as err:  # noqa: BLE001
            state["predictor"] = _predictor(program, params, device, as_written, onednn=False, avoid=avoid)
            runner.notes.append(f"{name}: oneDNN cannot run {printable(Path(program).name)} ({one_line(err, 120)}); "
                                "ran it with Paddle's plain CPU kernels")
            try:
                out = forward(state["predictor"], batch)
            except Exception as err2:  # noqa: BLE001
                raise ConvertError(f"paddle.inference cannot run {printable(program)}: {one_line(err2)}") from None
        state["proven"] = True
        return out

    def close() -> None:
        state.pop("predictor", None)

    runner.run, runner.close = run, close
    return runner


def train_files(source: Any, tmp: Path) -> tuple[Path, Path]:
    """The program and params files of the train-form model of `source` (a `source.Source`):
    the user's own files, untouched, or for a checkpoint the program `open_source` built from
    it, saved into `tmp`."""
    program = source.program
    if source.kind == "program":
        return Path(program.path), Path(program.params)
    from acnet_convert.write.pir import save_program

    with silenced():
        path = save_program(program, tmp / "train")
    return path, tmp / "train.pdiparams"


def executor_runner(name: str, program: Path, params: Path, device: Device) -> Runner:
    """`program` + `params` under Paddle's static Executor: every op as written, no graph
    passes. For a program paddle.inference cannot load: Paddle 3.3's inference loader refuses
    a PIR `pd_op.if` ("The size 0 of regions must be equal to 2"), which the Executor runs."""
    from acnet_convert.read.program import LEGACY, PROGRAM_SUFFIXES, static_mode

    legacy = PROGRAM_SUFFIXES.get(Path(program).suffix) == LEGACY
    with static_mode() as paddle:
        scope = paddle.static.Scope()
        executor = paddle.static.Executor(paddle.CUDAPlace(0) if device.paddle_gpu else paddle.CPUPlace())
        mode = paddle.pir_utils.OldIrGuard() if legacy else contextlib.nullcontext()
        try:
            with mode, paddle.static.scope_guard(scope), silenced():
                loaded, feeds, fetches = paddle.static.load_inference_model(str(Path(program).with_suffix("")), executor)
        except Exception as err:  # noqa: BLE001 - Paddle raises many types for a bad model
            raise ConvertError(f"{printable(program)} cannot be loaded by Paddle's Executor: {one_line(err)}") from None
    if len(feeds) != 1:
        raise ConvertError(f"{printable(program)} has {len(feeds)} inputs; verify feeds models with one input")

    def run(batch: np.ndarray) -> list[np.ndarray]:
        with static_mode(), (paddle.pir_utils.OldIrGuard() if legacy else contextlib.nullcontext()), \
                paddle.static.scope_guard(scope), silenced():
            try:
                out = executor.run(loaded, feed={feeds[0]: np.ascontiguousarray(batch)}, fetch_list=fetches, scope=scope)
            except Exception as err:  # noqa: BLE001
                raise ConvertError(f"Paddle's Executor cannot run {printable(program)}: {one_line(err)}") from None
        return [np.asarray(o) for o in out]

    return Runner(name, Path(program), run, close=lambda: scope.erase(scope.local_var_names()))


def train_runner(files: tuple[Path, Path], device: Device, shown: Path, ops: Any = ()) -> Runner:
    """The train-form model (BN in inference mode, every branch as written) under
    paddle.inference with its graph passes off; when paddle.inference cannot load it, under
    the static Executor, with a note."""
    try:
        runner = paddle_predictor("train", files[0], files[1], device, as_written=True, ops=ops)
    except ConvertError as err:
        runner = executor_runner("train", files[0], files[1], device)
        why = str(err).split(": ", 1)[-1]
        runner.notes.append(f"train: paddle.inference cannot load {printable(Path(shown).name)} ({one_line(why, 120)}); "
                            "ran it with Paddle's static Executor instead (every op as written)")
    runner.path = Path(shown)
    return runner


def release_memory() -> None:
    """Give freed memory back to the system between phases: glibc keeps freed blocks of many
    sizes in its heap (measured: ~180 MB after the source is closed, on ResNet-50)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _onnx_fp16(path: Path) -> bool:
    """Whether the model computes in float16: any float16 initializer. Read from the file's
    protobuf fields in place (ModelProto.graph = 7, GraphProto.initializer = 5,
    TensorProto.data_type = 2): onnx.load would hold a second copy of every weight, ~2x the
    file at once, more than ONNX Runtime's session itself."""
    import mmap

    fp16 = 10  # onnx.TensorProto.FLOAT16
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            for number, wire, start, end in fields(data, 0, len(data)):
                if number != 7 or wire != 2:
                    continue
                for field_number, field_wire, t_start, t_end in fields(data, start, end):
                    if field_number != 5 or field_wire != 2:
                        continue
                    for n, w, value, _ in fields(data, t_start, t_end):
                        if n == 2 and w == 0:
                            if value == fp16:
                                return True
                            break
    except (OSError, ValueError, IndexError):  # the session reports a bad file in its own words
        return False
    return False


def onnx_session(path: Path, device: Device, image_shape: Any = None, name: str = "onnx",
                 as_written: bool = False) -> Runner:
    """`path` under ONNX Runtime with the providers `device` chose. `image_shape` (C, H, W), or a
    list of them, is what verify will feed: a model whose fixed input size takes none of them is
    refused; batches of another size are then not given to it (`Runner.accepts`). `as_written`:
    ONNX Runtime's graph optimisations off (no BatchNorm folded into a Conv): every node computed
    as the model says."""
    path = Path(path)
    if not os.path.lexists(path):
        raise ConvertError(f"--onnx {printable(path)} does not exist")
    open_regular(path, follow=True).close()  # a FIFO would block ONNX Runtime's open forever
    with phase("importing", "ONNX Runtime", ORT), silenced():
        import onnxruntime as ort
    with silenced():
        options = ort.SessionOptions()
        # a node that fails at run time is our one line (the error's own message), not ORT's log
        options.log_severity_level = 3 if is_verbose() else 4
        options.intra_op_num_threads = cpu_threads()
        # Paddle runs between ORT's batches: ORT's spinning threads would steal its cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if as_written:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            with phase("loading", path, ORT):
                session = ort.InferenceSession(str(path), sess_options=options, providers=list(device.ort_providers))
        except Exception as err:  # noqa: BLE001 - ORT raises its own exception types
            raise ConvertError(f"{printable(path)} is corrupt or not a valid ONNX model: {one_line(err)}") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ConvertError(f"{printable(path)} has {len(inputs)} inputs; verify feeds models with one input")
    image = inputs[0]
    dims = list(image.shape)
    fixed = [d if isinstance(d, int) and d > 0 else None for d in dims[1:]] if len(dims) == 4 else []

    def accepts(shape: tuple[int, ...]) -> bool:
        return all(f is None or f == want for f, want in zip(fixed, shape))

    shapes = [image_shape] if image_shape is not None and isinstance(image_shape[0], int) else list(image_shape or [])
    if shapes and not any(accepts(tuple(s)) for s in shapes):
        shown = ", ".join("N" if not isinstance(d, int) or d < 1 else str(d) for d in dims)
        fed = " or ".join(f"[N, {', '.join(map(str, s))}]" for s in shapes)
        raise SizeRefused(f"{printable(path)} takes input [{shown}]; verify feeds {fed}")
    dtype = np.float16 if image.type == "tensor(float16)" else np.float32
    outputs = [o.name for o in session.get_outputs()]
    # export-onnx --static-batch fixes the batch dimension (to 1): feed such a model in steps
    step = dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else None
    fp16 = dtype == np.float16 or _onnx_fp16(path)
    state = {"session": session}

    def once(batch: np.ndarray) -> list[np.ndarray]:
        try:
            out = state["session"].run(outputs, {image.name: batch.astype(dtype, copy=False)})
        except Exception as err:  # noqa: BLE001 - ORT raises its own types
            raise ConvertError(f"ONNX Runtime cannot run {printable(path)} on {list(batch.shape)} inputs: "
                               f"{one_line(err)}") from None
        return [np.asarray(o, np.float32) for o in out]

    def run(batch: np.ndarray) -> list[np.ndarray]:
        return once(batch) if step is None else in_steps(once, batch, step)

    providers = list(session.get_providers())
    runner = Runner(name, path, run, fp16=fp16, close=lambda: state.clear(), runtime=ORT, accepts=accepts)
    runner.notes.append(f"ONNX Runtime ran {printable(path.name)} with {', '.join(providers)}"
                        + (f", batch fixed to {step}: fed in steps" if step else "")
                        + (", in float16" if fp16 else ""))
    runner.providers = providers
    return runner
