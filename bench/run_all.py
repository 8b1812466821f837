#!/usr/bin/env python3
"""Run every benchmark (`make bench`) and print one markdown table of ratios measured in this run.

Each part runs in its own child process (fusion without Paddle loaded, latency without the other
parts' memory), and can be run alone:
  bench/fusion.py        1: numpy fusion pass vs a float32 per-block reference
  bench/fuse_e2e.py      2: `acnet-convert fuse` wall time, phase split and peak RSS
  bench/latency.py       3: paddle.inference latency, deploy vs train graph vs plain ResNet-50 / MobileNetV2
  bench/onnx_latency.py  4: ONNX Runtime vs paddle.inference on the deploy model
  bench/deploy_formats.py 5: extra time of --paddle-format both and export-onnx --fp16; fp16 vs fp32 ORT latency
  bench/verify.py        6: `acnet-convert verify` of ResNet-50 (64 images, 3 graphs): time, peak RSS, split, vs before
  bench/pattern_scaling.py p: find_regions and fold_graph time vs graph size (linear in the number of ops)
  bench/big_program.py   b: `fuse` of a 100,000-op program vs Paddle's own load of it (slow: ~10 min a round)
  bench/onnx_source.py   o: ONNX sources: fused vs upstream-deployed latency in ONNX Runtime; fuse of 100 MB vs load+save
Fixtures (a real ResNet-50 ACNet checkpoint, its fuse output, the train / plain inference models,
model.onnx) are made once and cached in build/bench/ (ACNET_BENCH_CACHE overrides).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PYTHON, Row, checkpoint_dir, machine_line, markdown, note

HERE = Path(__file__).resolve().parent
PARTS = {"1": "fusion.py", "2": "fuse_e2e.py", "3": "latency.py", "4": "onnx_latency.py", "5": "deploy_formats.py", "6": "verify.py",
         "p": "pattern_scaling.py", "o": "onnx_source.py", "b": "big_program.py"}


def main() -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions in every part (noisier)")
    p.add_argument("--parts", default="123456po", help="which parts to run, e.g. 13 (default: 123456po; b, a 100,000-op program, takes ~10 min a round)")
    args = p.parse_args()
    parts = [k for k in PARTS if k in args.parts]
    started = time.perf_counter()
    if any(k in parts for k in "2345"):
        checkpoint_dir(50, 1000)  # made once; the parts share it
    rows: list[Row] = []
    details: list[str] = []
    failed = []
    with tempfile.TemporaryDirectory(prefix="acnet-bench-") as tmp:
        for key in parts:
            script = HERE / PARTS[key]
            out = Path(tmp) / f"part{key}.json"
            cmd = [PYTHON, str(script), "--json", str(out)] + (["--quick"] if args.quick else [])
            note(f"== part {key}: {script.name}")
            t = time.perf_counter()
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
            note(f"   part {key} took {time.perf_counter() - t:.0f} s")
            text = proc.stdout
            if proc.returncode != 0 or not out.is_file():
                failed.append(f"part {key} ({script.name}) exited {proc.returncode}")
                details.append(text)
                continue
            rows += [Row(**r) for r in json.loads(out.read_text())]
            details.append("\n".join(line for line in text.splitlines() if not line.startswith("|")))
    total = time.perf_counter() - started

    print("### Details (per-run numbers)\n")
    print("```\n" + "\n".join(d for d in details if d.strip()) + "\n```\n")
    print(f"### acnet-convert benchmarks{' (--quick)' if args.quick else ''}\n")
    print(markdown(rows))
    print(f"\nMachine: {machine_line()}. Each comparison was measured interleaved in one run; "
          f"ratios are medians of back-to-back pairs. Total bench time {total / 60:.1f} min.")
    missed = [r for r in rows if r.met is False]
    if missed:
        print(f"\nTargets missed: {len(missed)} of {sum(r.met is not None for r in rows)}.")
    for f in failed:
        print(f"\nFAILED: {f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
