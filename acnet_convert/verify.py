"""`verify`: prove the deploy model computes the function the trained checkpoint computes.

Three graphs run on the same inputs:

* ``train``: the train graph (ACB branches, BatchNorm in inference mode) built by
  `models.train_model` from the source checkpoint, saved as a program and run by
  paddle.inference with graph passes off, so every branch and BN runs as written;
* ``paddle-deploy``: OUT/inference.json + inference.pdiparams through `paddle.inference`
  (`Config` + `create_predictor`), the artifact users deploy;
* ``onnx``: OUT/model.onnx under ONNX Runtime, when the file exists.

Beside the outputs, the fused tensors the predictor loads (read from inference.pdiparams with
Paddle's own loader) must equal OUT/deploy.pdparams bit for bit, and ``--per-layer`` runs every
plan conv of a deploy dygraph model built from inference.pdiparams on the train graph's input to
that conv and compares the outputs (before any ReLU), so a wrong tensor is named by its layer.

JSON report (`VerifyReport.to_json()`)::

    {
      "ok": bool,                  # every pair passes, deploy weights consistent, no layer diverges
      "device": "cpu" | "gpu",     # where Paddle ran (ONNX Runtime's provider is in the notes)
      "arch": "resnet50", "num_classes": int, "input_size": int,
      "images": int,               # images compared (batch-size x batches, or N of --inputs)
      "atol": float, "rtol": float,
      "source": {
        "path": str,               # checkpoint the train graph was loaded from
        "sha256": str,             # its sha256 now
        "checked": bool            # true: equals the sha256 recorded by fuse in manifest.json
      },
      "pairs": [                   # train~paddle-deploy, then train~onnx, paddle-deploy~onnx
        {"a": "train", "b": "paddle-deploy",   # a is the reference
         "max_abs_error": float,   # max over all logits of |a_ij - b_ij|
         "max_rel_error": float,   # max over all logits of |a_ij - b_ij| / max(s_i, 1e-12)
         "cosine": float,          # smallest per-image cosine similarity of the logit vectors
         "top1_agreement": float,  # fraction of images whose arg-max class agrees
         "pass": bool}             # numpy.allclose: every |a_ij - b_ij| <= atol + rtol * |a_ij|
      ],                           # s_i = max_j |a_ij|: image i's logit scale
      "per_layer": null | {        # null unless --per-layer; first batch only
        "first_divergent_layer": str | null,
        "layers": [{"name": str, "max_abs_error": float, "pass": bool}]   # plan order
      },                           # layer pass: max abs error <= atol + rtol * max |train output|
      "deploy_weights_consistent": bool,   # inference.pdiparams == deploy.pdparams, bitwise
      "mismatched_tensors": [str]          # tensors that differ, or are in only one of them
    }

Errors that are not finite (NaN/Inf logits) are written as null and fail the pair.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from acnet_convert.device import Device, resolve_device
from acnet_convert.errors import ConvertError
from acnet_convert.manifest import (
    DEPLOY_WEIGHTS,
    MANIFEST,
    MODEL_PREFIX,
    ONNX_MODEL,
    manifest_plan,
    program_file,
    read_manifest,
)
from acnet_convert.plan import Plan
from acnet_convert.quiet import import_paddle, silenced

TRAIN, DEPLOY, ONNX = "train", "paddle-deploy", "onnx"
REL_FLOOR = 1e-12  # denominator floor of the relative error: all-zero logits do not divide by 0
MAX_THREADS = 8


@dataclass(frozen=True)
class PairResult:
    a: str
    b: str
    max_abs_error: float
    max_rel_error: float
    cosine: float
    top1_agreement: float
    passed: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "max_abs_error": _finite(self.max_abs_error),
            "max_rel_error": _finite(self.max_rel_error),
            "cosine": _finite(self.cosine),
            "top1_agreement": self.top1_agreement,
            "pass": self.passed,
        }


@dataclass(frozen=True)
class LayerResult:
    name: str
    max_abs_error: float
    passed: bool

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "max_abs_error": _finite(self.max_abs_error), "pass": self.passed}


@dataclass(frozen=True)
class Source:
    path: str
    sha256: str
    checked: bool


@dataclass
class VerifyReport:
    device: str
    arch: str
    num_classes: int
    input_size: int
    images: int
    atol: float
    rtol: float
    source: Source
    pairs: list[PairResult]
    mismatched_tensors: list[str]
    layers: list[LayerResult] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def deploy_weights_consistent(self) -> bool:
        return not self.mismatched_tensors

    @property
    def first_divergent_layer(self) -> str | None:
        return next((layer.name for layer in self.layers or [] if not layer.passed), None)

    @property
    def ok(self) -> bool:
        return (
            all(pair.passed for pair in self.pairs)
            and self.deploy_weights_consistent
            and self.first_divergent_layer is None
        )

    def to_json(self) -> dict[str, Any]:
        per_layer = None
        if self.layers is not None:
            per_layer = {
                "first_divergent_layer": self.first_divergent_layer,
                "layers": [layer.to_json() for layer in self.layers],
            }
        return {
            "ok": self.ok,
            "device": self.device,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "input_size": self.input_size,
            "images": self.images,
            "atol": self.atol,
            "rtol": self.rtol,
            "source": {"path": self.source.path, "sha256": self.source.sha256, "checked": self.source.checked},
            "pairs": [pair.to_json() for pair in self.pairs],
            "per_layer": per_layer,
            "deploy_weights_consistent": self.deploy_weights_consistent,
            "mismatched_tensors": list(self.mismatched_tensors),
        }

    def format_table(self) -> str:
        size = f"{self.input_size}x{self.input_size}"
        lines = [
            f"{self.arch}, {self.num_classes} classes: {self.images} images of {size} on the {self.device.upper()}"
            f" (atol {self.atol:g}, rtol {self.rtol:g})",
            f"  {'pair':<26} {'max abs':>9} {'max rel':>9} {'min cos':>9} {'top-1':>7}  result",
        ]
        for p in self.pairs:
            lines.append(
                f"  {p.a + ' ~ ' + p.b:<26} {_sci(p.max_abs_error):>9} {_sci(p.max_rel_error):>9} "
                f"{p.cosine:>9.6f} {p.top1_agreement:>7.1%}  {'pass' if p.passed else 'FAIL'}"
            )
        if self.deploy_weights_consistent:
            lines.append(f"  deploy weights: inference.pdiparams and {DEPLOY_WEIGHTS} are identical")
        else:
            shown = ", ".join(self.mismatched_tensors[:5])
            more = f" and {len(self.mismatched_tensors) - 5} more" if len(self.mismatched_tensors) > 5 else ""
            lines.append(
                f"  deploy weights: inference.pdiparams and {DEPLOY_WEIGHTS} differ in "
                f"{len(self.mismatched_tensors)} tensor(s): {shown}{more}  FAIL"
            )
        if self.layers is not None:
            first = self.first_divergent_layer
            if first is None:
                worst = max((layer.max_abs_error for layer in self.layers), default=0.0)
                lines.append(f"  per layer: all {len(self.layers)} convs agree (worst max abs {_sci(worst)})")
            else:
                bad = [layer for layer in self.layers if not layer.passed]
                error = next(layer.max_abs_error for layer in bad)
                lines.append(
                    f"  per layer: first divergent layer {first} (max abs {_sci(error)}); "
                    f"{len(bad)} of {len(self.layers)} convs diverge  FAIL"
                )
        if not self.source.checked:
            lines.append(f"  source: {self.source.path} is not the checkpoint recorded in {MANIFEST}")
        lines.append("MATCH" if self.ok else "MISMATCH")
        return "\n".join(lines)


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _sci(x: float) -> str:
    return f"{x:.2e}" if np.isfinite(x) else str(x)


# ------------------------------------------------------------------------------------------
# metrics


def compare(a: np.ndarray, b: np.ndarray, names: tuple[str, str], atol: float, rtol: float) -> PairResult:
    """Compare logits `b` against the reference `a` (both [N, classes]).

    A pair passes by numpy.allclose's rule, element by element, which is what users mean by
    atol/rtol. The reported relative error divides by each image's logit scale max_j |a_ij|
    instead of by each logit, so a logit that is near zero because large terms cancel does not
    report a huge relative error that says nothing about the model."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = np.abs(a64 - b64)
    scale = np.abs(a64).max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        dots = np.sum(a64 * b64, axis=1)
        norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
        same = diff.max(axis=1) == 0
        cosines = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(same, 1.0, 0.0))
        relative = diff / np.maximum(scale, REL_FLOOR)
    return PairResult(
        a=names[0],
        b=names[1],
        max_abs_error=float(diff.max()),
        max_rel_error=float(relative.max()),
        cosine=float(cosines.min()),
        top1_agreement=float(np.mean(a64.argmax(axis=1) == b64.argmax(axis=1))),
        passed=bool(np.all(diff <= atol + rtol * np.abs(a64))),  # NaN compares False: fails
    )


# ------------------------------------------------------------------------------------------
# inputs


def random_batches(batch_size: int, batches: int, input_size: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal((batch_size, 3, input_size, input_size), dtype=np.float32) for _ in range(batches)
    ]


def load_inputs(path: Path, input_size: int, batch_size: int) -> list[np.ndarray]:
    """A float32 [N, 3, input_size, input_size] .npy file, split into batches."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ConvertError(f"--inputs {path}: expected a .npy file (numpy.save of a float32 [N,3,H,W] array)")
    if not path.is_file():
        raise ConvertError(f"--inputs {path} does not exist")
    try:
        images = np.load(path, mmap_mode="r", allow_pickle=False)  # header checks before reading
    except (ValueError, OSError, EOFError) as err:
        raise ConvertError(f"--inputs {path} is not a readable .npy file ({err})") from None
    expected = f"[N, 3, {input_size}, {input_size}]"
    if images.ndim != 4 or images.shape[1:] != (3, input_size, input_size) or images.shape[0] < 1:
        raise ConvertError(
            f"--inputs {path} has shape {list(images.shape)}; the deploy model takes {expected} "
            f"(input size {input_size} from {MANIFEST})"
        )
    if images.dtype != np.float32:
        raise ConvertError(f"--inputs {path} is {images.dtype}; expected float32 {expected} (use .astype(np.float32))")
    images = np.array(images)
    if not np.isfinite(images).all():
        raise ConvertError(f"--inputs {path} holds NaN or Inf")
    return [images[i : i + batch_size] for i in range(0, len(images), batch_size)]


# ------------------------------------------------------------------------------------------
# the artifacts in OUT


def _model_files(out_dir: Path) -> tuple[Path, Path]:
    """OUT/inference.json (inference.pdmodel on Paddle 2.x) and OUT/inference.pdiparams."""
    prefix = out_dir / MODEL_PREFIX
    program = program_file(prefix)
    params = prefix.with_suffix(".pdiparams")
    for path in (program, params, out_dir / DEPLOY_WEIGHTS):
        if not path.is_file():
            raise ConvertError(f"{path} is missing: {out_dir} is not a complete output of 'acnet-convert fuse'")
    if program.suffix == ".json":
        try:
            text = json.loads(program.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise ConvertError(f"{program} is corrupt: not valid JSON ({err})") from None
        if not isinstance(text, dict) or "program" not in text:
            raise ConvertError(f"{program} is not a Paddle inference program (no 'program' entry)")
    return program, params


def _one_line(err: BaseException, limit: int = 200) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = next((line for line in lines if "Error" in line or "error" in line), lines[0] if lines else "")
    text = text or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_inference_params(program: Path, params: Path) -> dict[str, np.ndarray]:
    """The tensors the predictor loads, by parameter name, read with Paddle's own loader
    (`paddle.static.load_inference_model` into a private scope)."""
    paddle = import_paddle()
    was_dynamic = paddle.in_dynamic_mode()
    paddle.enable_static()
    try:
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope), silenced():
            executor = paddle.static.Executor(paddle.CPUPlace())
            try:
                # default file names: PREFIX.json (.pdmodel on Paddle 2.x) + PREFIX.pdiparams
                loaded, _feeds, _fetches = paddle.static.load_inference_model(str(program.with_suffix("")), executor)
            except Exception as err:  # noqa: BLE001 - Paddle raises many types for a bad file
                message = _one_line(err)
                if "model file" in message.lower():  # Paddle's words for a bad program
                    raise ConvertError(f"{program} cannot be loaded: {message}") from None
                raise ConvertError(f"{params} (with {program.name}) cannot be loaded: {message}") from None
            names = [p.name for p in loaded.global_block().all_parameters()]
            return {name: np.array(scope.find_var(name).get_tensor()) for name in names}
    finally:
        if was_dynamic:
            paddle.disable_static()


def _check_params(plan: Plan, tensors: Mapping[str, np.ndarray], path: Path) -> None:
    for name, shape in plan.deploy_tensors().items():
        if name not in tensors:
            raise ConvertError(f"{path} lacks tensor {name}: not a deploy model of {plan.arch}")
        if tuple(tensors[name].shape) != shape:
            raise ConvertError(
                f"{path}: tensor {name} has shape {list(tensors[name].shape)}, expected {list(shape)} for {plan.arch}"
            )
    extra = sorted(set(tensors) - set(plan.deploy_tensors()))
    if extra:
        raise ConvertError(f"{path} holds tensor {extra[0]} that {plan.arch}'s deploy model does not have")


def mismatched_tensors(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> list[str]:
    """Names whose tensors are not bitwise identical (or exist in only one mapping)."""
    out = []
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            out.append(name)
            continue
        x, y = np.ascontiguousarray(a[name]), np.ascontiguousarray(b[name])
        # bitwise (NaN == NaN here), through byte views rather than copies
        if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(
            x.reshape(-1).view(np.uint8), y.reshape(-1).view(np.uint8)
        ):
            out.append(name)
    return out


def _cpu_threads() -> int:
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        available = os.cpu_count() or 1
    return max(1, min(available, MAX_THREADS))


Runner = Callable[[np.ndarray], np.ndarray]


def paddle_predictor(program: Path, params: Path, device: Device, ir_optim: bool = True) -> Runner:
    """A Paddle inference model through paddle.inference, as users run it. `ir_optim=False`
    runs the program as written (no BN folding or other graph passes)."""
    import_paddle()
    from paddle import inference

    config = inference.Config(str(program), str(params))
    config.disable_glog_info()
    config.switch_ir_optim(ir_optim)
    if device.paddle_gpu:
        config.enable_use_gpu(256, 0)
    else:
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(_cpu_threads())
    try:
        with silenced():
            predictor = inference.create_predictor(config)
    except Exception as err:  # noqa: BLE001
        raise ConvertError(f"{program} cannot be loaded by paddle.inference: {_one_line(err)}") from None
    image = predictor.get_input_handle(predictor.get_input_names()[0])
    logits = predictor.get_output_handle(predictor.get_output_names()[0])

    def run(batch: np.ndarray) -> np.ndarray:
        with silenced():
            image.reshape(list(batch.shape))
            image.copy_from_cpu(batch)
            predictor.run()
            return logits.copy_to_cpu()

    return run


def train_predictor(train, input_size: int, tmp: Path, device: Device) -> Runner:
    """The train graph (ACB branches, BN in inference mode) saved as a program and run by
    paddle.inference without graph passes, so BN is computed as written, not folded. 3-4x
    faster than running the dygraph layers batch by batch (ResNet-50, batch 8: 1.9 s vs 7 s)."""
    from acnet_convert.paddle_writer import save_program

    with silenced():
        program = save_program(train, tmp / "train", input_size)
    return paddle_predictor(program, tmp / "train.pdiparams", device, ir_optim=False)


def onnx_session(path: Path, device: Device) -> Runner:
    with silenced():
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = _cpu_threads()
        # Paddle runs between ORT's batches: ORT's spinning threads would steal its cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=list(device.ort_providers))
        except Exception as err:  # noqa: BLE001 - ORT raises its own exception types
            raise ConvertError(f"{path} is corrupt or not a valid ONNX model: {_one_line(err)}") from None
    image = session.get_inputs()[0]
    output_name = session.get_outputs()[0].name
    # export-onnx --static-batch fixes the batch dimension (to 1): feed such a model in steps
    step = image.shape[0] if isinstance(image.shape[0], int) and image.shape[0] > 0 else None

    def run(batch: np.ndarray) -> np.ndarray:
        if step is None:
            return session.run([output_name], {image.name: batch})[0]
        parts = [session.run([output_name], {image.name: batch[i : i + step]})[0] for i in range(0, len(batch), step)]
        return np.concatenate(parts)

    return run


# ------------------------------------------------------------------------------------------
# the source checkpoint


def _load_train_source(manifest: dict[str, Any], out_dir: Path, ckpt: Path | None, note: Callable[[str], None]):
    from acnet_convert.convert import load_source

    recorded = manifest.get("source") or {}
    explicit = ckpt is not None
    path = Path(ckpt) if explicit else Path(recorded.get("path", ""))
    if not explicit and not recorded.get("path"):
        raise ConvertError(f"{out_dir / MANIFEST} names no source checkpoint; pass --ckpt")
    if not path.exists():
        where = "--ckpt" if explicit else f"the source checkpoint named in {out_dir / MANIFEST}"
        hint = "" if explicit else "; pass --ckpt with its new location"
        raise ConvertError(f"{where} {path} does not exist{hint}")
    checkpoint, plan, warnings = load_source(path, manifest["arch"], int(manifest["num_classes"]))
    for warning in warnings:
        note(f"warning: {warning}")
    expected = recorded.get("sha256")
    checked = expected == checkpoint.sha256
    if not checked:
        if not explicit:
            raise ConvertError(
                f"checkpoint {path} changed since it was fused: its sha256 {checkpoint.sha256[:16]}... differs from "
                f"{str(expected)[:16]}... recorded in {out_dir / MANIFEST} (pass --ckpt {path} to compare anyway)"
            )
        note(
            f"--ckpt {path} is not the checkpoint {out_dir} was fused from (sha256 {checkpoint.sha256[:16]}... vs "
            f"{str(expected)[:16]}... in {MANIFEST}); comparing against it anyway"
        )
    return checkpoint, plan, Source(str(path), checkpoint.sha256, checked)


# ------------------------------------------------------------------------------------------
# per layer


def compare_layers(plan: Plan, train, deploy, batch: np.ndarray, atol: float, rtol: float) -> list[LayerResult]:
    """Run the train graph once; at every plan conv, run the deploy conv on the very input the
    train conv got and compare the two outputs (BN is inside the train layer, ReLU outside
    both), so each layer is judged alone and errors do not accumulate. Plan order.

    A layer passes when max |deploy - train| <= atol + rtol * max |train| over its whole
    output: the tolerance follows the layer's scale, because an element-wise rtol fails the
    outputs that are near zero only because large terms cancel (float32 rounding there is
    relative to the terms, not to the result)."""
    paddle = import_paddle()
    found: dict[str, LayerResult] = {}

    def hook_for(name: str):
        def hook(_layer, inputs, output):
            expected = np.asarray(output.numpy(), np.float64)
            got = np.asarray(deploy.convs[name](inputs[0]).numpy(), np.float64)
            if got.shape != expected.shape:
                found[name] = LayerResult(name, float("inf"), False)
                return
            error = float(np.abs(got - expected).max())
            scale = float(np.abs(expected).max())
            found[name] = LayerResult(name, error, bool(error <= atol + rtol * scale))  # NaN fails

        return hook

    handles = [train.convs[c.name].register_forward_post_hook(hook_for(c.name)) for c in plan.convs()]
    try:
        with paddle.no_grad():
            train(paddle.to_tensor(batch))
    finally:
        for handle in handles:
            handle.remove()
    return [found[c.name] for c in plan.convs()]


# ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _paddle_device(place: str) -> Iterator[None]:
    paddle = import_paddle()
    before = paddle.get_device()
    paddle.set_device(place)
    try:
        yield
    finally:
        paddle.set_device(before)


def verify(
    out_dir: Path,
    *,
    ckpt: Path | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-5,
    batch_size: int = 8,
    batches: int = 4,
    seed: int = 0,
    inputs: Path | None = None,
    device: str = "auto",
    per_layer: bool = False,
    note: Callable[[str], None] = lambda _text: None,
    track: Callable[[list, str], Iterable] | None = None,
) -> VerifyReport:
    """Compare the train graph, the deploy Paddle inference model and (if present) model.onnx
    of fuse output `out_dir`; see the module docstring for what is measured and the JSON form.
    Raises ConvertError for bad input; a mismatch is a report with `ok == False`."""
    out_dir = Path(out_dir)
    if atol < 0 or rtol < 0:
        raise ConvertError("--atol and --rtol must be >= 0")
    if batch_size < 1 or batches < 1:
        raise ConvertError("--batch-size and --batches must be >= 1")
    manifest = read_manifest(out_dir)
    plan = manifest_plan(manifest)
    input_size = int(manifest["input_size"])
    program, params = _model_files(out_dir)
    onnx_path = out_dir / ONNX_MODEL
    has_onnx = onnx_path.is_file()
    images = load_inputs(inputs, input_size, batch_size) if inputs is not None else (
        random_batches(batch_size, batches, input_size, seed)
    )
    target = resolve_device(device, onnx=has_onnx)
    for text in target.notes:
        note(text)

    from acnet_convert.checkpoint import load_pickle

    deployed = read_inference_params(program, params)
    _check_params(plan, deployed, params)
    mismatched = mismatched_tensors(deployed, load_pickle(out_dir / DEPLOY_WEIGHTS))

    runners: dict[str, Runner] = {DEPLOY: paddle_predictor(program, params, target)}
    if has_onnx:
        runners[ONNX] = onnx_session(onnx_path, target)
    else:
        note(f"no {ONNX_MODEL} in {out_dir}: comparing the train graph and the Paddle deploy model only")
    checkpoint, plan, source = _load_train_source(manifest, out_dir, ckpt, note)

    import_paddle()  # quietly, before models imports it
    from acnet_convert.models import deploy_model, train_model

    with _paddle_device(target.paddle_place), tempfile.TemporaryDirectory(prefix="acnet-verify-") as tmp:
        train = train_model(plan, checkpoint.tensors)
        del checkpoint
        runners = {TRAIN: train_predictor(train, input_size, Path(tmp), target), **runners}
        logits: dict[str, list[np.ndarray]] = {name: [] for name in runners}
        for batch in track(images, "verifying") if track else images:
            for name, run in runners.items():
                logits[name].append(np.asarray(run(batch)))
        layers = None
        if per_layer:
            layers = compare_layers(plan, train, deploy_model(plan, deployed), images[0], atol, rtol)

    outputs = {name: np.concatenate(parts) for name, parts in logits.items()}
    for name, path in ((DEPLOY, program), (ONNX, onnx_path)):
        if name in outputs and outputs[name].shape != outputs[TRAIN].shape:
            raise ConvertError(
                f"{path} outputs logits of shape {list(outputs[name].shape)}, the train graph "
                f"{list(outputs[TRAIN].shape)}: it is not a model of this {plan.arch}"
            )
    order = [TRAIN, DEPLOY] + ([ONNX] if has_onnx else [])
    pairs = [
        compare(outputs[a], outputs[b], (a, b), atol, rtol)
        for i, a in enumerate(order)
        for b in order[i + 1 :]
    ]
    return VerifyReport(
        device=target.name,
        arch=plan.arch,
        num_classes=plan.num_classes,
        input_size=input_size,
        images=int(sum(len(batch) for batch in images)),
        atol=atol,
        rtol=rtol,
        source=source,
        pairs=pairs,
        mismatched_tensors=mismatched,
        layers=layers,
        notes=list(target.notes),
    )
