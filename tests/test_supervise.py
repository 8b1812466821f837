"""Native code on untrusted files runs supervised (issue 20): whatever the work does (crash,
hang, hoard memory, die without a word), the command ends with one line and the contract's exit
code; whenever SIGINT, SIGTERM or SIGHUP arrives, it ends within a second with 130/143; either
way nothing is left: no OUT, no staging folder, no temporary file.

The misbehaving work is tests/fault_worker.py (ACNET_CONVERT_WORKER), which acts at a named
phase of the real work: the same moment a crash of Paddle there would come."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.cnn_fixtures import cnn_models  # noqa: F401 - a fixture
from tests.conftest import TEST_INPUT

ROOT = Path(__file__).resolve().parents[1]
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 143}
LAST_LINE = {130: "interrupted", 143: "terminated"}


def environment(tmp: Path, fault: str | None = None) -> dict[str, str]:
    """The CLI's environment: its own TMPDIR (to see what it leaves there), and a fault."""
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if fault:
        env.update(ACNET_CONVERT_WORKER="tests.fault_worker", ACNET_TEST_FAULT=fault)
    return env


def start(*args: object, env: dict[str, str]) -> subprocess.Popen:
    # a session of its own, as a shell's job: a signal to its group is what a terminal sends
    return subprocess.Popen([sys.executable, "-m", "acnet_convert", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def leftovers(*folders: Path) -> list[str]:
    """What a run left in `folders`: staging folders, temporary files and folders, anything."""
    return sorted(str(p) for folder in folders for p in folder.iterdir())


def one_line(err: str, code: int, returncode: int, *needles: str) -> str:
    assert returncode == code, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len([line for line in lines if line.startswith(("error", "internal"))]) == 1, err
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


# --- the work dies: one line naming what it was doing, exit 3, nothing left ----------------------------


def test_a_worker_killed_by_sigsegv_is_exit_3_with_a_clean_out(checkpoints, tmp_path: Path) -> None:
    """What Paddle's save did on a program holding an unknown op (old: exit 139, `.out.partial-*` left)."""
    work = tmp_path / "work"
    work.mkdir()
    ckpt = checkpoints(18, "vars")
    code, _, err = finish(start("fuse", ckpt, work / "out", "--input-size", TEST_INPUT,
                                env=environment(tmp_path / "tmp", "segv@saving")))
    one_line(err, 3, code, f"error: Paddle crashed (SIGSEGV) while saving the deploy model of {ckpt}")
    assert leftovers(work, tmp_path / "tmp") == []


@pytest.mark.parametrize("fault, options, code, needle", [
    ("abort@describing", (), 3, "acnet-convert crashed (SIGABRT) while describing"),
    ("exit@describing", (), 3, "acnet-convert exited with status 7 while describing"),
    ("hang@describing", ("--time-limit", "3"), 3, "acnet-convert went 3 s without progress while describing"),
    ("memory@describing", ("--memory-limit", "300"), 3, "more than the 300 MiB these inputs may take, while describing"),
    ("garbage@describing", (), 4, "internal error: the worker sent what is not a message while describing"),
])
def test_every_way_the_work_dies_is_one_line(fused, tmp_path: Path, fault: str, options: tuple, code: int,
                                             needle: str) -> None:
    """inspect of an OUT: the cheapest work there is (no Paddle), dying every way it can."""
    out = fused(18, "vars")
    started = time.monotonic()
    returncode, stdout, err = finish(start(*options, "inspect", out, env=environment(tmp_path / "tmp", fault)))
    one_line(err, code, returncode, needle, str(out))
    assert stdout == "" and leftovers(tmp_path / "tmp") == []
    assert time.monotonic() - started < 60


def test_without_a_fault_the_same_work_succeeds(fused, tmp_path: Path) -> None:
    """The twin of the above: the fault worker itself does the real work when no fault is due."""
    code, out, err = finish(start("--time-limit", "60", "inspect", fused(18, "vars"),
                                  env=environment(tmp_path / "tmp", "segv@no such phase")))
    assert code == 0 and "resnet18" in out, err


# --- signals end the run within a second, 130/143, nothing left ------------------------------------------


def _sigcgt(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def handlers_installed(pid: int) -> bool:
    """The command process catches SIGINT, SIGTERM and SIGHUP (its first line of Python)."""
    mask = _sigcgt(pid)
    return all(mask >> (s - 1) & 1 for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP))


def signalled(proc: subprocess.Popen, signum: int, delay: float) -> tuple[int, str, float]:
    """Send `signum` to the command's process group `delay` seconds after its handlers are in
    place (a signal before its first line of Python gets the default action, as for any
    program); (exit code, stderr, seconds from the signal to the exit)."""
    deadline = time.monotonic() + 60
    while not handlers_installed(proc.pid):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    time.sleep(delay)
    sent = time.monotonic()
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err, time.monotonic() - sent


@pytest.fixture(scope="module")
def verify_out(fused) -> Path:
    return fused(18, "vars")


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(["fuse", "verify", "export-onnx"]),
       signum=st.sampled_from([signal.SIGINT, signal.SIGTERM, signal.SIGHUP]),
       delay=st.floats(0.0, 3.0))
def test_any_signal_at_any_moment_ends_the_run_within_a_second(checkpoints, verify_out, tmp_path_factory,
                                                                command: str, signum: int, delay: float) -> None:
    work = tmp_path_factory.mktemp("signal")
    tmp = work / "tmp"
    args = {"fuse": ("fuse", checkpoints(18, "vars"), work / "out", "--input-size", TEST_INPUT, "--onnx"),
            "verify": ("verify", verify_out, "--batches", "3", "--json", work / "report.json"),
            "export-onnx": ("export-onnx", verify_out, "-o", work / "model.onnx")}[command]
    before = sorted(p.name for p in verify_out.iterdir())
    proc = start(*args, env=environment(tmp))
    code, err, took = signalled(proc, signum, delay)
    assert sorted(p.name for p in verify_out.iterdir()) == before
    if code == 0:  # it finished first: its output is whole
        assert {"fuse": "out", "verify": "report.json", "export-onnx": "model.onnx"}[command] in os.listdir(work)
        return
    assert code == EXIT[signum], err
    assert err.strip().splitlines()[-1] == LAST_LINE[code] and "Traceback" not in err
    assert leftovers(work) == [str(tmp)] and leftovers(tmp) == []
    assert took < 1.0, f"{took:.2f} s from the signal to the exit"


@pytest.mark.parametrize("fault, args", [
    ("sigterm-parent@importing Paddle", ("fuse", "{ckpt}", "{out}", "--input-size", TEST_INPUT)),
    ("sighup-parent@importing Paddle", ("fuse", "{ckpt}", "{out}", "--input-size", TEST_INPUT)),
    ("sigint-parent@importing onnx", ("export-onnx", "{fused}", "-o", "{out}")),
    ("sigterm-parent@importing onnx", ("fuse", "{ckpt}", "{out}", "--input-size", TEST_INPUT, "--onnx")),
])
def test_a_signal_while_paddle_or_onnx_is_imported(checkpoints, fused, tmp_path: Path, fault: str, args: tuple) -> None:
    """Old: SIGTERM around Paddle's import killed the run by the default action, no line; while
    onnx was imported, 8/8 runs exited 139/134 (nanobind's terminate), staging left."""
    work = tmp_path / "work"
    work.mkdir()
    paths = {"ckpt": checkpoints(18, "vars"), "fused": fused(18, "vars"), "out": work / "out"}
    code, _, err = finish(start(*(a.format(**paths) if isinstance(a, str) else a for a in args),
                                env=environment(tmp_path / "tmp", fault)))
    expected = 130 if fault.startswith("sigint") else 143
    assert code == expected, err
    assert err.strip().splitlines()[-1] == LAST_LINE[expected] and "Traceback" not in err
    assert leftovers(work, tmp_path / "tmp") == []


def test_ctrl_c_reaches_the_command_process_only(checkpoints, tmp_path: Path) -> None:
    """The work runs in a session of its own: the terminal's SIGINT (to the foreground group)
    reaches the command process, which ends the work; the work never sees it half-way."""
    work = tmp_path / "work"
    work.mkdir()
    proc = start("fuse", checkpoints(18, "vars"), work / "out", "--input-size", TEST_INPUT,
                 env=environment(tmp_path / "tmp"))
    deadline = time.monotonic() + 120
    while not list(work.glob(".out.partial-*")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    while not (worker := [pid for pid in _children(proc.pid) if b"acnet_convert.worker" in _cmdline(pid)]):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    assert os.getpgid(worker[0]) != os.getpgid(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    code, _, err = finish(proc)
    assert code == 130 and err.strip().splitlines()[-1] == "interrupted", err
    assert leftovers(work, tmp_path / "tmp") == []
    assert not any(Path(f"/proc/{pid}").exists() for pid in worker)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


# --- ONNX Runtime that never returns: a Loop of 2**62 iterations -------------------------------------------


def loop_model(path: Path, side: int) -> Path:
    """A valid ONNX model taking [N, 3, side, side] whose Loop runs 2**62 times."""
    import onnx
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Neg", ["v_in"], ["v_out"])], "body",
        [value("i", TensorProto.INT64, []), value("cond_in", TensorProto.BOOL, []), value("v_in", TensorProto.FLOAT, None)],
        [value("cond_out", TensorProto.BOOL, []), value("v_out", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Constant", [], ["M"], value=helper.make_tensor("m", TensorProto.INT64, [], [2**62])),
             helper.make_node("Constant", [], ["T"], value=helper.make_tensor("t", TensorProto.BOOL, [], [True])),
             helper.make_node("Loop", ["M", "T", "image"], ["out"], body=body)]
    graph = helper.make_graph(nodes, "loop", [value("image", TensorProto.FLOAT, ["N", 3, side, side])],
                              [value("out", TensorProto.FLOAT, ["N", 3, side, side])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def small_out(cnn_models, tmp_path_factory) -> Path:  # noqa: F811
    from acnet_convert.commands.fuse import fuse

    out = tmp_path_factory.mktemp("small") / "out"
    fuse(cnn_models("repvgg"), out, paddle_format="pir")
    return out


def _until_onnx_runs(proc: subprocess.Popen, model: Path) -> float:
    """Read the -v lines until the work says ONNX Runtime runs `model`; that moment."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith(f"[ONNX Runtime] running {model}"):
            return time.monotonic()
    pytest.fail(f"the run ended before ONNX Runtime ran {model}: exit {proc.wait()}")


@pytest.mark.parametrize("ending", ["time limit", "SIGINT"])
def test_onnx_runtime_that_never_returns(small_out, tmp_path: Path, ending: str) -> None:
    """Old: verify --onnx never ended, SIGTERM and SIGINT were ignored while ONNX Runtime ran, and
    the temporary folder was left. Now the time limit ends it (exit 3, naming ONNX Runtime and the
    file), and a signal ends it within a second."""
    model = loop_model(tmp_path / "loop.onnx", 32)
    # 15 s: longer than any step before ONNX Runtime runs takes on 2 busy cores (importing Paddle: up to 9 s)
    proc = start("-v", "--time-limit", "15", "verify", small_out, "--onnx", model, "--batches", "1", "--batch-size", "1",
                 env=environment(tmp_path / "tmp"))
    running = _until_onnx_runs(proc, model)
    if ending == "SIGINT":
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        running = time.monotonic()
    rest = proc.stderr.read()
    code = proc.wait()
    took = time.monotonic() - running
    lines = rest.strip().splitlines()
    if ending == "SIGINT":
        assert code == 130 and lines[-1] == "interrupted" and took < 1.0, (code, lines[-3:], took)
    else:
        assert code == 3 and 14.5 < took < 30, (code, took)
        assert lines[-1] == (f"error: ONNX Runtime went 15 s without progress while running {model} "
                             "(--time-limit SECONDS raises the limit)")
    assert leftovers(tmp_path / "tmp") == []


def test_the_memory_limit_follows_the_inputs(tmp_path: Path) -> None:
    """A program's bytes weigh more than weights' (its ops become Python objects); a folder
    counts its files, a path prefix the files it names, an ONNX model its external data;
    --memory-limit replaces the estimate."""
    from acnet_convert.supervise.limits import (BASE_BYTES, PER_BATCH_PIXEL, PER_DATA_BYTE, PER_PROGRAM_BYTE,
                                                Limits)

    (tmp_path / "m.json").write_bytes(bytes(1000))
    (tmp_path / "m.pdiparams").write_bytes(bytes(5000))
    (tmp_path / "notes").mkdir()
    auto = Limits()
    assert auto.memory_for([tmp_path / "m"]) == BASE_BYTES + 1000 * PER_PROGRAM_BYTE + 5000 * PER_DATA_BYTE
    assert auto.memory_for([tmp_path, None], 10) == auto.memory_for([tmp_path / "m"]) + 10 * PER_BATCH_PIXEL
    assert auto.memory_for([tmp_path / "missing"]) == BASE_BYTES
    assert Limits(memory=123).memory_for([tmp_path], 10**9) == 123
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "net.onnx").write_bytes(bytes(100))
    (tmp_path / "o" / "net.onnx.data").write_bytes(bytes(7000))  # its external data, as torch names it
    (tmp_path / "o" / "other.onnx").write_bytes(bytes(9000))
    assert auto.memory_for([tmp_path / "o" / "net.onnx"]) == BASE_BYTES + 7100 * PER_DATA_BYTE


# --- an ONNX source: onnx reads it in the worker, under the same supervision ------------------------------


@pytest.fixture(scope="module")
def onnx_source(tmp_path_factory) -> Path:
    """A train-form ONNX model of one 3x3 + 1x1 branch sum (no torch needed: a few KB)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)
             for name, shape in (("w3", (4, 3, 3, 3)), ("b3", (4,)), ("w1", (4, 3, 1, 1)), ("b1", (4,)))]
    nodes = [helper.make_node("Conv", ["x", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "w1", "b1"], ["c1"]),
             helper.make_node("Add", ["c3", "c1"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    graph = helper.make_graph(nodes, "sum", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 32, 32])], inits)
    path = tmp_path_factory.mktemp("onnx_source") / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


@pytest.mark.parametrize("fault, code, last", [
    ("segv@loading", 3, "error: onnx crashed (SIGSEGV) while loading {source}"),
    ("memory@editing", 3, "more than the 300 MiB these inputs may take, while editing and checking the model {source}"),
    ("sigterm-parent@saving", 143, "terminated"),
])
def test_an_onnx_source_dies_or_is_interrupted_as_the_others(onnx_source, tmp_path: Path, fault: str, code: int,
                                                             last: str) -> None:
    """fuse MODEL.onnx runs onnx on the untrusted model in the worker: a crash there, memory past
    the limit or a signal mid-run ends as for a Paddle source, one line, nothing left."""
    work = tmp_path / "work"
    work.mkdir()
    returncode, stdout, err = finish(start("--memory-limit", "300", "fuse", onnx_source, work / "out",
                                           env=environment(tmp_path / "tmp", fault)))
    assert returncode == code and stdout == "", err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and last.format(source=onnx_source) in lines[-1], err
    assert len([line for line in lines if line.startswith("error")]) == (1 if code == 3 else 0), err
    assert leftovers(work, tmp_path / "tmp") == []


def test_an_onnx_source_without_a_fault_is_fused(onnx_source, tmp_path: Path) -> None:
    """The twin: the same run through the fault worker, no fault due: fused."""
    code, out, err = finish(start("fuse", onnx_source, tmp_path / "out", env=environment(tmp_path / "tmp", "segv@none")))
    assert code == 0 and "1 branch sums into 1 convs" in out, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json", "model.onnx"]
