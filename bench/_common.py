"""Shared helpers of the benchmarks: paths, cached fixtures, interleaved timing, result rows.

Every benchmark compares things measured side by side in the same run, interleaved
(A B A B ...), and reports medians and ratios: on a shared machine absolute times drift, ratios
measured together much less.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CACHE = Path(os.environ.get("ACNET_BENCH_CACHE", ROOT / "build" / "bench"))
PYTHON = sys.executable
CLI = str(Path(PYTHON).with_name("acnet-convert"))
THREADS = 2
INPUT_SIZE = 224

# keep Paddle's and ORT's log noise out of the benchmark output (children inherit these)
QUIET_ENV = {"GLOG_minloglevel": "3", "GLOG_v": "0", "FLAGS_logtostderr": "0", "PYTHONWARNINGS": "ignore"}
os.environ.update({k: os.environ.get(k, v) for k, v in QUIET_ENV.items()})


@dataclass
class Row:
    """One line of the final table."""

    part: str  # "1 fusion", "2 fuse e2e", ...
    what: str
    measured: str
    ratio: str = ""
    target: str = ""
    met: bool | None = None  # None: informational

    @property
    def status(self) -> str:
        return {True: "met", False: "**missed**", None: ""}[self.met]


def median(values) -> float:
    return statistics.median(values)


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def interleaved(runs: Mapping[str, Callable[[], object]], rounds: int, best_of: int = 1) -> dict[str, list[float]]:
    """Cycle through the functions for `rounds` rounds, the order rotating and reversing from
    round to round (A B C, B C A, C A B, C B A, B A C, A C B, ...) so that none always runs
    right after the same neighbour; in each round every function runs
    `best_of` times back to back and the round's sample is the fastest of those (filters the
    spikes of a shared machine). Returns the per-round samples in seconds, per name."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    n = len(names)
    for r in range(rounds):
        base = names if (r // n) % 2 == 0 else names[::-1]
        for name in base[r % n :] + base[: r % n]:
            fn = runs[name]
            best = float("inf")
            for _ in range(best_of):
                start = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - start)
            times[name].append(best)
    return times


def paired_ratio(times: Mapping[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of a/b, each pair measured back to back in the same round."""
    return median([x / y for x, y in zip(times[a], times[b])])


def ratio_spread(times: Mapping[str, list[float]], a: str, b: str) -> str:
    """The interquartile range of the per-round a/b ratios: how far one run could wander."""
    ratios = [x / y for x, y in zip(times[a], times[b])]
    if len(ratios) < 4:
        return f"range {min(ratios):.2f}-{max(ratios):.2f}"
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return f"IQR {q1:.2f}-{q3:.2f}"


# ------------------------------------------------------------------------------------------
# cached fixtures


def checkpoint_dir(depth: int = 50, classes: int = 1000) -> Path:
    """A real legacy per-variable checkpoint made once with Paddle's static API (cached)."""
    path = CACHE / f"resnet{depth}_acnet_vars_{classes}"
    done = path / ".complete"  # not a checkpoint variable: the readers skip dot-files
    if done.is_file():
        return path
    from fixtures.make_checkpoint import make_checkpoint

    note(f"making a ResNet-{depth} ACNet checkpoint in {path} (once, ~1 min)")
    if path.exists():
        import shutil

        shutil.rmtree(path)
    make_checkpoint(path, depth, classes, fmt="vars", input_size=INPUT_SIZE)
    done.write_text("ok\n")
    return path


def deploy_dir(ckpt: Path) -> Path:
    """`acnet-convert fuse CKPT` output for the latency benchmarks (cached, fused once)."""
    out = CACHE / (ckpt.name + "_deploy")
    stamp = out / "manifest.json"
    if stamp.is_file() and stamp.stat().st_mtime >= (ckpt / ".complete").stat().st_mtime:
        return out
    note(f"fusing {ckpt} into {out}")
    subprocess.run([CLI, "-q", "fuse", str(ckpt), str(out), "--force"], check=True)
    return out


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file() and not f.name.startswith("."))


# ------------------------------------------------------------------------------------------
# reporting


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("paddlepaddle", "onnxruntime-gpu", "onnxruntime", "onnx", "numpy"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = f"load avg {os.getloadavg()[0]:.1f}"
    except OSError:
        load = ""
    v = versions()
    ort = v.get("onnxruntime-gpu") or v.get("onnxruntime", "?")
    return (
        f"{os.cpu_count()} cores ({cpu}, {len(os.sched_getaffinity(0))} usable, {load}), "
        f"Python {platform.python_version()}, Paddle {v.get('paddlepaddle', '?')} (CPU), "
        f"ONNX Runtime {ort} (CPUExecutionProvider), onnx {v.get('onnx', '?')}, numpy {v.get('numpy', '?')}"
    )


def markdown(rows: list[Row]) -> str:
    lines = ["| part | benchmark | measured (median) | ratio | target | status |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.part} | {r.what} | {r.measured} | {r.ratio} | {r.target} | {r.status} |")
    return "\n".join(lines)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="fewer repetitions (noisier)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON (used by run_all.py)")
    return p


def finish(rows: list[Row], args: argparse.Namespace, details: str = "") -> None:
    """Print a part's table (stdout) and, for run_all.py, its rows as JSON."""
    if details:
        print(details)
    print(markdown(rows))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))


def run_part(run, doc: str) -> None:
    """The command line of one part: parse --quick/--json, run it, print and save its rows."""
    args = parser(doc.splitlines()[0]).parse_args()
    rows, details = run(args.quick)
    finish(rows, args, details)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.0f} MiB"
