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

from acnet_convert.out.artifacts import ONNX_SOURCE, Artifacts, Manifest
from acnet_convert.out.deploy_config import Preprocess, default_preprocess, read_inference_config
from acnet_convert.verify.device import resolve_device
from acnet_convert.common.budgets import check_verify_budget
from acnet_convert.common.errors import ConvertError, UsageError
from acnet_convert.common.regular_file import not_a_file, open_regular
from acnet_convert.common.sizes import SizeLike, size_text
from acnet_convert.verify.sizes import accepted, second_sizes, takes_any_size
from acnet_convert.verify.deploy_weights import DeployModel, check_deploy_weights
from acnet_convert.verify.feeds import Chained, ImageFeed, MemoryFeed, RandomBatches, Track, load_inputs
from acnet_convert.verify.runners import (Runner, SizeRefused, onnx_session, op_names, paddle_predictor, release_memory,
                                          train_files, train_runner)
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
    return c, h if h > 0 else manifest.input_hw[0], w if w > 0 else manifest.input_hw[1]


def feedable_shape(manifest: Manifest) -> tuple[int, ...]:
    """[C, H, W] the models accept, -1 where any size goes (`sizes.takes_any_size`)."""
    c, h, w = image_shape(manifest)
    return (c, -1, -1) if takes_any_size(manifest) else (c, h, w)


# ------------------------------------------------------------------------------------------
# the source


def open_train_source(manifest: Manifest, artifacts: Artifacts, override: Path | None, size: SizeLike | None,
                      note: Callable[[str], None], allow_nonfinite: bool = False):
    """The source named in the manifest (or `override`), opened; its sha256 must match the
    manifest's unless `override` names it. A checkpoint's program is built for `size` (H, W),
    or for any size when None."""
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
        source = open_source(path, arch=manifest.arch or "auto", num_classes=manifest.num_classes, input_size=size,
                             allow_nonfinite=allow_nonfinite)
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
        raise UsageError("--atol and --rtol must be >= 0")
    if batch_size < 1 or batches < 1:
        raise UsageError("--batch-size and --batches must be >= 1")
    if inputs is not None and images is not None:
        raise UsageError("--inputs and --images are two ways to give images: pass one")
    if labels is not None and images is None:
        raise UsageError("--labels goes with --images DIR")
    if ckpt is not None and source is not None and Path(ckpt) != Path(source):
        raise UsageError("--ckpt and --source name the same thing: pass one")


def _preprocess(artifacts: Artifacts, manifest: Manifest, shape: tuple[int, int, int], overrides: dict[str, Any],
                say: Callable[[str], None]) -> tuple[Preprocess, str, int | None]:
    """OUT/inference.yml's preprocessing (ImageNet's for the input size if there is none) with
    the flags' `overrides`; where it came from; the label count it gives."""
    if shape[0] != 3:
        raise ConvertError(f"--images: the model takes {shape[0]}-channel inputs; images are read as RGB")
    config = read_inference_config(artifacts)
    if config is None:
        say(f"no {artifacts.inference_config.name} in {printable(artifacts.root)}: ImageNet preprocessing for "
            f"input size {size_text(shape[1:])}")
        base, origin, classes = default_preprocess(shape[1:]), "defaults", None
    else:
        base, origin, classes = config.preprocess, artifacts.inference_config.name, config.num_classes
    flags = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in overrides.items() if v is not None}
    if flags:
        origin += " + " + ", ".join(f"--{k.replace('_', '-')}" for k in flags)
    if "crop" in flags:
        base = base.with_crop(flags.pop("crop"))
    if "resize_short" in flags and base.resize is not None:
        raise UsageError(f"--resize-short: {origin.split(' + ')[0]} resizes every image to {size_text(base.resize)} "
                         "(no short side to set); use --crop HxW")
    preprocess = Preprocess(**{**base.__dict__, **flags})
    fixed = feedable_shape(manifest)[1:]
    if min(fixed) > 0 and tuple(fixed) != preprocess.crop:
        raise UsageError(f"--images: the crop is {size_text(preprocess.crop)}, but the deploy model takes "
                         f"{size_text(fixed)} images only")
    return preprocess, origin, classes


def _feed(artifacts: Artifacts, manifest: Manifest, shape: tuple[int, int, int], inputs: Path | None,
          images: Path | None, labels: Path | None, overrides: dict[str, Any], batch_size: int, batches: int,
          seed: int, say: Callable[[str], None]) -> MemoryFeed | ImageFeed:
    if images is None:
        if inputs is not None:  # dynamic dimensions of the model take any size
            return MemoryFeed("npy", load_inputs(inputs, feedable_shape(manifest), batch_size))
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
    crop: SizeLike | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: str = "auto",
    per_layer: bool = False,
    second_size: bool = True,
    allow_nonfinite: bool = False,
    note: Callable[[str], None] = lambda _text: None,
    track: Track | None = None,
) -> VerifyReport:
    """Compare the train-form model, every Paddle deploy model in `out_dir` and its ONNX model
    (if any); see the module docstring. Random inputs for a model of any size are fed at a
    second size too (`verify.sizes`) unless `second_size` is False. `allow_nonfinite` (a model
    fused with --allow-nonfinite) opens a source whose weights hold NaN/Inf, and counts outputs
    that are NaN (or the same Inf) in both graphs as equal. Raises ConvertError for bad input;
    a mismatch is a report with `ok == False`."""
    _check_options(atol, rtol, batch_size, batches, inputs, images, labels, ckpt, source)
    artifacts = Artifacts(out_dir)
    manifest = artifacts.read_manifest()
    if manifest.source.format == ONNX_SOURCE:
        raise ConvertError(f"{printable(out_dir)} was fused from an ONNX model: commands.verify_onnx verifies it")
    artifacts.check_complete(manifest)
    log = _Log(note)
    if onnx is None and os.path.lexists(artifacts.onnx):
        open_regular(artifacts.onnx).close()  # fuse writes a regular file: a link or a FIFO there is refused
    onnx_path = Path(onnx) if onnx is not None else (artifacts.onnx if artifacts.onnx.is_file() else None)
    why = None if onnx_path is None else not_a_file(onnx_path)
    if why:
        raise ConvertError(f"--onnx {printable(onnx_path)} {why}")
    overrides = {"resize_short": resize_short, "crop": crop, "mean": mean, "std": std}
    feed = _feed(artifacts, manifest, image_shape(manifest), inputs, images, labels, overrides, batch_size, batches,
                 seed, log.say)  # the user's inputs first: their errors come before any note or heavy work
    if isinstance(feed, ImageFeed):
        shape = (3, *feed.preprocess.crop)
    else:
        shape = tuple(feed.first().shape[1:]) if feed.kind == "npy" else image_shape(manifest)
    check_verify_budget(shape[1:], batch_size, batches, feed.kind != "random")  # the size fed, wherever it came from
    target = resolve_device(device, onnx=onnx_path is not None)
    for text in target.notes:
        log.say(text)
    if onnx_path is None:
        log.say(f"no {artifacts.onnx.name} in {printable(artifacts.root)}: comparing the Paddle models only")
    any_size = takes_any_size(manifest)

    models = [DeployModel(PADDLE_NAMES[fmt], program, params) for fmt, program, params in artifacts.paddle_models(manifest)]
    with log.timed("deploy weights"):
        keep = {name for row in manifest.fused for name in row.get("deploy_tensors", [])} if per_layer else set()
        mismatched, deployed, geometry = check_deploy_weights(models, artifacts, keep, per_layer)
        release_memory()
    with tempfile.TemporaryDirectory(prefix="acnet-verify-") as tmp:
        with log.timed("train graph"):
            train, info = open_train_source(manifest, artifacts, source if source is not None else ckpt,
                                            None if any_size else shape[1:], log.say, allow_nonfinite)
            files = train_files(train, Path(tmp))
            train_ops = op_names(train.program.ops)
        first = feed.first()  # an image stream cannot be peeked again once it has run
        layers = None
        if per_layer:
            if first is None:
                raise ConvertError("--per-layer: no image could be read")
            from acnet_convert.verify.per_layer import compare_groups

            with log.timed("per layer"):
                layers = compare_groups(train.program, train.graph.inputs[0], [r for r in manifest.fused if not r.get("partial")], deployed, first,
                                        target, atol, rtol, geometry)
        train.program.close()  # the runners load their own copies
        del train, deployed
        release_memory()
        noise, judged = None, rtol
        candidates = second_sizes(shape[1:]) if second_size and any_size and feed.kind == "random" else []
        if first is not None:
            with log.timed("noise floor"):
                noise, second, refused = _train_as_written(files, target, train_ops, first, candidates, seed,
                                                           allow_nonfinite)
            judged, feed = _after_first_batch(log, "train model", rtol, noise, feed, shape, candidates, second,
                                              refused, batch_size, seed)
            release_memory()

        factories: list[Callable[[], Runner]] = [lambda: train_runner(files, target, Path(info.path), train_ops)]
        factories += [lambda m=m: paddle_predictor(m.name, m.program, m.params, target, ops=m.ops) for m in models]
        if onnx_path is not None:
            fed = sorted({(shape[0], *hw) for hw in _feed_sizes(feed, shape)})
            factories.append(lambda: _onnx_runner(onnx_path, target, fed, explicit=onnx is not None, say=log.say))

        def stats_of(fp16: dict[str, bool]) -> list[PairStats]:
            names = list(fp16)  # the graphs that ran, in order
            return [PairStats(a, b, atol, judged, fp16=fp16.get(a, False) or fp16.get(b, False),
                              allow_nonfinite=allow_nonfinite) for i, a in enumerate(names) for b in names[i + 1 :]]

        result = feed.run(factories, stats_of, track, log.say, release_memory)
    agreed = max((s.nonfinite for s in result.stats), default=0)
    if agreed:
        log.say(f"{agreed} output values are NaN or Inf in both graphs alike (--allow-nonfinite): compared as equal")
    log.timings.update(result.timings)
    return VerifyReport(
        device=target.name, arch=manifest.arch, num_classes=manifest.num_classes,
        sizes=[(h, w, n) for (h, w), n in result.sizes.items()],
        images=result.images, inputs=feed.kind, atol=atol, rtol=rtol, source=info,
        graphs=[(name, str(path)) for name, path in result.paths.items()],
        pairs=[s.result() for s in result.stats], mismatched_tensors=mismatched, layers=layers,
        per_layer_images=0 if layers is None else len(first), image_set=result.image_set,
        onnx_providers=result.providers, notes=log.notes, timings=log.timings, noise_floor=noise,
    )


def _after_first_batch(log: _Log, model: str, rtol: float, noise: float | None, feed: Any, shape: tuple[int, ...],
                       candidates: list[tuple[int, int]], second: tuple[int, int] | None, refused: list[str],
                       batch_size: int, seed: int) -> tuple[float, Any]:
    """What the source model as written told on the first batch: the rtol its float32 noise floor
    widens to, and the feed with one batch at the second size it runs at (if any), each said."""
    judged = rtol if noise is None else widened_rtol(rtol, noise)
    if judged > rtol:
        log.say(f"float32 noise floor {noise:.1e} of the largest |output|: rtol widened to {judged:.2g}")
    if candidates and second is None:
        log.say(f"the {model} runs at no size but {size_text(shape[1:])} ({'; '.join(refused)}): verified there only")
    elif second is not None:
        feed = MemoryFeed("random", Chained(feed.batches, RandomBatches(batch_size, 1, (shape[0], *second), seed + 1)))
    return judged, feed


def _onnx_runner(path: Path, target: Any, fed: list[tuple[int, ...]], explicit: bool, say: Callable[[str], None]
                 ) -> Runner | None:
    """The ONNX model under ONNX Runtime. OUT's own model.onnx, fixed at a size none of the
    inputs has (a --crop or --inputs of another size), is left out with a note; an ONNX model
    named with --onnx is an error then."""
    try:
        return onnx_session(path, target, fed)
    except SizeRefused as err:
        if explicit:
            raise
        say(f"{err}: not compared (export-onnx without --static-size makes one of any size the model takes)")
        return None


def _feed_sizes(feed: MemoryFeed | ImageFeed, shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """The (H, W) of every batch the feed will give (without decoding images)."""
    if isinstance(feed, ImageFeed):
        return [tuple(feed.preprocess.crop)]
    batches = feed.batches
    parts = batches.parts if isinstance(batches, Chained) else [batches]
    out = []
    for part in parts:
        if isinstance(part, RandomBatches):
            out.append(tuple(part.shape[1:]))
        else:
            out += [tuple(b.shape[2:]) for b in part]
    return out


def _train_as_written(files: tuple[Path, Path], target: Any, ops: Any, batch: np.ndarray,
                      candidates: Sequence[tuple[int, int]], seed: int, allow_nonfinite: bool = False
                      ) -> tuple[float | None, tuple[int, int] | None, list[str]]:
    """The train graph's own float32 noise on `batch`: as written vs under Paddle's optimised
    kernels (BN folded, oneDNN), two computations of one function (verdict's docstring), None
    when paddle.inference cannot load the train graph (no optimised run to compare with); and,
    from the runtime that ran it as written, the first of `candidates` it runs at (`sizes`)."""
    written = train_runner(files, target, files[0], ops)
    try:
        a = written(batch)
        second, refused = accepted(written, candidates, batch.shape[1], seed) if candidates else (None, [])
    finally:
        written.close()
    try:
        optimised = paddle_predictor("train-optimised", files[0], files[1], target, ops=ops)
    except ConvertError:
        return None, second, refused
    try:
        b = optimised(batch)
    finally:
        optimised.close()
    return noise_floor(a, b, allow_nonfinite), second, refused
