#!/usr/bin/env python3
"""Part 4: ONNX Runtime (CPUExecutionProvider) vs paddle.inference on the same deploy model.

model.onnx is written once from the fuse output with `acnet-convert export-onnx OUT` (the ONNX
writer translates the deploy program, whichever command runs it: `fuse --onnx` calls the same).
Several ORT session-option sets, all with intra_op_num_threads=2 (paddle.inference gets 2 math
threads too), are timed interleaved with paddle.inference at batch 1 and 8.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from _common import (
    CLI,
    THREADS,
    Row,
    checkpoint_dir,
    deploy_dir,
    interleaved,
    median,
    ms,
    note,
    paired_ratio,
    ratio_spread,
    run_part,
)
from latency import CONFIG_TEXT, PaddlePredictor, batch_input, rounds_for


def onnx_model(out_dir: Path) -> Path:
    path = out_dir / "model.onnx"
    if path.is_file() and path.stat().st_mtime >= (out_dir / "deploy.pdparams").stat().st_mtime:
        return path
    note(f"[onnx] exporting {path}")
    subprocess.run([CLI, "-q", "export-onnx", str(out_dir), "--force"], check=True)
    return path


def session_variants():
    """name -> (description, SessionOptions factory)."""
    import onnxruntime as ort

    def make(level, spinning: bool = True, sequential: bool = True):
        def factory():
            so = ort.SessionOptions()
            so.intra_op_num_threads = THREADS
            so.inter_op_num_threads = 1
            so.graph_optimization_level = level
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL if sequential else ort.ExecutionMode.ORT_PARALLEL
            so.log_severity_level = 3
            if not spinning:
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            return so
        return factory

    g = ort.GraphOptimizationLevel
    return {
        "ort ALL": ("intra 2, ORT_ENABLE_ALL", make(g.ORT_ENABLE_ALL)),
        "ort ALL no-spin": ("intra 2, ORT_ENABLE_ALL, allow_spinning=0", make(g.ORT_ENABLE_ALL, spinning=False)),
        "ort EXTENDED": ("intra 2, ORT_ENABLE_EXTENDED", make(g.ORT_ENABLE_EXTENDED)),
        "ort BASIC": ("intra 2, ORT_ENABLE_BASIC", make(g.ORT_ENABLE_BASIC)),
    }


class OrtSession:
    def __init__(self, path: Path, options) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]


def run(quick: bool) -> tuple[list[Row], str]:
    import onnxruntime as ort

    out_dir = deploy_dir(checkpoint_dir(50, 1000))
    path = onnx_model(out_dir)
    variants = session_variants()
    rows, details = [], []
    part = "4 ONNX Runtime"
    for batch in (1, 8):
        x = batch_input(batch)
        runners = {"paddle": PaddlePredictor(out_dir)}
        runners.update({name: OrtSession(path, factory()) for name, (_, factory) in variants.items()})
        outputs = {}
        for name, runner in runners.items():
            for _ in range(2):
                outputs[name] = runner(x)
        scale = max(1e-12, float(np.max(np.abs(outputs["paddle"]))))
        worst = max(float(np.max(np.abs(outputs[n] - outputs["paddle"]))) / scale for n in variants)
        rounds, best_of = rounds_for(batch, quick)
        note(f"[onnx] batch {batch}: {rounds} interleaved rounds (best of {best_of}) of {', '.join(runners)}")
        times = interleaved({name: (lambda r=r, x=x: r(x)) for name, r in runners.items()}, rounds, best_of)
        ratio = {n: paired_ratio(times, n, "paddle") for n in variants}
        best = min(variants, key=lambda n: ratio[n])
        rows.append(Row(part, f"batch {batch}: ORT ({variants[best][0]}, best of {len(variants)} option sets) vs paddle.inference, deploy model ({rounds} rounds, best of {best_of})",
                        f"{ms(median(times[best]))} vs {ms(median(times['paddle']))}", f"{ratio[best]:.2f}x ({ratio_spread(times, best, 'paddle')})", "info", None))
        others = ", ".join(f"{n.removeprefix('ort ')} {ratio[n]:.2f}x" for n in variants if n != best)
        rows.append(Row(part, f"batch {batch}: the other ORT option sets vs paddle.inference", others, "", "info", None))
        details.append(
            f"onnx batch {batch}: " + "; ".join(f"{n} median {median(v) * 1000:.0f} ms" for n, v in times.items())
            + f"\n  ORT vs paddle.inference logits: max abs diff / max |logit| = {worst:.1e}"
        )
        del runners
    details.append(f"ORT {ort.__version__}, providers {ort.get_available_providers()} (CPUExecutionProvider used); "
                   f"paddle.inference config: {CONFIG_TEXT}")
    return rows, "\n".join(details)


def main() -> None:
    run_part(run, __doc__)


if __name__ == "__main__":
    main()
