"""`verify OUT` for an OUT fused from an ONNX source: the source model against the fused one, both
in ONNX Runtime, on the same inputs.

* ``train``: the source model named in OUT/manifest.json (its sha256 must still match) or
  `--source`, with ONNX Runtime's graph optimisations off: every branch and BatchNormalization
  computed as written;
* ``onnx``: OUT/model.onnx (or `--onnx PATH`) as users run it, optimisations on.

The pair is judged by the rule in `verdict`, with the noise floor measured on the first batch:
the source as written against the source under ONNX Runtime's own optimisations (which fold
each BatchNormalization into its Conv), two float32 computations of one function. Inputs and
`--per-layer` (`verify.onnx_per_layer`) as for a Paddle source; the report is the same.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from acnet_convert.commands.verify import ONNX, TRAIN, _after_first_batch, _check_options, _feed, _Log, image_shape
from acnet_convert.common.errors import ConvertError
from acnet_convert.common.regular_file import not_a_file
from acnet_convert.common.sizes import SizeLike
from acnet_convert.common.text import printable
from acnet_convert.out.artifacts import Artifacts, Manifest
from acnet_convert.read.onnx.model import OnnxModel, load_onnx
from acnet_convert.verify.device import Device, resolve_device
from acnet_convert.verify.feeds import ImageFeed, Track
from acnet_convert.verify.onnx_per_layer import compare_groups
from acnet_convert.verify.report import SourceInfo, VerifyReport
from acnet_convert.verify.runners import Runner, onnx_session, release_memory
from acnet_convert.verify.sizes import accepted, second_sizes, takes_any_size
from acnet_convert.verify.verdict import PairStats, noise_floor


def open_onnx_source(manifest: Manifest, artifacts: Artifacts, override: Path | None,
                     say: Callable[[str], None]) -> tuple[OnnxModel, SourceInfo]:
    """The source model named in the manifest (or `override`); its sha256 must match the
    manifest's unless `override` names it."""
    recorded = manifest.source
    path = Path(override) if override is not None else Path(recorded.path)
    if not path.is_file():
        where = "--source" if override is not None else f"the source model named in {printable(artifacts.manifest_path)}"
        hint = "" if override is not None else "; pass --source with its new location"
        raise ConvertError(f"{where} {printable(path)} does not exist{hint}")
    model = load_onnx(path, check=False)
    checked = model.sha256 == recorded.sha256
    if not checked:
        if override is None:
            raise ConvertError(
                f"model {printable(path)} changed since it was fused: its sha256 {model.sha256[:16]}... differs from "
                f"{recorded.sha256[:16]}... recorded in {printable(artifacts.manifest_path)} "
                f"(pass --source {printable(path)} to compare anyway)")
        say(f"--source {printable(path)} is not the model {printable(artifacts.root)} was fused from (sha256 "
            f"{model.sha256[:16]}... vs {recorded.sha256[:16]}... in manifest.json); comparing against it anyway")
    return model, SourceInfo(str(path), recorded.kind, model.sha256, checked)


def _source_as_written(path: Path, target: Device, batch: np.ndarray, candidates: Sequence[tuple[int, int]],
                       seed: int, allow_nonfinite: bool) -> tuple[float, tuple[int, int] | None, list[str]]:
    """The source's own float32 noise on `batch`: as written vs under ONNX Runtime's
    optimisations (which fold each BatchNormalization into its Conv); and the first of
    `candidates` it runs at (`verify.sizes`: a model of any size is verified at a second one)."""
    written = onnx_session(path, target, name=TRAIN, as_written=True)
    try:
        a = written(batch)
        second, refused = accepted(written, candidates, batch.shape[1], seed) if candidates else (None, [])
    finally:
        written.close()
    optimised = onnx_session(path, target, name="train-optimised")
    try:
        b = optimised(batch)
    finally:
        optimised.close()
    return noise_floor(a, b, allow_nonfinite), second, refused


def verify_onnx(
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
    """Compare the source ONNX model with the fused one in `out_dir` (see the module docstring).
    Random inputs for a model of any size are fed at a second size too unless `second_size`
    is False. Raises ConvertError for bad input; a mismatch is a report with `ok == False`."""
    _check_options(atol, rtol, batch_size, batches, inputs, images, labels, ckpt, source)
    artifacts = Artifacts(out_dir)
    manifest = artifacts.read_manifest()
    artifacts.check_complete(manifest)
    log = _Log(note)
    fused_path = Path(onnx) if onnx is not None else artifacts.onnx
    why = not_a_file(fused_path)
    if why:
        raise ConvertError(f"--onnx {printable(fused_path)} {why}")
    overrides = {"resize_short": resize_short, "crop": crop, "mean": mean, "std": std}
    feed = _feed(artifacts, manifest, image_shape(manifest), inputs, images, labels, overrides, batch_size, batches,
                 seed, log.say)  # the user's inputs first: their errors come before any note or heavy work
    target = resolve_device(device, onnx=True)
    for text in target.notes:
        log.say(text)
    if isinstance(feed, ImageFeed):
        shape = (3, *feed.preprocess.crop)
    else:
        shape = tuple(feed.first().shape[1:]) if feed.kind == "npy" else image_shape(manifest)
    with log.timed("source"):
        model, info = open_onnx_source(manifest, artifacts, source if source is not None else ckpt, log.say)
    first = feed.first()  # an image stream cannot be peeked again once it has run
    layers = None
    if per_layer:
        if first is None:
            raise ConvertError("--per-layer: no image could be read")
        # a conv that is part of a sum (the rest left as adds) writes no tensor of the source:
        # the outputs check it, with its sum
        rows = [row for row in manifest.fused if not row.get("partial")]
        if len(rows) < len(manifest.fused):
            log.say(f"--per-layer: {len(manifest.fused) - len(rows)} fused conv(s) are part of a sum left as adds; "
                    "the outputs check them")
        with log.timed("per layer"):
            fused = load_onnx(fused_path, check=False)
            layers = compare_groups(model.proto, fused.proto, rows, first, target, atol, rtol, model.opset)
            del fused
    del model
    release_memory()
    source_path = Path(info.path)
    noise, judged = None, rtol
    candidates = second_sizes(shape[1:]) if second_size and takes_any_size(manifest) and feed.kind == "random" else []
    if first is not None:
        with log.timed("noise floor"):
            noise, second, refused = _source_as_written(source_path, target, first, candidates, seed, allow_nonfinite)
        judged, feed = _after_first_batch(log, "source model", rtol, noise, feed, shape, candidates, second, refused,
                                          batch_size, seed)
    factories: list[Callable[[], Runner]] = [
        lambda: onnx_session(source_path, target, name=TRAIN, as_written=True),
        lambda: onnx_session(fused_path, target),
    ]

    def stats_of(fp16: dict[str, bool]) -> list[PairStats]:
        return [PairStats(TRAIN, ONNX, atol, judged, fp16=fp16.get(TRAIN, False) or fp16.get(ONNX, False),
                          allow_nonfinite=allow_nonfinite)]

    result = feed.run(factories, stats_of, track, log.say, release_memory)
    log.timings.update(result.timings)
    return VerifyReport(
        device=target.name, arch=None, num_classes=None, sizes=[(h, w, n) for (h, w), n in result.sizes.items()],
        images=result.images, inputs=feed.kind, atol=atol, rtol=rtol, source=info,
        graphs=[(name, str(path)) for name, path in result.paths.items()],
        pairs=[s.result() for s in result.stats], mismatched_tensors=None, layers=layers,
        per_layer_images=0 if layers is None else len(first), image_set=result.image_set,
        onnx_providers=result.providers, notes=log.notes, timings=log.timings, noise_floor=noise,
    )
