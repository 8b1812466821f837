"""What `verify` measured: the report's dataclasses, the table and the JSON. The verdict
itself, the rule and its numbers, is `verdict`.

JSON report (`VerifyReport.to_json()`)::

    {
      "ok": bool,                  # every pair passes, deploy weights consistent, no group diverges
      "verdict": "MATCH" | "MISMATCH" | "INCONCLUSIVE",   # the last line of the table
      "device": "cpu" | "gpu",     # where Paddle ran
      "onnx_providers": [str],     # ONNX Runtime's providers, in order ([] without ONNX)
      "notes": [str],              # device choice, what was skipped, warnings, verdict remarks
      "arch": str | null, "num_classes": int | null,   # ResNet-ACNet checkpoints; else null
      "sizes": [{"height": int, "width": int, "images": int}],   # the sizes fed: the fused size,
                                   # and a second (odd, not square) one for a model of any size
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
         "tolerance_ratio": float, # max |a_ij - b_ij| / (atol_i + rtol * s_i): pass iff <= 1
                                   # and conclusive; atol_i = min(atol, 1% of the spread r_i)
         "cosine": float,          # smallest per-sample cosine similarity
         "top1_agreement": float | null,   # fraction of images whose arg-max agrees
                                           # (null for dense outputs)
         "top1_differs": int, "top1_differs_names": [str],  # images (up to 10 named)
         "atol": float, "rtol": float,     # the tolerances this pair was held to
         "fp16": bool,             # b is a float16 ONNX model
         "elementwise_pass": bool, # numpy.allclose's rule, for reference only
         "informative": int,       # images on which every constant model fails
         "atol_capped": int,       # images whose spread capped atol (small outputs)
         "inconclusive": bool,     # within tolerance, but informative == 0: a constant
                                   # model would pass too (fails the pair)
         "pass": bool}             # the verdict: every |a_ij - b_ij| <= atol_i + rtol * s_i,
                                   # and not inconclusive
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
        "preprocess": {"resize_short": int | null, "resize": [int, int] | null, "crop": [int, int],
                       "mean": [float], "std": [float],
                       "scale": float, "interpolation": str, "from": str}
      }
    }

Errors that are not finite (NaN/Inf outputs) are written as null and fail the pair. Pure numpy:
nothing here imports Paddle.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from acnet_convert.common.text import printable
from acnet_convert.verify.verdict import NAMED, SPREAD_SHARE, PairResult, finite


WIDTH = 80  # columns of a terminal: the table's lines fit in it


def _sci(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.2e}" if np.isfinite(x) else str(x)


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
        return {"name": self.name, "output": self.output, "max_abs_error": finite(self.max_abs_error),
                "scale": finite(self.scale), "tolerance_ratio": finite(self.tolerance_ratio),
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

    resize_short: int | None
    crop: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float
    interpolation: str
    origin: str  # where it came from: "OUT/inference.yml", "defaults", "+ flags"
    resize: tuple[int, int] | None = None  # (H, W): the whole image resized to it (no short side)


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
            "preprocess": {"resize_short": p.resize_short, "resize": None if p.resize is None else list(p.resize),
                           "crop": list(p.crop), "mean": list(p.mean), "std": list(p.std),
                           "scale": p.scale, "interpolation": p.interpolation, "from": p.origin},
        }


@dataclass
class VerifyReport:
    device: str
    arch: str | None
    num_classes: int | None
    sizes: list[tuple[int, int, int]]  # (H, W, images fed at that size)
    images: int
    inputs: str
    atol: float
    rtol: float
    source: SourceInfo
    graphs: list[tuple[str, str]]  # (name, path)
    pairs: list[PairResult]
    mismatched_tensors: list[str] | None  # None: no Paddle deploy model was checked
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

    @property
    def inconclusive(self) -> bool:
        """Nothing failed, but some pair could not tell its reference from a constant."""
        return (any(p.inconclusive for p in self.pairs) and all(p.passed or p.inconclusive for p in self.pairs)
                and self.deploy_weights_consistent and self.first_divergent_layer is None)

    @property
    def verdict(self) -> str:
        """The report's last line: MATCH, MISMATCH or INCONCLUSIVE."""
        return "MATCH" if self.ok else "INCONCLUSIVE" if self.inconclusive else "MISMATCH"

    def atol_remark(self) -> str | None:
        """On how many images atol was capped by the spread of the outputs (verdict)."""
        capped = max((p.atol_capped for p in self.pairs if not p.fp16), default=0)
        if not capped:
            return None
        samples = max(p.samples for p in self.pairs)
        return (f"atol {self.atol:g} capped at {SPREAD_SHARE:.1%} of the outputs' spread on {capped} of {samples} "
                "images (their outputs are small)")

    def inconclusive_remark(self) -> str | None:
        """Why an inconclusive pair proves nothing."""
        pair = next((p for p in self.pairs if p.inconclusive), None)
        if pair is None:
            return None
        return (f"{pair.a} ~ {pair.b} is inconclusive: on every image the outputs of {pair.a} lie within the "
                "tolerance of a constant, so a model that outputs a constant would pass too; verify on inputs "
                "the model tells apart (--images, --inputs)")

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
        runtime = [p for p in self.pairs if p.a != "train" and p.b != "train" and not p.fp16 and not p.tolerance_ratio <= 1]
        if not runtime or not all(np.isfinite(p.max_rel_error) for p in runtime):
            return None
        worst = max(runtime, key=lambda p: p.max_rel_error)
        # rounding only when both runtimes are as far from the train graph too (README): a runtime
        # that agrees with the train graph leaves the other one wrong (a foreign or broken ONNX),
        # and a wider rtol would pass it
        from_train = {p.b: p for p in self.pairs if p.a == "train"}
        if any(name not in from_train or from_train[name].tolerance_ratio <= 1
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
        remarks = [r for r in (self.verdict_remark(), self.rounding_remark(), self.atol_remark(),
                                self.inconclusive_remark()) if r]
        return {
            "ok": self.ok,
            "verdict": self.verdict,
            "device": self.device,
            "onnx_providers": list(self.onnx_providers),
            "notes": list(self.notes) + remarks,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "sizes": [{"height": h, "width": w, "images": n} for h, w, n in self.sizes],
            "images": self.images,
            "inputs": self.inputs,
            "atol": self.atol,
            "rtol": self.rtol,
            "noise_floor": finite(self.noise_floor) if self.noise_floor is not None else None,
            "source": {"path": self.source.path, "kind": self.source.kind, "sha256": self.source.sha256,
                       "checked": self.source.checked},
            "graphs": [{"name": name, "path": path} for name, path in self.graphs],
            "pairs": [pair.to_json() for pair in self.pairs],
            "per_layer": per_layer,
            "deploy_weights_consistent": self.deploy_weights_consistent,
            "mismatched_tensors": list(self.mismatched_tensors or []),
            "image_set": None if self.image_set is None else self.image_set.to_json(),
        }

    def format_table(self) -> str:
        """The report for a terminal: no line wider than WIDTH columns (names and paths aside)."""
        what = self.arch or "model"
        classes = f", {self.num_classes} classes" if self.num_classes else ""
        kind = "" if self.inputs == "images" else f"{self.inputs} "  # "8 random images", not "9 images images"
        sizes = " and ".join(f"{n} of {h}x{w}" for h, w, n in self.sizes[1:])
        size = f"{self.sizes[0][0]}x{self.sizes[0][1]}" if self.sizes else "?"
        rtol = next((p.rtol for p in self.pairs if not p.fp16), self.rtol)
        first = self.sizes[0][2] if self.sizes else self.images
        lines = [
            f"{printable(what)}{classes}: {first} {kind}images of {size}{' and ' + sizes if sizes else ''} on the "
            f"{self.device.upper()}",
            f"pass when |a - b| <= {self.atol:g} + {rtol:.2g} x each image's largest |output|",
            f"  {'pair':<29} {'max abs':>8} {'max rel':>8} {'of tol':>7} {'min cos':>8} {'top-1':>6}  result",
        ]
        for p in self.pairs:
            top1 = "n/a" if p.top1_agreement is None else f"{p.top1_agreement:.1%}"
            result = "pass" if p.passed else "n/c" if p.inconclusive else "FAIL"
            lines.append(
                f"  {p.a + ' ~ ' + p.b:<29} {_sci(p.max_abs_error):>8} {_sci(p.max_rel_error):>8} "
                f"{_ratio(p.tolerance_ratio):>7} {_cos(p.cosine):>8} {top1:>6}  {result}"
            )
            if p.fp16:
                lines.append(f"    float16 model: held to atol {p.atol:g}, rtol {p.rtol:g}")
            if p.top1_differs:
                named = ", ".join(printable(n, 80) for n in p.top1_differs_names)
                more = f" and {p.top1_differs - len(p.top1_differs_names)} more" if p.top1_differs > len(p.top1_differs_names) else ""
                lines += _wrapped(f"top-1 differs in {p.top1_differs} image(s): {named}{more}", "    ")
        if self.image_set is not None:
            lines += self._image_lines(self.image_set)
        if self.mismatched_tensors is None:  # no Paddle deploy model to check (an ONNX source)
            pass
        elif self.deploy_weights_consistent:
            lines.append("  deploy weights: inference.pdiparams and deploy.pdparams are identical")
        else:
            shown = ", ".join(printable(n) for n in self.mismatched_tensors[:5])
            more = f" and {len(self.mismatched_tensors) - 5} more" if len(self.mismatched_tensors) > 5 else ""
            lines += _wrapped(f"deploy weights: inference.pdiparams and deploy.pdparams differ in "
                              f"{len(self.mismatched_tensors)} tensor(s): {shown}{more}  FAIL")
        if self.layers is not None:
            first = self.first_divergent_layer
            if first is None:
                worst = max((layer.tolerance_ratio for layer in self.layers), default=0.0)
                lines += _wrapped(f"per layer: all {len(self.layers)} fused groups agree "
                                  f"(worst {_ratio(worst)} of tolerance, {self.per_layer_images} images)")
            else:
                bad = [layer for layer in self.layers if not layer.passed]
                layer = bad[0]
                detail = layer.why or f"max abs {_sci(layer.max_abs_error)}, {_ratio(layer.tolerance_ratio)} of tolerance"
                lines += _wrapped(f"per layer: first divergent group {printable(first)} ({detail}); "
                                  f"{len(bad)} of {len(self.layers)} groups diverge  FAIL")
        for remark in (self.verdict_remark(), self.rounding_remark(), self.atol_remark(), self.inconclusive_remark()):
            if remark:
                lines += _wrapped(f"note: {remark}")
        if not self.source.checked:
            lines += _wrapped(f"source: {printable(self.source.path)} is not the one recorded in manifest.json")
        lines.append(self.verdict)
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
    """A tolerance ratio in at most 7 characters: 0, 1e-07, 0.0582, 9.66, 117, 8.0e+03, inf."""
    if not np.isfinite(x):
        return "inf"
    if x == 0:
        return "0"
    return f"{x:.0e}" if x < 1e-3 else f"{x:.1e}" if x >= 1e3 else f"{x:.3g}"


def _cos(x: float) -> str:
    """A cosine in 8 characters: 1.000000, 0.999871, -0.12345."""
    return f"{x:.6f}" if x >= 0 else f"{x:.5f}"


def _wrapped(text: str, indent: str = "  ") -> list[str]:
    """`text` in lines of at most WIDTH columns, the first indented by `indent`, the others by
    two more spaces (a word longer than a line, such as a path, is not broken)."""
    import textwrap

    return textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=indent + "  ",
                         break_long_words=False, break_on_hyphens=False) or [indent]
