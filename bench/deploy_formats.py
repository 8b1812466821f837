#!/usr/bin/env python3
"""Part 5: what the deploy formats cost on ResNet-50 ACNet (the bench's real checkpoint).

Commands, run as users run them (the console script, child processes, interleaved round by
round, order rotating):
  fuse pir          `acnet-convert -q fuse CKPT OUT --force --paddle-format pir`   (the baseline)
  fuse both         the same with `--paddle-format both`: + the legacy inference.pdmodel
  fuse pir --onnx   the baseline with `--onnx`
  export fp32       `acnet-convert -q export-onnx OUT -o F --force`
  export fp16       the same with `--fp16` (range check, float16 weights and activations)
The extra time of an option is the median over rounds of the paired difference with its
baseline measured in the same round. Then ONNX Runtime (CPUExecutionProvider, 2 threads) runs
the float16 and the float32 model interleaved at batch 1 and 8: information only, CPUs without
float16 arithmetic may not gain.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from _common import CLI, THREADS, Row, checkpoint_dir, deploy_dir, interleaved, median, ms, note, paired_ratio, ratio_spread, run_part

PART = "5 deploy formats"
TARGET_BOTH_EXTRA_S = 2.0  # issue 14: --paddle-format both is the default if it costs under 2 s


def _command(cmd: list[str]):
    def run() -> None:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    return run


def _extra(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of (a - b), each pair measured in the same round."""
    return median([x - y for x, y in zip(times[a], times[b])])


def _ort(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def run(quick: bool) -> tuple[list[Row], str]:
    ckpt = checkpoint_dir(50, 1000)
    source_out = deploy_dir(ckpt)  # a fuse output to export from
    rows: list[Row] = []
    details: list[str] = []
    with tempfile.TemporaryDirectory(prefix="acnet-bench-formats-") as tmp:
        t = Path(tmp)
        fuse = [CLI, "-q", "fuse", str(ckpt)]
        commands = {
            "fuse pir": fuse + [str(t / "pir"), "--force", "--paddle-format", "pir"],
            "fuse both": fuse + [str(t / "both"), "--force", "--paddle-format", "both"],
            "fuse pir --onnx": fuse + [str(t / "onnx"), "--force", "--paddle-format", "pir", "--onnx"],
            "export fp32": [CLI, "-q", "export-onnx", str(source_out), "-o", str(t / "fp32.onnx"), "--force"],
            "export fp16": [CLI, "-q", "export-onnx", str(source_out), "-o", str(t / "fp16.onnx"), "--force", "--fp16"],
        }
        for cmd in commands.values():  # warm the page cache, and fail early
            _command(cmd)()
        rounds = 3 if quick else 7
        note(f"[formats] {rounds} interleaved rounds of: {', '.join(commands)}")
        times = interleaved({name: _command(cmd) for name, cmd in commands.items()}, rounds)
        both = _extra(times, "fuse both", "fuse pir")
        rows.append(Row(PART, f"fuse --paddle-format both vs pir, ResNet-50 ({rounds} rounds): extra time of the legacy .pdmodel",
                        f"+{both:.2f} s ({ms(median(times['fuse both']))} vs {ms(median(times['fuse pir']))})",
                        f"{paired_ratio(times, 'fuse both', 'fuse pir'):.2f}x ({ratio_spread(times, 'fuse both', 'fuse pir')})",
                        f"< {TARGET_BOTH_EXTRA_S:.0f} s (default both)", both < TARGET_BOTH_EXTRA_S))
        onnx = _extra(times, "fuse pir --onnx", "fuse pir")
        rows.append(Row(PART, "fuse --onnx vs without: extra time of model.onnx", f"+{onnx:.2f} s",
                        f"{paired_ratio(times, 'fuse pir --onnx', 'fuse pir'):.2f}x", "info", None))
        fp16 = _extra(times, "export fp16", "export fp32")
        rows.append(Row(PART, "export-onnx --fp16 vs float32 export: extra time of the range check and the casts",
                        f"+{fp16:.2f} s ({ms(median(times['export fp16']))} vs {ms(median(times['export fp32']))})",
                        f"{paired_ratio(times, 'export fp16', 'export fp32'):.2f}x", "info", None))
        details.append("formats: " + "; ".join(f"{n} median {median(v):.2f} s" for n, v in times.items()))
        details.append(f"  sizes: model.onnx float32 {(t / 'fp32.onnx').stat().st_size / 2**20:.0f} MiB, "
                       f"float16 {(t / 'fp16.onnx').stat().st_size / 2**20:.0f} MiB; inference.pdmodel "
                       f"{(t / 'both' / 'inference.pdmodel').stat().st_size / 2**10:.0f} KiB")

        fp32_run, fp16_run = _ort(t / "fp32.onnx"), _ort(t / "fp16.onnx")
        for batch in (1, 8):
            x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224)).astype(np.float32)
            a, b = fp16_run(x), fp32_run(x)
            scale = max(1.0, float(np.abs(b).max()))
            agree = float(np.mean(a.argmax(1) == b.argmax(1)))
            n, best_of = (5, 2) if quick else ((15, 3) if batch == 1 else (7, 2))
            start = time.perf_counter()
            lat = interleaved({"fp16": lambda: fp16_run(x), "fp32": lambda: fp32_run(x)}, n, best_of)
            note(f"[formats] ORT fp16 vs fp32, batch {batch}: {time.perf_counter() - start:.0f} s")
            rows.append(Row(PART, f"ONNX Runtime CPU latency, float16 vs float32 model, batch {batch} ({n} rounds)",
                            f"{ms(median(lat['fp16']))} vs {ms(median(lat['fp32']))}",
                            f"{paired_ratio(lat, 'fp16', 'fp32'):.2f}x ({ratio_spread(lat, 'fp16', 'fp32')})", "info", None))
            details.append(f"  ORT batch {batch}: float16 vs float32 logits max |diff| / scale {np.abs(a - b).max() / scale:.1e}, "
                           f"top-1 agreement {agree:.0%}")
    return rows, "\n".join(details)


def main() -> None:
    run_part(run, __doc__)


if __name__ == "__main__":
    main()
