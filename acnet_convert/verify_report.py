"""What `verify` measured, and the verdict: the report's dataclasses, the metrics, the table and
the JSON.

The verdict (the same rule for a pair of graphs and for one fused group):

    a pair passes when every |a_ij - b_ij| <= atol + rtol * s_i,
    s_i = max_j |a_ij|, sample i's largest |value| in the reference a

(for classifiers the image's largest |logit|; for dense outputs, or a fused group's output, the
sample's largest |value|). Why the scale of the sample and not of each element: float32 rounds
every multiply-add to ~6e-8 of its own size, so two correct implementations of one network (a
sum of three BN'd branches and one fused conv; Paddle and ONNX Runtime; one GEMM blocking and
another) drift apart by ~1e-7 of the *activations* an output was computed from, whatever that
output's own size. A logit of 4 in an image whose largest logit is 1000 carries rounding of a
few 1e-4: numpy.allclose (`|d| <= atol + rtol * |a_ij|`) calls that a mismatch, although the
upstream deploy program shows the same difference against ONNX Runtime. Scaled by s_i, the
tolerance follows the error model: a correct conversion uses ~1e-3..1e-1 of it (untrained
networks with logits of 1e5 as much as ones of 1e1), and a fusion error (a bias off by 1e-3 of
itself, one kernel tap moved, BN epsilon 1e-3 for 1e-5, a pre-BN bias dropped) exceeds it many
times over (tests/test_verify_verdict.py measures both sides). The element-wise numbers stay in
the report: `max_abs_error`, and `elementwise_pass`, numpy.allclose's verdict, for reference.

The noise floor. Some correct conversions still fail that rule: a deep network whose logits are
small beside its activations (a ResNet-101 with re-estimated BN statistics and logits ~5 differs
from its own float64 twin by 7e-5 of its largest logit). So verify measures the network's float32
noise on the first batch: the train graph as written against the same train graph under
Paddle's optimised kernels (two float32 computations of one function, no fusion between them),
n = max_i max_j |t_ij - t'_ij| / s_i, and judges every pair with
rtol' = max(rtol, min(rtol + NOISE_FACTOR * n, NOISE_CAP)). A well-conditioned network's n is
~1e-7, so rtol is unchanged and fusion errors of 1e-3 of a bias still fail; an ill-conditioned
one gets the tolerance its own arithmetic needs, never more than NOISE_CAP (a Paddle pass
that is itself wrong cannot hide a fusion error beyond that). `noise_floor` in the JSON.

An ONNX model computed in float16 is held to FP16_ATOL / FP16_RTOL instead (or the user's
tolerances, if larger): float16 keeps 11 significant bits (eps 9.8e-4), and ~50 layers of
rounding accumulate to a few 1e-3 of the activations. Such a pair also reports top-1 agreement;
under the scale rule, top-1 can only differ for images whose two best logits are within twice
the tolerance.

`tolerance_ratio` is the verdict as a number: the worst |a_ij - b_ij| / (atol + rtol * s_i),
so a pair passes exactly when it is <= 1; 1 / ratio is the margin of a passing pair.

JSON report (`VerifyReport.to_json()`)::

    {
      "ok": bool,                  # every pair passes, deploy weights consistent, no group diverges
      "device": "cpu" | "gpu",     # where Paddle ran
      "onnx_providers": [str],     # ONNX Runtime's providers, in order ([] without ONNX)
      "notes": [str],              # device choice, what was skipped, warnings, verdict remarks
      "arch": str | null, "num_classes": int | null,   # ResNet-ACNet checkpoints; else null
      "input_size": int,           # H = W of the images fed
      "images": int,               # images compared
      "inputs": "random" | "npy" | "images",
      "atol": float, "rtol": float,
      "noise_floor": float | null, # the train graph's float32 noise on the first batch, relative to
                                   # each image's scale; pairs are judged with the rtol it widens to
      "source": {
        "path": str,               # the train-form model: checkpoint or the user's own program
        "kind": "checkpoint" | "program",
        "sha256": str,             # its sha256 now
        "checked": bool            # true: equals the sha256 recorded by fuse in manifest.json
      },
      "graphs": [{"name": str, "path": str}],   # train, paddle-deploy (.json),
                                                # paddle-legacy (.pdmodel), onnx
      "pairs": [                   # every pair of graphs, a is the reference
        {"a": "train", "b": "paddle-deploy",
         "max_abs_error": float,   # max |a_ij - b_ij|, element-wise
         "max_rel_error": float,   # max |a_ij - b_ij| / max(s_i, 1e-12)
         "tolerance_ratio": float, # max |a_ij - b_ij| / (atol + rtol * s_i): pass iff <= 1
         "cosine": float,          # smallest per-sample cosine similarity
         "top1_agreement": float | null,   # fraction of images whose arg-max agrees
                                           # (null for dense outputs)
         "top1_differs": int, "top1_differs_names": [str],  # images (up to 10 named)
         "atol": float, "rtol": float,     # the tolerances this pair was held to
         "fp16": bool,             # b is a float16 ONNX model
         "elementwise_pass": bool, # numpy.allclose's rule, for reference only
         "pass": bool}             # the verdict: every |a_ij - b_ij| <= atol + rtol * s_i
      ],
      "per_layer": null | {        # --per-layer: every fused group (manifest order) on the first batch
        "first_divergent_layer": str | null,
        "images": int,
        "layers": [{"name": str, "output": str, "max_abs_error": float, "scale": float,
                    "tolerance_ratio": float, "pass": bool, "why": str | null}]
      },                           # a group: same rule, s_i = sample i's max |train output|
      "deploy_weights_consistent": bool,   # inference.pdiparams == deploy.pdparams, bitwise
      "mismatched_tensors": [str],         # tensors that differ, or are in only one of them
      "image_set": null | {        # --images DIR
        "root": str, "found": int, "read": int,
        "skipped": int, "skipped_files": [{"name": str, "error": str}],   # corrupt, unreadable
        "labelled": int,           # images with a known class
        "accuracy": {graph: {"top1": float, "top5": float}} | null,       # when labelled
        "preprocess": {"resize_short": int, "crop": int, "mean": [float], "std": [float],
                       "scale": float, "interpolation": str, "from": str}
      }
    }

Errors that are not finite (NaN/Inf outputs) are written as null and fail the pair. Pure numpy:
nothing here imports Paddle.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from acnet_convert.text import printable

REL_FLOOR = 1e-12  # denominator floor of the relative error: all-zero outputs do not divide by 0
FP16_ATOL = 1e-2
FP16_RTOL = 1e-2
NOISE_FACTOR = 4
NOISE_CAP = 1e-3
NAMED = 10  # images named per list (top-1 differences, skipped files)


def _finite(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _sci(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.2e}" if np.isfinite(x) else str(x)


def per_sample(outputs: Sequence[np.ndarray]) -> np.ndarray:
    """[N, ...] outputs (one or several) as one float64 [N, M] matrix, a row per sample."""
    return np.concatenate([np.asarray(o, np.float64).reshape(len(o), -1) for o in outputs], axis=1)


def noise_floor(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """max over samples of max_j |a_ij - b_ij| / s_i (s_i from `a`): how far two float32
    computations of one function drift apart, relative to each sample's scale."""
    x, y = per_sample(a), per_sample(b)
    with np.errstate(invalid="ignore"):
        worst = np.abs(x - y).max(axis=1) / np.maximum(np.abs(x).max(axis=1), REL_FLOOR)
    return float(worst.max()) if np.isfinite(worst).all() else float("inf")


def widened_rtol(rtol: float, noise: float) -> float:
    """The rtol pairs are judged with, given the network's noise floor (module docstring)."""
    if not np.isfinite(noise):
        return max(rtol, NOISE_CAP)
    return max(rtol, min(rtol + NOISE_FACTOR * noise, NOISE_CAP))


def tolerance_ratio(diff_max: np.ndarray, scale: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    """Per sample: max_j |d_ij| / (atol + rtol * s_i). NaN (not finite) becomes inf. A zero
    tolerance with a zero difference is 0; with any difference, inf."""
    bound = atol + rtol * scale
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(bound > 0, diff_max / np.where(bound > 0, bound, 1.0), np.where(diff_max == 0, 0.0, np.inf))
    return np.where(np.isnan(ratio), np.inf, ratio)


@dataclass(frozen=True)
class PairResult:
    a: str
    b: str
    max_abs_error: float
    max_rel_error: float
    tolerance_ratio: float
    cosine: float
    top1_agreement: float | None
    top1_differs: int
    top1_differs_names: tuple[str, ...]
    atol: float
    rtol: float
    fp16: bool
    elementwise_pass: bool
    passed: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "max_abs_error": _finite(self.max_abs_error),
            "max_rel_error": _finite(self.max_rel_error),
            "tolerance_ratio": _finite(self.tolerance_ratio),
            "cosine": _finite(self.cosine),
            "top1_agreement": self.top1_agreement,
            "top1_differs": self.top1_differs,
            "top1_differs_names": list(self.top1_differs_names),
            "atol": self.atol,
            "rtol": self.rtol,
            "fp16": self.fp16,
            "elementwise_pass": self.elementwise_pass,
            "pass": self.passed,
        }


class PairStats:
    """The comparison of graph `b` with the reference `a`, accumulated batch by batch: memory
    does not grow with the number of images."""

    def __init__(self, a: str, b: str, atol: float, rtol: float, fp16: bool = False) -> None:
        if fp16:
            atol, rtol = max(atol, FP16_ATOL), max(rtol, FP16_RTOL)
        self.a, self.b, self.atol, self.rtol, self.fp16 = a, b, atol, rtol, fp16
        self.samples = 0
        self.max_abs = 0.0
        self.max_rel = 0.0
        self.ratio = 0.0
        self.cosine = 1.0
        self.elementwise = True
        self.classifier = True
        self.agree = 0
        self.differs = 0
        self.differ_names: list[str] = []

    def update(self, a: Sequence[np.ndarray], b: Sequence[np.ndarray], names: Sequence[str] | None = None) -> None:
        """One batch: the outputs of both graphs, each a list of [N, ...] arrays."""
        x, y = per_sample(a), per_sample(b)
        n = len(x)
        diff = np.abs(x - y)
        with np.errstate(invalid="ignore"):
            worst = diff.max(axis=1)  # NaN propagates
            scale = np.abs(x).max(axis=1)
            nan = np.isnan(diff).any(axis=1)
            worst = np.where(nan, np.inf, worst)
            ratio = tolerance_ratio(worst, scale, self.atol, self.rtol)
            dots = np.sum(x * y, axis=1)
            norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
            same = worst == 0
            cosines = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(same, 1.0, 0.0))
            self.elementwise &= bool(np.all(diff <= self.atol + self.rtol * np.abs(x)))  # NaN: False
        self.max_abs = max(self.max_abs, float(worst.max()))
        self.max_rel = max(self.max_rel, float((worst / np.maximum(scale, REL_FLOOR)).max()))
        self.ratio = max(self.ratio, float(ratio.max()))
        self.cosine = min(self.cosine, float(np.nan_to_num(cosines, nan=-1.0).min()))
        self.classifier &= len(a) == 1 and np.asarray(a[0]).ndim == 2
        if self.classifier:
            differ = np.flatnonzero(x.argmax(axis=1) != y.argmax(axis=1))
            self.agree += n - len(differ)
            self.differs += len(differ)
            for i in differ:
                if len(self.differ_names) < NAMED:
                    self.differ_names.append(names[i] if names is not None else f"#{self.samples + i}")
        self.samples += n

    def result(self) -> PairResult:
        top1 = self.agree / self.samples if self.classifier and self.samples else None
        return PairResult(
            a=self.a, b=self.b, max_abs_error=self.max_abs, max_rel_error=self.max_rel,
            tolerance_ratio=self.ratio, cosine=self.cosine, top1_agreement=top1,
            top1_differs=self.differs if self.classifier else 0, top1_differs_names=tuple(self.differ_names),
            atol=self.atol, rtol=self.rtol, fp16=self.fp16, elementwise_pass=self.elementwise,
            passed=bool(self.ratio <= 1.0),
        )


def compare(a: np.ndarray, b: np.ndarray, names: tuple[str, str], atol: float, rtol: float,
            fp16: bool = False) -> PairResult:
    """Compare outputs `b` with the reference `a` (each [N, ...]) in one go."""
    stats = PairStats(names[0], names[1], atol, rtol, fp16)
    stats.update([a], [b])
    return stats.result()


@dataclass(frozen=True)
class LayerResult:
    """One fused group: the deploy conv on the train graph's input vs the train group's output."""

    name: str
    output: str  # the train graph's tensor
    max_abs_error: float
    scale: float  # max over samples of s_i
    tolerance_ratio: float
    passed: bool
    why: str | None = None  # when it fails for another reason than the numbers

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "output": self.output, "max_abs_error": _finite(self.max_abs_error),
                "scale": _finite(self.scale), "tolerance_ratio": _finite(self.tolerance_ratio),
                "pass": self.passed, "why": self.why}


@dataclass(frozen=True)
class SourceInfo:
    path: str
    kind: str
    sha256: str
    checked: bool


@dataclass(frozen=True)
class Preprocessing:
    """How --images were turned into tensors (see deploy_config.Preprocess), for the report."""

    resize_short: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float
    interpolation: str
    origin: str  # where it came from: "OUT/inference.yml", "defaults", "+ flags"


@dataclass
class ImageSetResult:
    root: str
    found: int
    read: int
    skipped: list[tuple[str, str]]  # (name, why), all of them: only NAMED are shown in the table
    labelled: int
    correct: dict[str, tuple[int, int]]  # graph -> (top-1 hits, top-5 hits) over labelled images
    preprocess: Preprocessing

    def accuracy(self) -> dict[str, dict[str, float]] | None:
        if not self.labelled:
            return None
        return {g: {"top1": c1 / self.labelled, "top5": c5 / self.labelled} for g, (c1, c5) in self.correct.items()}

    def to_json(self) -> dict[str, Any]:
        p = self.preprocess
        return {
            "root": self.root, "found": self.found, "read": self.read, "skipped": len(self.skipped),
            "skipped_files": [{"name": n, "error": e} for n, e in self.skipped],
            "labelled": self.labelled, "accuracy": self.accuracy(),
            "preprocess": {"resize_short": p.resize_short, "crop": p.crop, "mean": list(p.mean), "std": list(p.std),
                           "scale": p.scale, "interpolation": p.interpolation, "from": p.origin},
        }


@dataclass
class VerifyReport:
    device: str
    arch: str | None
    num_classes: int | None
    input_size: int
    images: int
    inputs: str
    atol: float
    rtol: float
    source: SourceInfo
    graphs: list[tuple[str, str]]  # (name, path)
    pairs: list[PairResult]
    mismatched_tensors: list[str]
    layers: list[LayerResult] | None = None
    per_layer_images: int = 0
    image_set: ImageSetResult | None = None
    onnx_providers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase (not in the JSON)
    noise_floor: float | None = None  # the train graph's float32 noise, relative (None: not measured)

    @property
    def deploy_weights_consistent(self) -> bool:
        return not self.mismatched_tensors

    @property
    def first_divergent_layer(self) -> str | None:
        return next((layer.name for layer in self.layers or [] if not layer.passed), None)

    @property
    def pairs_pass(self) -> bool:
        return all(pair.passed for pair in self.pairs)

    @property
    def ok(self) -> bool:
        return self.pairs_pass and self.deploy_weights_consistent and self.first_divergent_layer is None

    def verdict_remark(self) -> str | None:
        """Why the per-layer verdict and the pairs' verdict differ, when they do."""
        if self.layers is None or not self.layers:
            return None
        first = self.first_divergent_layer
        train_pairs = [p for p in self.pairs if p.a == "train"]
        outputs_pass = all(p.passed for p in train_pairs)
        if first is None and not outputs_pass:
            return ("every fused group agrees on its own, yet the outputs differ: the difference comes from ops "
                    "outside the fused groups (the deploy program's other ops), or from images beyond the first "
                    f"{self.per_layer_images} that per-layer checked")
        if first is not None and outputs_pass:
            return (f"group {printable(first)} diverges, but its effect on the outputs stays within tolerance on "
                    "these inputs (masked downstream, e.g. by ReLU or pooling): still a wrong conversion")
        return None

    def rounding_remark(self) -> str | None:
        """When two deploy runtimes of the same fused weights (no fusion between them) already
        differ beyond the tolerance, float32 rounding of this network is what the tolerance
        misses: say so, with an rtol that would judge the fusion instead."""
        runtime = [p for p in self.pairs if p.a != "train" and p.b != "train" and not p.fp16 and not p.passed]
        if not runtime or not all(np.isfinite(p.max_rel_error) for p in runtime):
            return None
        worst = max(runtime, key=lambda p: p.max_rel_error)
        # rounding only when both runtimes are as far from the train graph too (README): a runtime
        # that agrees with the train graph leaves the other one wrong (a foreign or broken ONNX),
        # and a wider rtol would pass it
        from_train = {p.b: p for p in self.pairs if p.a == "train"}
        if any(name not in from_train or from_train[name].passed
               or not from_train[name].max_rel_error >= worst.max_rel_error / 10 for name in (worst.a, worst.b)):
            return None
        suggested = float(f"{2 * worst.max_rel_error:.0e}")
        suggested = suggested if suggested >= 2 * worst.max_rel_error else suggested * 2
        return (f"{worst.a} and {worst.b} run the same fused weights and still differ by {_sci(worst.max_rel_error)} of "
                f"the images' largest |output|: float32 rounding of this network exceeds rtol {self.rtol:g} on these "
                f"inputs, whatever the fusion; judge the fusion with --rtol {suggested:.0e}")

    def to_json(self) -> dict[str, Any]:
        per_layer = None
        if self.layers is not None:
            per_layer = {
                "first_divergent_layer": self.first_divergent_layer,
                "images": self.per_layer_images,
                "layers": [layer.to_json() for layer in self.layers],
            }
        remarks = [r for r in (self.verdict_remark(), self.rounding_remark()) if r]
        return {
            "ok": self.ok,
            "device": self.device,
            "onnx_providers": list(self.onnx_providers),
            "notes": list(self.notes) + remarks,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "input_size": self.input_size,
            "images": self.images,
            "inputs": self.inputs,
            "atol": self.atol,
            "rtol": self.rtol,
            "noise_floor": _finite(self.noise_floor) if self.noise_floor is not None else None,
            "source": {"path": self.source.path, "kind": self.source.kind, "sha256": self.source.sha256,
                       "checked": self.source.checked},
            "graphs": [{"name": name, "path": path} for name, path in self.graphs],
            "pairs": [pair.to_json() for pair in self.pairs],
            "per_layer": per_layer,
            "deploy_weights_consistent": self.deploy_weights_consistent,
            "mismatched_tensors": list(self.mismatched_tensors),
            "image_set": None if self.image_set is None else self.image_set.to_json(),
        }

    def format_table(self) -> str:
        what = self.arch or "model"
        classes = f", {self.num_classes} classes" if self.num_classes else ""
        size = f"{self.input_size}x{self.input_size}"
        kind = "" if self.inputs == "images" else f"{self.inputs} "  # "8 random images", not "9 images images"
        lines = [
            f"{printable(what)}{classes}: {self.images} {kind}images of {size} on the {self.device.upper()}"
            f" (atol {self.atol:g}, rtol {self.rtol:g}, scaled by each image's largest |output|)",
            f"  {'pair':<30} {'max abs':>9} {'max rel':>9} {'of tol':>8} {'min cos':>9} {'top-1':>7}  result",
        ]
        for p in self.pairs:
            top1 = "n/a" if p.top1_agreement is None else f"{p.top1_agreement:.1%}"
            fp16 = f"  (fp16: atol {p.atol:g}, rtol {p.rtol:g})" if p.fp16 else ""
            lines.append(
                f"  {p.a + ' ~ ' + p.b:<30} {_sci(p.max_abs_error):>9} {_sci(p.max_rel_error):>9} "
                f"{_ratio(p.tolerance_ratio):>8} {p.cosine:>9.6f} {top1:>7}  {'pass' if p.passed else 'FAIL'}{fp16}"
            )
            if p.top1_differs:
                named = ", ".join(printable(n, 80) for n in p.top1_differs_names)
                more = f" and {p.top1_differs - len(p.top1_differs_names)} more" if p.top1_differs > len(p.top1_differs_names) else ""
                lines.append(f"    top-1 differs in {p.top1_differs} image(s): {named}{more}")
        if self.image_set is not None:
            lines += self._image_lines(self.image_set)
        if self.deploy_weights_consistent:
            lines.append("  deploy weights: inference.pdiparams and deploy.pdparams are identical")
        else:
            shown = ", ".join(printable(n) for n in self.mismatched_tensors[:5])
            more = f" and {len(self.mismatched_tensors) - 5} more" if len(self.mismatched_tensors) > 5 else ""
            lines.append(
                f"  deploy weights: inference.pdiparams and deploy.pdparams differ in "
                f"{len(self.mismatched_tensors)} tensor(s): {shown}{more}  FAIL"
            )
        if self.layers is not None:
            first = self.first_divergent_layer
            if first is None:
                worst = max((layer.tolerance_ratio for layer in self.layers), default=0.0)
                lines.append(f"  per layer: all {len(self.layers)} fused groups agree "
                             f"(worst {_ratio(worst)} of tolerance, {self.per_layer_images} images)")
            else:
                bad = [layer for layer in self.layers if not layer.passed]
                layer = bad[0]
                detail = layer.why or f"max abs {_sci(layer.max_abs_error)}, {_ratio(layer.tolerance_ratio)} of tolerance"
                lines.append(f"  per layer: first divergent group {printable(first)} ({detail}); "
                             f"{len(bad)} of {len(self.layers)} groups diverge  FAIL")
            remark = self.verdict_remark()
            if remark:
                lines.append(f"  note: {remark}")
        rounding = self.rounding_remark()
        if rounding:
            lines.append(f"  note: {rounding}")
        if not self.source.checked:
            lines.append(f"  source: {printable(self.source.path)} is not the one recorded in manifest.json")
        lines.append("MATCH" if self.ok else "MISMATCH")
        return "\n".join(lines)

    @staticmethod
    def _image_lines(s: ImageSetResult) -> list[str]:
        lines = [f"  images: {s.read} of {s.found} read from {printable(s.root)}"
                 + (f", {len(s.skipped)} skipped (unreadable)" if s.skipped else "")]
        for name, why in s.skipped[:NAMED]:
            lines.append(f"    skipped {printable(name, 120)}: {printable(why, 120)}")
        accuracy = s.accuracy()
        if accuracy:
            for graph, acc in accuracy.items():
                lines.append(f"  accuracy {graph:<16} top-1 {acc['top1']:.2%}  top-5 {acc['top5']:.2%}"
                             f"  ({s.labelled} labelled images)")
        return lines


def _ratio(x: float) -> str:
    """A tolerance ratio: 0.109, 9.66, 117, 8.02e+03, inf."""
    return f"{x:.3g}" if np.isfinite(x) else "inf"
