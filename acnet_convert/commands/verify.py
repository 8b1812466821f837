"""`verify`: prove the deploy model computes the function the train-form model computes.

The graphs, run on the same inputs:

* ``train``: the train-form model, every branch and BatchNorm as written (paddle.inference with
  its graph passes off): the user's own program for a program source, untouched; for a
  ResNet-ACNet checkpoint, the program `source.open_source` builds from it. The source is the
  one named in OUT/manifest.json (its sha256 must still match) or `--ckpt`/`--source`;
* ``paddle-deploy`` (OUT/inference.json) and ``paddle-legacy`` (OUT/inference.pdmodel): every
  Paddle deploy model OUT holds, through paddle.inference, as users deploy them;
* ``onnx``: OUT/model.onnx (or `--onnx PATH`) under ONNX Runtime, when there is one.

Every pair is judged by the rule in `verdict` (|a_ij - b_ij| <= atol + rtol * s_i, s_i
sample i's largest |output|). Besides, the tensors each Paddle deploy model loads must equal
OUT/deploy.pdparams bit for bit, and `--per-layer` judges every fused group alone
(`per_layer`). Inputs: random normal batches, a `--inputs FILE.npy`, or `--images DIR`
(`images`, preprocessed as OUT/inference.yml says, `deploy_config`), streamed.

This module only orchestrates: the verdict is `verdict`, the report `verify_report`, the runtimes
`runners`, the inputs and how they stream through the runtimes `feeds` (images: `images`,
their preprocessing: `deploy_config`), the per-group check `per_layer`.
"""
from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from acnet_convert.out.artifacts import Artifacts, Manifest
from acnet_convert.out.deploy_config import Preprocess, default_preprocess, read_inference_config
from acnet_convert.verify.device import resolve_device
from acnet_convert.common.budgets import check_verify_budget
from acnet_convert.common.errors import ConvertError
from acnet_convert.common.regular_file import open_regular
from acnet_convert.verify.feeds import ImageFeed, MemoryFeed, RandomBatches, Track, load_inputs
from acnet_convert.verify.runners import (Runner, onnx_session, op_names, paddle_predictor, release_memory, train_files,
                                   train_runner)
from acnet_convert.common.text import printable
from acnet_convert.verify.verdict import PairStats, noise_floor, widened_rtol
from acnet_convert.verify.report import SourceInfo, VerifyReport

TRAIN, ONNX = "train", "onnx"
PADDLE_NAMES = {"pir": "paddle-deploy", "legacy": "paddle-legacy"}


def image_shape(manifest: Manifest) -> tuple[int, int, int]:
    """(C, H, W) verify feeds: the model's static sizes, the manifest's input size where dynamic."""
    if len(manifest.inputs) != 1:
        raise ConvertError(f"the deploy model has {len(manifest.inputs)} inputs; verify feeds models with one input")
    shape = manifest.inputs[0].shape
    if len(shape) != 4:
        raise ConvertError(f"the deploy model's input has shape {list(shape)}; verify feeds [N, C, H, W] images")
    c, h, w = shape[1:]
    if c < 1:
        raise ConvertError("the deploy model's channel count is dynamic; verify needs it fixed")
    return c, h if h > 0 else manifest.input_size, w if w > 0 else manifest.input_size


# ------------------------------------------------------------------------------------------
# the deploy models and their weights


@dataclass
class DeployModel:
    name: str  # "paddle-deploy" | "paddle-legacy"
    program: Path
    params: Path
    ops: frozenset[str] = frozenset()  # its op names, filled when it is loaded


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise identical tensors (NaN == NaN here), compared through byte views, not copies."""
    x, y = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x.reshape(-1).view(np.uint8),
                                                                         y.reshape(-1).view(np.uint8))


def _loaded_parameters(program: Any) -> Iterator[tuple[str, np.ndarray]]:
    """(name, value) of every parameter a loaded program reads, one at a time."""
    for op in program.ops:
        if op.name() == "builtin.parameter":
            name = op.attrs()["parameter_name"]
            variable = program.scope.find_var(name)
            if variable is not None:
                yield name, np.array(variable.get_tensor())


def check_deploy_weights(models: list[DeployModel], artifacts: Artifacts, keep: set[str], want_geometry: bool):
    """Load every Paddle deploy model with Paddle's own loader and compare the parameters it
    loads with deploy.pdparams, bit for bit. Returns (mismatched names, the parameters named in
    `keep` as the first model loads them, the first model's conv geometry if `want_geometry`)."""
    from acnet_convert.verify.per_layer import deploy_geometry
    from acnet_convert.read.program import load_program
    from acnet_convert.read.program_reader import read_graph

    stored = artifacts.load_deploy_weights()
    mismatched: set[str] = set()
    kept: dict[str, np.ndarray] = {}
    geometry = None
    for i, model in enumerate(models):
        loaded = load_program(model.program, model.params, follow_links=False)
        model.ops = op_names(loaded.ops)
        seen = set()
        for name, value in _loaded_parameters(loaded):
            seen.add(name)
            if name not in stored or not same_bits(value, stored[name]):
                mismatched.add(name)
            if i == 0 and name in keep:
                kept[name] = value
        mismatched.update(set(stored) - seen)
        if i == 0 and want_geometry:
            geometry = deploy_geometry(read_graph(loaded))
        loaded.close()
        del loaded
    return sorted(mismatched), kept, geometry


# ------------------------------------------------------------------------------------------
# the source


def open_train_source(manifest: Manifest, artifacts: Artifacts, override: Path | None, size: int,
                      note: Callable[[str], None]):
    """The source named in the manifest (or `override`), opened; its sha256 must match the
    manifest's unless `override` names it."""
    from acnet_convert.read.source import find_program, open_source

    recorded = manifest.source
    explicit = override is not None
    path = Path(override) if explicit else Path(recorded.path)
    what = "checkpoint" if recorded.kind == "checkpoint" else "model"
    flag = "--ckpt" if recorded.kind == "checkpoint" else "--source"
    program = find_program(path)
    if not path.exists() and program is None:
        where = flag if explicit else f"the source {what} named in {printable(artifacts.manifest_path)}"
        hint = "" if explicit else f"; pass {flag} with its new location"
        raise ConvertError(f"{where} {printable(path)} does not exist{hint}")
    if program is not None:
        source = open_source(path)
    else:
        source = open_source(path, arch=manifest.arch or "auto", num_classes=manifest.num_classes, input_size=size)
    for warning in source.warnings:
        note(f"warning: {warning}")
    checked = recorded.sha256 == source.sha256
    if not checked:
        if not explicit:
            raise ConvertError(
                f"{what} {printable(path)} changed since it was fused: its sha256 {source.sha256[:16]}... differs from "
                f"{recorded.sha256[:16]}... recorded in {printable(artifacts.manifest_path)} "
                f"(pass {flag} {printable(path)} to compare anyway)"
            )
        note(f"{flag} {printable(path)} is not the {what} {printable(artifacts.root)} was fused from (sha256 "
             f"{source.sha256[:16]}... vs {recorded.sha256[:16]}... in manifest.json); comparing against it anyway")
    return source, SourceInfo(str(path), source.kind, source.sha256, checked)


# ------------------------------------------------------------------------------------------
# the run


@dataclass
class _Log:
    """The run's notes (each also passed to the caller's `note`) and phase timings."""

    note: Callable[[str], None]
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def say(self, text: str) -> None:
        self.notes.append(text)
        self.note(text)

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[phase] = time.perf_counter() - start


def _check_options(atol: float, rtol: float, batch_size: int, batches: int, inputs: Path | None,
                   images: Path | None, labels: Path | None, ckpt: Path | None, source: Path | None) -> None:
    if atol < 0 or rtol < 0:
        raise ConvertError("--atol and --rtol must be >= 0")
    if batch_size < 1 or batches < 1:
        raise ConvertError("--batch-size and --batches must be >= 1")
    if inputs is not None and images is not None:
        raise ConvertError("--inputs and --images are two ways to give images: pass one")
    if labels is not None and images is None:
        raise ConvertError("--labels goes with --images DIR")
    if ckpt is not None and source is not None and Path(ckpt) != Path(source):
        raise ConvertError("--ckpt and --source name the same thing: pass one")


def _preprocess(artifacts: Artifacts, manifest: Manifest, shape: tuple[int, int, int], overrides: dict[str, Any],
                say: Callable[[str], None]) -> tuple[Preprocess, str, int | None]:
    """OUT/inference.yml's preprocessing (ImageNet's for the input size if there is none) with
    the flags' `overrides`; where it came from; the label count it gives."""
    if shape[0] != 3:
        raise ConvertError(f"--images: the model takes {shape[0]}-channel inputs; images are read as RGB")
    config = read_inference_config(artifacts)
    if config is None:
        say(f"no {artifacts.inference_config.name} in {printable(artifacts.root)}: ImageNet preprocessing for "
            f"input size {shape[1]}")
        base, origin, classes = default_preprocess(shape[1]), "defaults", None
    else:
        base, origin, classes = config.preprocess, artifacts.inference_config.name, config.num_classes
    flags = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in overrides.items() if v is not None}
    if flags:
        origin += " + " + ", ".join(f"--{k.replace('_', '-')}" for k in flags)
        if "crop" in flags and "resize_short" not in flags:
            flags["resize_short"] = int(round(flags["crop"] * base.resize_short / base.crop))
    preprocess = Preprocess(**{**base.__dict__, **flags})
    fixed = [d for d in manifest.inputs[0].shape[2:] if d > 0]
    if fixed and any(d != preprocess.crop for d in fixed):
        raise ConvertError(f"--images: the crop size is {preprocess.crop}, but the deploy model takes "
                           f"{'x'.join(map(str, manifest.inputs[0].shape[2:]))} images")
    return preprocess, origin, classes


def _feed(artifacts: Artifacts, manifest: Manifest, shape: tuple[int, int, int], inputs: Path | None,
          images: Path | None, labels: Path | None, overrides: dict[str, Any], batch_size: int, batches: int,
          seed: int, say: Callable[[str], None]) -> MemoryFeed | ImageFeed:
    if images is None:
        if inputs is not None:  # dynamic dimensions of the model take any size
            return MemoryFeed("npy", load_inputs(inputs, tuple(manifest.inputs[0].shape[1:]), batch_size))
        return MemoryFeed("random", RandomBatches(batch_size, batches, shape, seed))
    from acnet_convert.verify.images import ImageSet

    preprocess, origin, classes = _preprocess(artifacts, manifest, shape, overrides, say)
    image_set = ImageSet.open(images, labels)
    image_set.check_labels(manifest.num_classes or classes)
    return ImageFeed(image_set, preprocess, origin, batch_size)


def verify(
    out_dir: Path,
    *,
    ckpt: Path | None = None,
    source: Path | None = None,
    onnx: Path | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-5,
    batch_size: int = 8,
    batches: int = 4,
    seed: int = 0,
    inputs: Path | None = None,
    images: Path | None = None,
    labels: Path | None = None,
    resize_short: int | None = None,
    crop: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: str = "auto",
    per_layer: bool = False,
    note: Callable[[str], None] = lambda _text: None,
    track: Track | None = None,
) -> VerifyReport:
    """Compare the train-form model, every Paddle deploy model in `out_dir` and its ONNX model
    (if any); see the module docstring. Raises ConvertError for bad input; a mismatch is a
    report with `ok == False`."""
    _check_options(atol, rtol, batch_size, batches, inputs, images, labels, ckpt, source)
    artifacts = Artifacts(out_dir)
    manifest = artifacts.read_manifest()
    artifacts.check_complete(manifest)
    log = _Log(note)
    if onnx is None and os.path.lexists(artifacts.onnx):
        open_regular(artifacts.onnx).close()  # fuse writes a regular file: a link or a FIFO there is refused
    onnx_path = Path(onnx) if onnx is not None else (artifacts.onnx if artifacts.onnx.is_file() else None)
    if onnx_path is not None and not os.path.lexists(onnx_path):
        raise ConvertError(f"--onnx {printable(onnx_path)} does not exist")
    target = resolve_device(device, onnx=onnx_path is not None)
    for text in target.notes:
        log.say(text)
    if onnx_path is None:
        log.say(f"no {artifacts.onnx.name} in {printable(artifacts.root)}: comparing the Paddle models only")
    overrides = {"resize_short": resize_short, "crop": crop, "mean": mean, "std": std}
    feed = _feed(artifacts, manifest, image_shape(manifest), inputs, images, labels, overrides, batch_size, batches,
                 seed, log.say)  # the user's inputs first: their errors come before any heavy work
    if isinstance(feed, ImageFeed):
        shape = (3, feed.preprocess.crop, feed.preprocess.crop)
    else:
        shape = tuple(feed.first().shape[1:]) if feed.kind == "npy" else image_shape(manifest)
    check_verify_budget(shape[1], shape[2], batch_size, batches, feed.kind != "random")

    models = [DeployModel(PADDLE_NAMES[fmt], program, params) for fmt, program, params in artifacts.paddle_models(manifest)]
    with log.timed("deploy weights"):
        keep = {name for row in manifest.fused for name in row.get("deploy_tensors", [])} if per_layer else set()
        mismatched, deployed, geometry = check_deploy_weights(models, artifacts, keep, per_layer)
        release_memory()
    with tempfile.TemporaryDirectory(prefix="acnet-verify-") as tmp:
        with log.timed("train graph"):
            train, info = open_train_source(manifest, artifacts, source if source is not None else ckpt, shape[1],
                                            log.say)
            files = train_files(train, Path(tmp))
            train_ops = op_names(train.program.ops)
        first = feed.first()  # an image stream cannot be peeked again once it has run
        layers = None
        if per_layer:
            if first is None:
                raise ConvertError("--per-layer: the first batch of images could not be read")
            from acnet_convert.verify.per_layer import compare_groups

            with log.timed("per layer"):
                layers = compare_groups(train.program, train.graph.inputs[0], [r for r in manifest.fused if not r.get("partial")], deployed, first,
                                        target, atol, rtol, geometry)
        train.program.close()  # the runners load their own copies
        del train, deployed
        release_memory()
        noise, judged = None, rtol
        if first is not None:
            with log.timed("noise floor"):
                noise = _noise_floor(files, target, train_ops, first)
            judged = widened_rtol(rtol, noise)
            if judged > rtol:
                log.say(f"float32 noise floor: the train graph as written and under Paddle's optimised kernels differ by "
                        f"{noise:.1e} of each image's largest |output|; pairs are judged with rtol {judged:.2g}")
            release_memory()

        factories: list[Callable[[], Runner]] = [lambda: train_runner(files, target, Path(info.path), train_ops)]
        factories += [lambda m=m: paddle_predictor(m.name, m.program, m.params, target, ops=m.ops) for m in models]
        if onnx_path is not None:
            factories.append(lambda: onnx_session(onnx_path, target, shape))

        def stats_of(fp16: dict[str, bool]) -> list[PairStats]:
            names = [TRAIN] + [m.name for m in models] + ([ONNX] if onnx_path is not None else [])
            return [PairStats(a, b, atol, judged, fp16=fp16.get(a, False) or fp16.get(b, False))
                    for i, a in enumerate(names) for b in names[i + 1 :]]

        result = feed.run(factories, stats_of, track, log.say, release_memory)
    log.timings.update(result.timings)
    return VerifyReport(
        device=target.name, arch=manifest.arch, num_classes=manifest.num_classes, input_size=shape[1],
        images=result.images, inputs=feed.kind, atol=atol, rtol=rtol, source=info,
        graphs=[(name, str(path)) for name, path in result.paths.items()],
        pairs=[s.result() for s in result.stats], mismatched_tensors=mismatched, layers=layers,
        per_layer_images=0 if layers is None else len(first), image_set=result.image_set,
        onnx_providers=result.providers, notes=log.notes, timings=log.timings, noise_floor=noise,
    )


def _noise_floor(files: tuple[Path, Path], target: Any, ops: Any, batch: np.ndarray) -> float:
    """The train graph's own float32 noise on `batch`: as written vs under Paddle's optimised
    kernels (BN folded, oneDNN), two computations of one function (verdict's docstring)."""
    written = train_runner(files, target, files[0], ops)
    try:
        a = written(batch)
    finally:
        written.close()
    optimised = paddle_predictor("train-optimised", files[0], files[1], target, ops=ops)
    try:
        b = optimised(batch)
    finally:
        optimised.close()
    return noise_floor(a, b)
