#!/usr/bin/env python3
"""Part 2: `acnet-convert fuse` end to end on a real ResNet-50 ACNet checkpoint.

Four kinds of child process, interleaved round by round:
  cli          the console script `acnet-convert -q fuse CKPT OUT --force`, as users run it:
               process wall time and peak RSS (os.wait4 of that child);
  instrumented the same CLI code path (`acnet_convert.cli.main`) with timers wrapped around
               Paddle's import, the model build, paddle.jit.save, plus the timings `fuse()`
               returns, and VmRSS / VmHWM at each phase boundary; start-up and exit are the
               parts of the parent-side wall time outside the child's own clock;
  paddle       a child that only imports paddle: the RSS / time floor of anything using Paddle;
Earlier profiling here led to three changes now in the package: the checkpoint tensors are
released once fused, deploy.pdparams is pickled with protocol 5 (no transient bytes copy of
every array), and gc.freeze() before exit (the cyclic GC walked Paddle's objects for ~1 s).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    CACHE,
    CLI,
    PYTHON,
    Row,
    checkpoint_dir,
    dir_bytes,
    median,
    mib,
    note,
    run_part,
)

TARGET_WALL_S = 10.0
PHASES = ("startup", "imports", "read", "fusion", "paddle_import", "build_model", "jit_save", "write", "exit")


def spawn(cmd: list[str], env: dict | None = None) -> dict:
    """Run `cmd`; its wall time (s), peak RSS (bytes, from wait4), exit code, and the
    wall-clock instants of spawn and reap."""
    with tempfile.TemporaryFile() as err:
        spawned = time.time()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        reaped = time.time()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{tail}")
    return {"wall": wall, "rss": usage.ru_maxrss * 1024, "spawned": spawned, "reaped": reaped,
            "cpu": usage.ru_utime + usage.ru_stime}


# ------------------------------------------------------------------------------------------
# the instrumented child (runs the real CLI entry point with timers around its phases)


def _proc_status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def child(report: Path, cli_args: list[str]) -> None:
    t0_wall, t0 = time.time(), time.perf_counter()
    phases: dict[str, float] = {}
    memory: dict[str, dict[str, int]] = {}

    def timed(label, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[label] = phases.get(label, 0.0) + time.perf_counter() - start
                memory[label] = _proc_status()
        return wrapper

    from acnet_convert import cli, convert

    phases["imports"] = time.perf_counter() - t0
    original_import_paddle = convert.import_paddle

    def import_paddle():
        paddle = timed("paddle_import", original_import_paddle)()
        from acnet_convert import models  # before paddle_writer binds deploy_model

        models.deploy_model = timed("build_model", models.deploy_model)
        paddle.jit.save = timed("jit_save", paddle.jit.save)
        return paddle

    convert.import_paddle = import_paddle
    result = {}
    original_fuse = convert.fuse

    def fuse(*args, **kwargs):
        res = original_fuse(*args, **kwargs)
        result["timings"] = dict(res.timings)
        # fuse releases the arrays once fused: size them from the plan (float32 checkpoints)
        result["weights_bytes"] = 4 * sum(math.prod(shape) for shape in res.plan.train_tensors().values())
        result["ignored"] = len(res.checkpoint.ignored)
        return res

    convert.fuse = fuse
    sys.argv = ["acnet-convert", *cli_args]
    try:
        cli.main()
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
    t = result["timings"]
    phases["read"], phases["fusion"] = t["read"], t["fusion"]
    # fuse()'s "write" runs from the start of the output stage to the end (it includes jit_save)
    phases["write"] = t["write"] - t["jit_save"]
    phases["build_model"] = phases.get("build_model", 0.0)
    phases["jit_save"] = phases.get("jit_save", 0.0)
    end = time.perf_counter()
    report.write_text(json.dumps({
        "t0_wall": t0_wall, "end_wall": time.time(), "inside": end - t0, "phases": phases,
        "fuse_timings": t, "memory": memory, "final": _proc_status(), **{k: v for k, v in result.items() if k != "timings"},
    }))


# ------------------------------------------------------------------------------------------
# the parent


def run(quick: bool) -> tuple[list[Row], str]:
    ckpt = checkpoint_dir(50, 1000)
    out = CACHE / "fuse_e2e_out"
    rounds = 2 if quick else 3
    env = dict(os.environ)
    cli_runs, inst_runs, base_runs = [], [], []
    with tempfile.TemporaryDirectory(prefix="acnet-bench-") as tmp:
        report = Path(tmp) / "report.json"
        for i in range(rounds):
            note(f"[fuse e2e] round {i + 1}/{rounds}: cli, instrumented, paddle-import baseline")
            cli_runs.append(spawn([CLI, "-q", "fuse", str(ckpt), str(out), "--force"], env))
            r = spawn([PYTHON, __file__, "--child", str(report), "-q", "fuse", str(ckpt), str(out), "--force"], env)
            r.update(json.loads(report.read_text()))
            inst_runs.append(r)
            base_runs.append(spawn([PYTHON, "-c", "import paddle"], env))

    wall = median([r["wall"] for r in cli_runs])
    inst_wall = median([r["wall"] for r in inst_runs])
    base_wall = median([r["wall"] for r in base_runs])
    peak = median([r["rss"] for r in cli_runs])
    base_rss = median([r["rss"] for r in base_runs])
    weights = inst_runs[0]["weights_bytes"]  # the train-form weights fuse read (no optimizer state)
    on_disk = dir_bytes(ckpt)
    deploy = dir_bytes(out)

    def phase(name: str, r: dict) -> float:
        if name == "startup":
            return r["t0_wall"] - r["spawned"]
        if name == "exit":
            return r["reaped"] - r["end_wall"]
        return r["phases"][name]

    split = {p: median([phase(p, r) for r in inst_runs]) for p in PHASES}
    limit = 2 * weights + base_rss
    part = "2 fuse e2e"
    rows = [
        Row(part, f"`acnet-convert fuse` ResNet-50 wall time (median of {rounds} runs; paddle-import-only child {base_wall:.1f} s)",
            f"{wall:.1f} s", f"{wall / base_wall:.1f}x import-only", f"< {TARGET_WALL_S:.0f} s", wall < TARGET_WALL_S),
        Row(part, "split (instrumented run, median s): " + ", ".join(f"{p.replace('_', ' ')} {split[p]:.2f}" for p in PHASES),
            f"sum {sum(split.values()):.1f} s (wall {inst_wall:.1f} s)",
            f"Paddle import + build + jit.save = {(split['paddle_import'] + split['build_model'] + split['jit_save']) / inst_wall:.0%}", "info", None),
        Row(part, f"peak RSS vs weights ({mib(weights)} in the checkpoint, {mib(on_disk)} on disk with optimizer state) "
            f"and paddle-import-only baseline ({mib(base_rss)})",
            f"{mib(peak)}", f"{(peak - base_rss) / weights:.2f}x weights above baseline",
            f"< 2x weights + baseline = {mib(limit)}", peak < limit),
    ]
    mem = inst_runs[-1]["memory"]

    def walls(runs: list[dict]) -> str:
        return ", ".join(f"{r['wall']:.1f}" for r in runs) + " s"

    def rss(runs: list[dict]) -> str:
        return ", ".join(mib(r["rss"]) for r in runs)

    final = mib(inst_runs[-1]["final"]["VmHWM"])
    detail = (
        f"fuse e2e: cli walls {walls(cli_runs)}, peak RSS {rss(cli_runs)}; instrumented walls {walls(inst_runs)}; "
        f"paddle-import walls {walls(base_runs)}, RSS {rss(base_runs)}\n"
        f"  output {mib(deploy)} (inference.pdiparams + deploy.pdparams + json); VmHWM after each phase (instrumented): "
        + ", ".join(f"{k} {mib(v['VmHWM'])}" for k, v in mem.items())
        + f", end {final}"
    )
    return rows, detail


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), sys.argv[3:])
        return
    run_part(run, __doc__)


if __name__ == "__main__":
    main()
