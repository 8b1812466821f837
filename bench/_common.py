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


def package_digest(names: tuple[str, ...] | None = None) -> str:
    """A digest of the package's source (all of acnet_convert/**/*.py, or the named files, paths
    inside acnet_convert/): cached outputs stamped with it are rebuilt when the code that made
    them changes."""
    import hashlib

    digest = hashlib.sha256()
    package = ROOT / "acnet_convert"
    files = sorted(package.rglob("*.py")) if names is None else [package / n for n in names]
    for path in files:
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def fused_dir(source: Path, out: Path, newer_than: Path, *options: str) -> Path:
    """`acnet-convert fuse SOURCE OUT [OPTIONS]` (cached: redone when `newer_than` or the package
    changed; the stamp sits beside OUT, which must hold only what fuse wrote)."""
    stamp = out.with_name(out.name + ".stamp")
    key = package_digest()
    if (out / "manifest.json").is_file() and stamp.is_file() and stamp.read_text() == key \
            and stamp.stat().st_mtime >= newer_than.stat().st_mtime:
        return out
    note(f"fusing {source} into {out}")
    subprocess.run([CLI, "-q", "fuse", str(source), str(out), *options, "--force"], check=True)
    stamp.write_text(key)
    return out


def deploy_dir(ckpt: Path) -> Path:
    """`acnet-convert fuse CKPT` output for the latency benchmarks (cached)."""
    return fused_dir(ckpt, CACHE / (ckpt.name + "_deploy"), ckpt / ".complete")


def train_export_dir(ckpt: Path) -> Path:
    """The checkpoint's network as users export it: `models.resnet50_acnet`-style train form
    (ACB branches + BN, eval mode) with the checkpoint's weights via `models.train_model`,
    `paddle.jit.save`d with InputSpec [None, 3, 224, 224] named `image` (cached; made in a
    child process so the caller does not load Paddle)."""
    out = CACHE / (ckpt.name + "_train_export")
    stamp = out / ".bench-stamp"
    key = package_digest(("nn/models.py", "nn/blocks.py", "nn/plan.py", "read/checkpoint.py"))
    if (out / "inference.json").is_file() and stamp.is_file() and stamp.read_text() == key \
            and stamp.stat().st_mtime >= (ckpt / ".complete").stat().st_mtime:
        return out
    note(f"exporting the train form of {ckpt.name} with paddle.jit.save to {out}")
    subprocess.run([PYTHON, __file__, "--train-export", str(ckpt), str(out)], check=True)
    stamp.write_text(key)
    return out


def _train_export_child(ckpt: Path, out: Path) -> None:
    from acnet_convert.common.quiet import configure, import_paddle, silenced

    configure(False)
    paddle = import_paddle()
    from acnet_convert.read.checkpoint import read_checkpoint
    from acnet_convert.nn.models import train_model
    from acnet_convert.read.validate import detect_plan

    checkpoint = read_checkpoint(ckpt)
    plan = detect_plan(checkpoint.tensors, str(ckpt))
    model = train_model(plan, checkpoint.tensors)  # eval mode
    spec = paddle.static.InputSpec([None, 3, INPUT_SIZE, INPUT_SIZE], "float32", name="image")
    out.mkdir(parents=True, exist_ok=True)
    with silenced():
        paddle.jit.save(model, str(out / "inference"), input_spec=[spec])


# the package files a cached train graph depends on (a change to any of them rebuilds it)
_GRAPH_SOURCES = ("nn/plan.py", "read/plan_program.py", "read/program_reader.py", "nn/models.py", "nn/blocks.py",
                  "graph/ir.py")


def synthetic_tensors(plan, seed: int = 0) -> dict:
    """Float32 train-form tensors of a ResNet-ACNet `plan` with trained-looking statistics:
    He-normal kernels, positive gammas, running variances spread over several decades (small
    ones amplify rounding), non-zero means."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in plan.train_tensors().items():
        if len(shape) == 4:  # conv kernel, He-normal
            fan_in = shape[1] * shape[2] * shape[3]
            a = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        elif name.endswith("_scale"):
            a = np.abs(rng.normal(0.6, 0.3, shape)) + 1e-3
        elif name.endswith("_offset"):
            a = rng.normal(0.0, 0.2, shape)
        elif name.endswith("_mean"):
            a = rng.normal(0.0, 0.5, shape)
        elif name.endswith("_variance"):
            a = np.exp(rng.normal(-1.5, 1.5, shape))  # ~1e-3 .. 10
        elif name == "fc_0.w_0":
            a = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(1.0 / shape[0]))
        else:  # fc bias
            a = rng.normal(0.0, 0.01, shape)
        out[name] = np.ascontiguousarray(a, dtype=np.float32)
    return out


def resnet_graph(depth: int, classes: int = 1000):
    """The `Graph` that `fuse` reads for a ResNet-`depth` ACNet checkpoint (plan -> train program
    -> `read_graph`), weights from `synthetic_tensors(plan)`. Built once in a child process with
    Paddle and cached as a pickle, so the caller never loads Paddle."""
    import hashlib
    import inspect
    import pickle

    digest = hashlib.sha256(inspect.getsource(synthetic_tensors).encode())
    for name in _GRAPH_SOURCES:
        digest.update((ROOT / "acnet_convert" / name).read_bytes())
    path = CACHE / f"graph_resnet{depth}_{classes}_{digest.hexdigest()[:12]}.pkl"
    if not path.is_file():
        for old in CACHE.glob(f"graph_resnet{depth}_{classes}_*.pkl"):
            old.unlink()
        note(f"building the ResNet-{depth} train graph (plan -> Paddle program -> graph) into {path.name} (once)")
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([PYTHON, __file__, "--graph", str(depth), str(classes), str(path)], check=True)
    with open(path, "rb") as f:
        return pickle.load(f)


def _graph_child(depth: int, classes: int, path: Path) -> None:
    import pickle

    from acnet_convert.nn.plan import resnet
    from acnet_convert.read.plan_program import build_train_program
    from acnet_convert.read.program_reader import read_graph
    from acnet_convert.common.quiet import configure

    configure(False)
    plan = resnet(depth, classes)
    graph = read_graph(build_train_program(plan, synthetic_tensors(plan), INPUT_SIZE))
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(graph, f, protocol=5)
    tmp.replace(path)


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


if __name__ == "__main__":  # the children that build cached fixtures with Paddle
    if sys.argv[1] == "--graph":
        _graph_child(int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
    elif sys.argv[1] == "--train-export":
        _train_export_child(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        raise SystemExit(f"unknown child command {sys.argv[1:]}")
