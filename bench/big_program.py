#!/usr/bin/env python3
"""Part b: `acnet-convert fuse` of a 100,000-op train-form program vs Paddle's own load of it.

The program: a chain of BLOCKS ACB blocks on a [-1, 2, 8, 8] input, each block
relu(BN(conv3x3(x)) + BN(conv3x1(x)) + BN(conv1x3(x))): 9 computing ops a block (3 conv2d,
3 batch_norm, 2 add, 1 relu) and 6 parameters, so 11,112 blocks are 100,008 computing ops
(166,680 ops counting the parameter ops). Building it with Paddle's static API is quadratic in
the number of ops (800 blocks: 2 min), so it is written directly in Paddle's PIR JSON format
(the layout of `paddle.static.save_inference_model`, checked against Paddle's own output for
2 blocks by `--check`), with the parameters in `.pdiparams` (sorted by name, as Paddle saves
them); cached in the bench cache.

Child processes, interleaved round by round (order rotating), wall time and peak RSS (wait4):
  fuse    `acnet-convert -q fuse PROGRAM OUT --force` (PIR and legacy deploy models), run through
          fuse_e2e.py's instrumented child (the CLI's entry point with timers around its phases:
          nothing at this scale) for the split;
  paddle  `paddle.static.load_inference_model(PREFIX, exe)` of the same program, and nothing else.
Ratios are medians over rounds of fuse / paddle measured in the same round.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from _common import CACHE, PYTHON, Row, interleaved, median, mib, note, ratio_spread, run_part

BLOCKS = 11112
OPS_PER_BLOCK = 9
TARGET = 2.0  # fuse <= 2x Paddle's own load, in wall time and in peak memory
_F32 = {"#": "0.t_f32"}
_FALSE = {"AT": {"#": "0.a_array", "D": [{"#": "0.a_bool", "D": False}]}, "N": "stop_gradient"}
_BRANCHES = (("sq", (3, 3), (1, 1)), ("ver", (3, 1), (1, 0)), ("hor", (1, 3), (0, 1)))


def _tensor(shape: list[int]) -> dict:
    return {"#": "0.t_dtensor", "D": [_F32, shape, "NCHW", [], 0]}


def _ints(values: list[int]) -> dict:
    return {"#": "0.a_array", "D": [{"#": "0.a_i32", "D": v} for v in values]}


def _attr(name: str, value: dict) -> dict:
    return {"AT": value, "N": name}


def program_json(blocks: int, channels: int = 2, size: int = 8) -> tuple[dict, list[tuple[str, tuple[int, ...]]]]:
    """The PIR JSON of the chain, and its parameters (name, shape) in creation order."""
    ops: list[dict] = []
    params: list[tuple[str, tuple[int, ...]]] = []
    counter = [0]
    act = [-1, channels, size, size]

    def new() -> int:
        counter[0] += 1
        return counter[0]

    def parameter(name: str, shape: tuple[int, ...]) -> int:
        params.append((name, shape))
        vid = new()
        ops.append({"#": "p", "A": [0, 1, 1, name], "DA": [], "O": {"%": vid, "TT": _tensor(list(shape))},
                    "OA": [1, 0, 1], "QA": []})
        return vid

    def op(kind: str, attrs: list[dict], inputs: list[int], shapes: list[list[int]]) -> list[int]:
        outs = [new() for _ in shapes]
        ops.append({"#": f"1.{kind}", "A": attrs, "I": [{"%": i} for i in inputs],
                    "O": [{"%": o, "TT": _tensor(s)} for o, s in zip(outs, shapes)],
                    "OA": [_attr("stop_gradient", {"#": "0.a_array", "D": [{"#": "0.a_bool", "D": False}] * len(shapes)})]})
        return outs

    x = new()
    ops.append({"#": "1.data", "A": [_attr("name", {"#": "0.a_str", "D": "image"}),
                                     _attr("shape", {"#": "1.a_intarray", "D": act}),
                                     _attr("dtype", {"#": "1.a_dtype", "D": "float32"}),
                                     _attr("place", {"#": "1.a_place", "D": [0, 0, ""]})],
                "I": [], "O": [{"%": x, "TT": _tensor(act)}],
                "OA": [_attr("stop_gradient", {"#": "0.a_array", "D": [{"#": "0.a_bool", "D": True}]})]})
    y = x
    for b in range(blocks):
        terms = []
        for branch, kernel, padding in _BRANCHES:
            w = parameter(f"b{b}_{branch}_weights", (channels, channels, *kernel))
            mean = parameter(f"b{b}_{branch}_mean", (channels,))
            var = parameter(f"b{b}_{branch}_variance", (channels,))
            conv_attrs = [_attr("strides", _ints([1, 1])), _attr("paddings", _ints(list(padding))),
                          _attr("padding_algorithm", {"#": "0.a_str", "D": "EXPLICIT"}),
                          _attr("dilations", _ints([1, 1])), _attr("groups", {"#": "0.a_i32", "D": 1}),
                          _attr("data_format", {"#": "0.a_str", "D": "NCHW"})]
            (c,) = op("conv2d", conv_attrs, [y, w], [act])
            bn_attrs = [_attr("is_test", {"#": "0.a_bool", "D": True}),
                        _attr("momentum", {"#": "0.a_f32", "D": 0.8999999761581421}),
                        _attr("epsilon", {"#": "0.a_f32", "D": 9.999999747378752e-06}),
                        _attr("data_format", {"#": "0.a_str", "D": "NCHW"}),
                        _attr("use_global_stats", {"#": "0.a_bool", "D": True}),
                        _attr("trainable_statistics", {"#": "0.a_bool", "D": False})]
            outs = op("batch_norm_", bn_attrs, [c, mean, var, 0, 0],
                      [act, [channels], [channels], [channels], [channels], [-1]])
            ops[-1]["O"][-1]["TT"]["D"][0] = {"#": "0.t_ui8"}  # the reserve space
            terms.append(outs[0])
        (s,) = op("add", [], terms[:2], [act])
        (s,) = op("add", [], [s, terms[2]], [act])
        (y,) = op("relu", [], [s], [act])
    fetch = new()
    ops.append({"#": "1.fetch", "A": [_attr("name", {"#": "0.a_str", "D": "fetch_name_0"}),
                                      _attr("col", {"#": "0.a_i32", "D": 0})],
                "I": [{"%": y}], "O": [{"%": fetch, "TT": _tensor(act)}],
                "OA": [_attr("persistable", {"#": "0.a_array", "D": [{"#": "0.a_bool", "D": True}]}), _FALSE]})
    program = {"base_code": {"magic": "pir", "trainable": True, "version": 4},
               "program": {"regions": [{"#": "region_0", "blocks": [{"#": "block_0", "args": [], "ops": ops}]}]}}
    return program, params


def write_program(prefix: Path, blocks: int, seed: int = 0) -> None:
    """PREFIX.json + PREFIX.pdiparams of a `blocks`-block chain (weights random, BN statistics
    trained-looking, each block's gain near 1 so the chain stays finite)."""
    from acnet_convert.read.lod_tensor import lod_tensor_bytes

    program, params = program_json(blocks)
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape in params:
        if name.endswith("_weights"):
            a = rng.normal(0.0, 0.25, shape)
        elif name.endswith("_mean"):
            a = rng.normal(0.0, 0.1, shape)
        else:
            a = rng.uniform(0.5, 2.0, shape)
        arrays[name] = a.astype(np.float32)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp = prefix.with_name(prefix.name + ".tmp")
    Path(f"{tmp}.json").write_text(json.dumps(program, separators=(",", ":")))
    with open(f"{tmp}.pdiparams", "wb") as f:
        for name in sorted(arrays):  # Paddle saves and loads parameters in name order
            f.write(lod_tensor_bytes(arrays[name]))
    os.replace(f"{tmp}.pdiparams", f"{prefix}.pdiparams")
    os.replace(f"{tmp}.json", f"{prefix}.json")


def big_program(blocks: int = BLOCKS) -> Path:
    """The cached program's prefix (CACHE/big_program_BLOCKS/inference)."""
    prefix = CACHE / f"big_program_{blocks}" / "inference"
    if not Path(f"{prefix}.json").is_file():
        note(f"writing a {blocks}-block ({blocks * OPS_PER_BLOCK} computing ops) program to {prefix}.json")
        write_program(prefix, blocks)
    return prefix


_LOAD = ("import sys, paddle; paddle.enable_static(); "
         "paddle.static.load_inference_model(sys.argv[1], paddle.static.Executor(paddle.CPUPlace()))")


def check(blocks: int = 2) -> None:
    """The written program loads in Paddle and computes what a numpy evaluation of the chain does."""
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "inference"
        write_program(prefix, blocks)
        code = (
            "import sys, numpy as np, paddle; paddle.enable_static(); exe = paddle.static.Executor(paddle.CPUPlace());"
            "prog, feeds, fetches = paddle.static.load_inference_model(sys.argv[1], exe);"
            "x = np.random.default_rng(1).normal(size=(2, 2, 8, 8)).astype('float32');"
            "np.save(sys.argv[1] + '.x.npy', x); np.save(sys.argv[1] + '.y.npy', exe.run(prog, feed={feeds[0]: x}, fetch_list=fetches)[0])"
        )
        subprocess.run([PYTHON, "-c", code, str(prefix)], check=True, stderr=subprocess.DEVNULL)
        x, y = np.load(f"{prefix}.x.npy"), np.load(f"{prefix}.y.npy")
    rng = np.random.default_rng(0)
    _program, params = program_json(blocks)
    values = {}
    for name, shape in params:  # the same draws as write_program
        values[name] = (rng.normal(0.0, 0.25, shape) if name.endswith("_weights") else rng.normal(0.0, 0.1, shape)
                        if name.endswith("_mean") else rng.uniform(0.5, 2.0, shape)).astype(np.float32).astype(np.float64)
    from acnet_convert.fold.numeric import conv2d

    h = x.astype(np.float64)
    for b in range(blocks):
        total = 0.0
        for branch, kernel, padding in _BRANCHES:
            w = values[f"b{b}_{branch}_weights"]
            pads = (padding[0], padding[0], padding[1], padding[1])
            c = conv2d(h, w, np.zeros(w.shape[0]), (1, 1), (1, 1), pads, 1)
            m, v = values[f"b{b}_{branch}_mean"], values[f"b{b}_{branch}_variance"]
            total = total + (c - m[None, :, None, None]) / np.sqrt(v[None, :, None, None] + 1e-5)
        h = np.maximum(total, 0.0)
    err = float(np.max(np.abs(h - y)) / np.max(np.abs(h)))
    assert err < 1e-5, f"the written program computes something else: relative error {err:.2e}"
    print(f"a {blocks}-block program written as PIR JSON loads in Paddle and matches numpy (rel. error {err:.1e})")


def spawn(cmd: list[str]) -> dict:
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{err.read().decode(errors='replace')[-2000:]}")
    return {"wall": wall, "rss": usage.ru_maxrss * 1024, "cpu": usage.ru_utime + usage.ru_stime}


def _joined(runs: list[dict], key: str) -> str:
    return ", ".join(f"{r[key]:.1f}" for r in runs)


def run(quick: bool) -> tuple[list[Row], str]:
    prefix = big_program()
    rounds = 1 if quick else 2  # a round is minutes (the Paddle writer is quadratic in fused convs)
    out = CACHE / "big_program_out"
    results: dict[str, list[dict]] = {"fuse": [], "paddle": []}
    report = out.with_name("big_program_report.json")

    def fuse() -> None:  # the CLI's entry point with fuse_e2e's phase timers (no cost at this scale)
        r = spawn([PYTHON, str(Path(__file__).with_name("fuse_e2e.py")), "--child", str(report), "-q", "fuse",
                   f"{prefix}.json", str(out), "--force"])
        r.update(json.loads(report.read_text()))
        results["fuse"].append(r)

    runs = {"fuse": fuse, "paddle": lambda: results["paddle"].append(spawn([PYTHON, "-c", _LOAD, str(prefix)]))}
    note(f"[big program] {rounds} interleaved rounds of fuse and Paddle's load of {BLOCKS * OPS_PER_BLOCK} ops")
    interleaved(runs, rounds)
    times = {k: [r["wall"] for r in v] for k, v in results.items()}
    wall = {k: median(v) for k, v in times.items()}
    rss = {k: median([r["rss"] for r in v]) for k, v in results.items()}
    ratio = median([a / b for a, b in zip(times["fuse"], times["paddle"])])
    mem = median([a["rss"] / b["rss"] for a, b in zip(results["fuse"], results["paddle"])])
    part = "b big program"
    what = f"`fuse` of a {BLOCKS}-block ACB chain ({BLOCKS * OPS_PER_BLOCK} computing ops) vs Paddle's load of it ({rounds} interleaved rounds)"
    rows = [Row(part, what + ": wall", f"{wall['fuse']:.1f} s vs {wall['paddle']:.1f} s",
                f"{ratio:.2f}x ({ratio_spread(times, 'fuse', 'paddle')})", f"<= {TARGET:.0f}x", ratio <= TARGET),
            Row(part, what + ": peak RSS", f"{mib(rss['fuse'])} vs {mib(rss['paddle'])}", f"{mem:.2f}x",
                f"<= {TARGET:.0f}x", mem <= TARGET)]
    phases = {}
    for r in results["fuse"]:
        for name, seconds in r["phases"].items():
            phases.setdefault(name, []).append(seconds)
    split = sorted(((median(v), k) for k, v in phases.items()), reverse=True)
    rows.append(Row(part, "split of `fuse` (median s): " + ", ".join(f"{k} {v:.1f}" for v, k in split if v >= 0.5),
                    f"{wall['fuse']:.1f} s", f"Paddle's load = {wall['paddle'] / wall['fuse']:.0%} of it", "info", None))
    details = "big program: " + "; ".join(
        f"{k} walls {_joined(v, 'wall')} s, CPU {_joined(v, 'cpu')} s, RSS {', '.join(mib(r['rss']) for r in v)}"
        for k, v in results.items())
    return rows, details


def main() -> None:
    if sys.argv[1:2] == ["--check"]:
        check()
        return
    if sys.argv[1:2] == ["--write"]:
        write_program(Path(sys.argv[3]), int(sys.argv[2]))
        return
    run_part(run, __doc__)


if __name__ == "__main__":
    main()
