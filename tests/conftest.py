"""Shared fixtures: real ACNet checkpoints made by Paddle's legacy static API (fixtures/), made
once per test session, and their fuse outputs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# glog reads these when paddle is imported; the suite has no use for its chatter
os.environ.setdefault("GLOG_minloglevel", "2")


def _pin_xdist_worker() -> None:
    """Under pytest-xdist (`make test` runs `-n auto`), each worker keeps to one CPU of its own,
    and so do the processes it starts: Paddle, oneDNN and ONNX Runtime size their thread pools
    by the CPUs they may use, and two workers each spinning two threads on two cores spent a
    sixth of the suite's CPU time in the kernel."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw") or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if count <= len(cpus):
        os.sched_setaffinity(0, {cpus[int(worker[2:]) % len(cpus)]})
    os.environ.setdefault("OMP_NUM_THREADS", "1")


_pin_xdist_worker()

from fixtures.make_checkpoint import make_checkpoint  # noqa: E402
# the rep_blocks exports, one per session: defined there, registered here (a fixture imported into
# a test module would be that module's own, exported again)
from tests.rep_fixtures import rep_models, rep_reference  # noqa: E402,F401

TEST_INPUT = 64  # small images keep the Paddle runs fast; ResNet needs >= 32
NUM_CLASSES = 10


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory):
    """make(depth, fmt, legacy_bias=False) -> checkpoint directory, cached for the session."""
    root = tmp_path_factory.mktemp("ckpt")
    made: dict[tuple, Path] = {}

    def make(depth: int, fmt: str = "vars", legacy_bias: bool = False) -> Path:
        key = (depth, fmt, legacy_bias)
        if key not in made:
            out = root / f"resnet{depth}_{fmt}{'_bias' if legacy_bias else ''}"
            made[key] = make_checkpoint(out, depth, NUM_CLASSES, fmt=fmt, legacy_bias=legacy_bias, input_size=TEST_INPUT)
        return made[key]

    return make


@pytest.fixture(scope="session")
def fused(checkpoints, tmp_path_factory: pytest.TempPathFactory):
    """fused(depth, fmt, legacy_bias=False, onnx=False) -> OUT directory of `fuse`, cached."""
    from acnet_convert.commands.fuse import fuse

    root = tmp_path_factory.mktemp("out")
    made: dict[tuple, Path] = {}

    def run(depth: int, fmt: str = "vars", legacy_bias: bool = False, onnx: bool = False) -> Path:
        key = (depth, fmt, legacy_bias, onnx)
        if key not in made:
            out = root / f"resnet{depth}_{fmt}{'_bias' if legacy_bias else ''}{'_onnx' if onnx else ''}"
            fuse(checkpoints(depth, fmt, legacy_bias), out, input_size=TEST_INPUT, onnx=onnx)
            made[key] = out
        return made[key]

    return run


@pytest.fixture(scope="session")
def images() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(4, 3, TEST_INPUT, TEST_INPUT)).astype(np.float32)


@pytest.fixture
def ort_providers_asked(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Records the providers every onnxruntime.InferenceSession is asked for (and still
    creates the real session), so a test can prove CUDA is never requested without a GPU."""
    import onnxruntime

    asked: list[list[str]] = []
    real_session = onnxruntime.InferenceSession

    def spy(path, sess_options=None, providers=None):
        asked.append(list(providers))
        return real_session(path, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    return asked
